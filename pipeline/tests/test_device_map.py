"""Naive model parallelism: the device_map of a LlamaForCausalLM is contiguous and balanced by memory (embedding on
the first device, norm + head on the last), and running it device by device gives the single model's logits and
gradients."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from device_map import (LAYOUTS, NaiveModelParallel, balanced_device_map, device_loads, estimate_costs,
                        print_device_table)

LLAMA2_7B = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32)


@pytest.mark.parametrize("num_gpus", [1, 2, 4, 8])
def test_llama2_7b_layout_is_contiguous_and_balanced(num_gpus):
    device_map = balanced_device_map(LLAMA2_7B, num_gpus)
    layout = LAYOUTS["llama"]
    assert all(device_map[n] == 0 for n in layout.embed) and all(device_map[n] == num_gpus - 1 for n in layout.tail)
    gpus = [device_map[f"model.layers.{i}"] for i in range(32)]
    assert gpus == sorted(gpus) and set(gpus) == set(range(num_gpus))  # contiguous, every card used
    embed, layer, tail = estimate_costs(LLAMA2_7B)
    assert layer == 2 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 4 * 4096)  # attention + SwiGLU MLP, bf16
    loads = device_loads(LLAMA2_7B, device_map, num_gpus)
    assert sum(loads) == embed + tail + 32 * layer
    assert max(loads) - min(loads) <= max(embed, tail) + layer  # no card more than one unit off the others
    if num_gpus == 4:  # the embedding and the head are ~0.6 layers each: the end cards hold one layer fewer
        assert [gpus.count(g) for g in range(4)] == [8, 8, 8, 8] or max(loads) / (sum(loads) / 4) < 1.06


def test_max_memory_skews_the_split_and_refuses_what_cannot_fit():
    device_map = balanced_device_map(LLAMA2_7B, 2, max_memory={0: "10GiB", 1: "30GiB"})
    first = sum(1 for i in range(32) if device_map[f"model.layers.{i}"] == 0)
    assert first < 10  # the small card gets about a quarter
    with pytest.raises(ValueError, match="max_memory"):
        balanced_device_map(LLAMA2_7B, 2, max_memory={0: "2GiB", 1: "2GiB"})


@pytest.mark.parametrize("n_devices", [2, 4])
def test_naive_model_parallel_equals_the_single_model(tiny_llama, n_devices, seed):
    model = LlamaForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    torch.manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (3, 24))
    ref_logits = model(ids).logits
    model.zero_grad()
    ref = model(ids, labels=ids)
    ref.loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    device_map = balanced_device_map(model.config, n_devices, bytes_per_param=4)
    naive = NaiveModelParallel(model, device_map)
    assert sum(naive.layers, []) == [0, 1, 2, 3]  # every layer once, in order (a device may hold only the embedding)
    logits, times = naive.forward(ids)
    assert torch.allclose(logits, ref_logits, atol=1e-6) and len(times) == n_devices
    model.zero_grad()
    loss, times = naive.train_step(ids, ids)
    assert abs(loss.item() - ref.loss.item()) < 1e-6
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-6), n
    assert all(t > 0 for t in times["forward"] + times["backward"])
    table = print_device_table(model.config, device_map, n_devices)
    assert table.count("\n") == n_devices + 1 and "lm_head" in table.splitlines()[-1]
