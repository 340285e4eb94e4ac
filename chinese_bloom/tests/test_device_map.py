"""balanced_device_map as a pure function, and dispatching a tiny model with it."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, BloomConfig, FalconConfig, LlamaConfig

from device_map import LAYOUTS, balanced_device_map, device_loads, estimate_costs
from model import SUPPORTED


def real_size_config(model_type, layers):
    """Real-scale shapes (no weights): bloom-7b1, falcon-7b, LLaMA-7B, dolly-v2-3b-like."""
    if model_type == "bloom":
        return BloomConfig(vocab_size=250880, hidden_size=4096, n_layer=layers, n_head=32)
    if model_type == "falcon":
        return FalconConfig(vocab_size=65024, hidden_size=4544, num_hidden_layers=layers, num_attention_heads=71)
    if model_type == "llama":
        return LlamaConfig(vocab_size=32000, hidden_size=4096, num_hidden_layers=layers, num_attention_heads=32,
                           intermediate_size=11008)
    return AutoConfig.for_model("gpt_neox", vocab_size=50280, hidden_size=2560, num_hidden_layers=layers,
                                num_attention_heads=32, intermediate_size=10240)


@pytest.mark.parametrize("model_type", SUPPORTED)
@pytest.mark.parametrize("layers", [24, 28, 30, 32])
@pytest.mark.parametrize("gpus", [2, 3, 4, 8])
def test_balanced(model_type, layers, gpus):
    config = real_size_config(model_type, layers)
    dm = balanced_device_map(config, gpus)
    layout = LAYOUTS[model_type]
    # every layer once, contiguous and in order; embedding first card, head + norm last card
    layer_gpus = [dm[f"{layout.layers}.{i}"] for i in range(layers)]
    assert len([k for k in dm if k.startswith(layout.layers + ".")]) == layers
    assert layer_gpus == sorted(layer_gpus)
    assert all(dm[n] == 0 for n in layout.embed) and all(dm[n] == gpus - 1 for n in layout.tail)
    # memory is balanced: the fullest card is within one layer of the best possible maximum
    embed, layer, tail = estimate_costs(config)
    loads = device_loads(config, dm, gpus)
    assert sum(loads) == embed + tail + layers * layer
    lower_bound = max(sum(loads) / gpus, embed, tail)
    assert max(loads) <= lower_bound + layer
    # and it beats splitting the layers evenly by count whenever that is unbalanced
    naive = [0] * gpus
    naive[0] += embed
    naive[-1] += tail
    for i in range(layers):
        naive[i * gpus // layers] += layer
    assert max(loads) <= max(naive)


def test_max_memory_proportional_and_too_small():
    config = real_size_config("llama", 32)
    dm = balanced_device_map(config, 2, max_memory={0: "10GiB", 1: "30GiB"})
    loads = device_loads(config, dm, 2)
    assert loads[1] > 2 * loads[0]  # the bigger card gets the bigger share
    assert max(loads) <= 30 * 2**30
    with pytest.raises(ValueError, match="max_memory"):
        balanced_device_map(config, 2, max_memory={0: "2GiB", 1: "2GiB"})
    with pytest.raises(ValueError, match="max_memory"):
        balanced_device_map(config, 2, max_memory={0: "20GiB"})


def test_single_gpu_puts_everything_on_it():
    dm = balanced_device_map(real_size_config("bloom", 30), 1)
    assert set(dm.values()) == {0}


@pytest.mark.parametrize("model_type", SUPPORTED)
def test_dispatch_tiny_model_same_logits(model_type, tiny_config, tmp_path):
    """The map covers every module: loading with it (CPU 'devices') gives the same logits."""
    torch.manual_seed(0)
    config = tiny_config(model_type, layers=6)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path)
    dm = balanced_device_map(config, 3)
    assert sorted(set(dm.values())) == [0, 1, 2]
    # no GPUs here: cards 0 and 2 become "cpu", card 1 "disk" (weights streamed in by accelerate's hooks)
    on = {0: "cpu", 1: "disk", 2: "cpu"}
    dispatched = AutoModelForCausalLM.from_pretrained(tmp_path, device_map={k: on[v] for k, v in dm.items()},
                                                      offload_folder=tmp_path / "offload").eval()
    assert dispatched.hf_device_map == {k: on[v] for k, v in dm.items()}
    middle = [k for k, v in dm.items() if v == 1]
    assert middle and all({p.device.type for p in dispatched.get_submodule(k).parameters()} == {"meta"}
                          for k in middle)  # really offloaded to disk
    ids = torch.randint(0, config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(dispatched(input_ids=ids).logits, model(input_ids=ids).logits)
