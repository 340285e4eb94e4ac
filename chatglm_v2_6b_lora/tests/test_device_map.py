"""balanced_device_map with the glm layout: the converted ChatGLM2/3-6B shapes, and dispatching a tiny model."""
import pytest
import torch
from transformers import AutoModelForCausalLM, GlmConfig

from device_map import LAYOUTS, balanced_device_map, device_loads, estimate_costs


def chatglm2_6b_config(layers=28):
    """What convert_chatglm writes for THUDM/chatglm2-6b (no weights needed)."""
    return GlmConfig(vocab_size=65024, hidden_size=4096, intermediate_size=13696, num_hidden_layers=layers,
                     num_attention_heads=32, num_key_value_heads=2, head_dim=128, partial_rotary_factor=0.5,
                     attention_bias=True, pad_token_id=0, eos_token_id=2)


def test_estimate_matches_the_real_parameter_count():
    """estimate_costs (embedding, one layer, norm + head) equals the parameters of the 6B model built on meta."""
    config = chatglm2_6b_config(layers=2)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embed, layer, tail = estimate_costs(config, bytes_per_param=1)
    n_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert abs(layer - n_layer) / n_layer < 1e-4  # the estimate skips the q/k/v biases, counts 4h for the norms
    assert embed == model.model.embed_tokens.weight.numel()
    assert tail == model.lm_head.weight.numel() + 2 * 4096


@pytest.mark.parametrize("gpus", [2, 3, 4, 8])
def test_balanced_6b(gpus):
    config = chatglm2_6b_config()
    dm = balanced_device_map(config, gpus)
    layout = LAYOUTS["glm"]
    layer_gpus = [dm[f"model.layers.{i}"] for i in range(28)]
    assert len([k for k in dm if k.startswith("model.layers.")]) == 28
    assert layer_gpus == sorted(layer_gpus)  # contiguous, in order
    assert all(dm[n] == 0 for n in layout.embed) and all(dm[n] == gpus - 1 for n in layout.tail)
    embed, layer, tail = estimate_costs(config)
    loads = device_loads(config, dm, gpus)
    assert sum(loads) == embed + tail + 28 * layer
    assert max(loads) <= max(sum(loads) / gpus, embed, tail) + layer  # within one layer of the best
    naive = [0] * gpus  # and never worse than splitting the layers evenly by count
    naive[0] += embed
    naive[-1] += tail
    for i in range(28):
        naive[i * gpus // 28] += layer
    assert max(loads) <= max(naive)


def test_max_memory_proportional_and_too_small():
    config = chatglm2_6b_config()
    loads = device_loads(config, balanced_device_map(config, 2, max_memory={0: "6GiB", 1: "12GiB"}), 2)
    assert loads[1] > 1.5 * loads[0] and max(loads) <= 12 * 2**30
    with pytest.raises(ValueError, match="max_memory"):
        balanced_device_map(config, 2, max_memory={0: "2GiB", 1: "2GiB"})


def test_dispatch_tiny_glm_same_logits(tmp_path):
    """The map covers every module of GlmForCausalLM: loading with it (CPU / disk 'devices') gives the same logits."""
    torch.manual_seed(0)
    config = GlmConfig(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, partial_rotary_factor=0.5, attention_bias=True,
                       pad_token_id=0, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path)
    dm = balanced_device_map(config, 3)
    assert sorted(set(dm.values())) == [0, 1, 2]
    on = {0: "cpu", 1: "disk", 2: "cpu"}  # no GPUs here: card 1 streamed from disk by accelerate's hooks
    dispatched = AutoModelForCausalLM.from_pretrained(tmp_path, device_map={k: on[v] for k, v in dm.items()},
                                                      offload_folder=tmp_path / "offload").eval()
    assert dispatched.hf_device_map == {k: on[v] for k, v in dm.items()}
    middle = [k for k, v in dm.items() if v == 1]
    assert middle and all({p.device.type for p in dispatched.get_submodule(k).parameters()} == {"meta"}
                          for k in middle)
    ids = torch.randint(0, 500, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(dispatched(input_ids=ids).logits, model(input_ids=ids).logits)
