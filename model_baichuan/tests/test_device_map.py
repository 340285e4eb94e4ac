"""balanced_device_map with the llama layout (converted Baichuan-7B / Baichuan2-7B) and the baichuan layout (this
folder's ALiBi model, Baichuan-13B / Baichuan2-13B): the real shapes on the meta device, and dispatching tiny models."""
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from device_map import LAYOUTS, balanced_device_map, device_loads, estimate_costs
from model import BaichuanConfig


def baichuan2_7b_config(layers=32):
    """What load_baichuan converts Baichuan2-7B to (LlamaForCausalLM; no weights needed)."""
    return LlamaConfig(vocab_size=125696, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                       num_attention_heads=32, hidden_act="silu", pad_token_id=0, eos_token_id=2)


def baichuan2_13b_config(layers=40):
    """Baichuan2-13B's shapes (ALiBi, this folder's BaichuanForCausalLM)."""
    return BaichuanConfig(vocab_size=125696, hidden_size=5120, intermediate_size=13696, num_hidden_layers=layers,
                          num_attention_heads=40, hidden_act="silu", pad_token_id=0, eos_token_id=2)


CONFIGS = {"llama": baichuan2_7b_config, "baichuan": baichuan2_13b_config}


@pytest.mark.parametrize("kind", ["llama", "baichuan"])
def test_estimate_matches_the_real_parameter_count(kind):
    """estimate_costs (embedding, one layer, norm + head) equals the parameters of the real model built on meta."""
    config = CONFIGS[kind](layers=2)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert config.model_type == kind
    embed, layer, tail = estimate_costs(config, bytes_per_param=1)
    n_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert abs(layer - n_layer) / n_layer < 1e-3  # the estimate counts 4h for the two norms (2h real)
    assert embed == model.model.embed_tokens.weight.numel()
    assert tail == model.lm_head.weight.numel() + 2 * config.hidden_size
    names = {n for n, _ in model.named_modules()}
    layout = LAYOUTS[kind]
    assert set(layout.embed) | set(layout.tail) | {f"{layout.layers}.0"} <= names


@pytest.mark.parametrize("kind", ["llama", "baichuan"])
@pytest.mark.parametrize("gpus", [2, 3, 4, 8])
def test_balanced_real_sizes(kind, gpus):
    config = CONFIGS[kind]()
    n = config.num_hidden_layers
    dm = balanced_device_map(config, gpus)
    layout = LAYOUTS[kind]
    layer_gpus = [dm[f"model.layers.{i}"] for i in range(n)]
    assert len([k for k in dm if k.startswith("model.layers.")]) == n
    assert layer_gpus == sorted(layer_gpus)  # contiguous, in order
    assert all(dm[name] == 0 for name in layout.embed) and all(dm[name] == gpus - 1 for name in layout.tail)
    embed, layer, tail = estimate_costs(config)
    loads = device_loads(config, dm, gpus)
    assert sum(loads) == embed + tail + n * layer
    assert max(loads) <= max(sum(loads) / gpus, embed, tail) + layer  # within one layer of the best
    naive = [0] * gpus  # and never worse than splitting the layers evenly by count
    naive[0] += embed
    naive[-1] += tail
    for i in range(n):
        naive[i * gpus // n] += layer
    assert max(loads) <= max(naive)


def test_max_memory_proportional_and_too_small():
    config = baichuan2_13b_config()
    loads = device_loads(config, balanced_device_map(config, 2, max_memory={0: "10GiB", 1: "20GiB"}), 2)
    assert loads[1] > 1.5 * loads[0] and max(loads) <= 20 * 2**30
    with pytest.raises(ValueError, match="max_memory"):
        balanced_device_map(config, 2, max_memory={0: "4GiB", 1: "4GiB"})


@pytest.mark.parametrize("kind", ["llama", "baichuan"])
def test_dispatch_tiny_model_same_logits(kind, tmp_path):
    """The map covers every module: loading with it (CPU / disk 'devices') gives the same logits."""
    torch.manual_seed(0)
    cls = LlamaConfig if kind == "llama" else BaichuanConfig
    config = cls(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
                 hidden_act="silu", pad_token_id=0, eos_token_id=2)
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
