"""A balanced `device_map` for naive model parallelism in ONE process (inference / evaluation).

    from device_map import balanced_device_map
    device_map = balanced_device_map(AutoConfig.from_pretrained(path), num_gpus=2)
    model = AutoModelForCausalLM.from_pretrained(path, device_map=device_map, dtype=torch.bfloat16)

chinese_bloom's helper (copied with `# Copied from` markers) with two layouts: `llama` for the converted
Baichuan-7B / Baichuan2-7B (transformers' LlamaForCausalLM, the rotary table with the embeddings) and `baichuan`
for this folder's ALiBi model (Baichuan-13B / Baichuan2-13B, official module names: model.embed_tokens,
model.layers.N, model.norm, lm_head; the ALiBi bias is computed in the forward pass, no module holds it).
Embeddings go on the first card, the final norm and the LM head on the last, the decoder layers (32 for 7B,
40 for 13B) in contiguous runs so that the memory per card is as even as possible (or proportional to
`max_memory`). Never combine it with torchrun/deepspeed data parallelism (one process per GPU already owns its card).
"""
from dataclasses import dataclass


# Copied from chinese_bloom/device_map.py:Layout
@dataclass(frozen=True)
class Layout:
    """Module names of a causal LM, as they appear in `model.named_modules()`."""
    embed: tuple[str, ...]   # go on the first card (with anything computed once before the layers)
    layers: str              # prefix of the decoder layers: f"{layers}.{i}"
    tail: tuple[str, ...]    # final norm + head, on the last card


LAYOUTS = {
    "llama": Layout(("model.embed_tokens", "model.rotary_emb"), "model.layers", ("model.norm", "lm_head")),
    "baichuan": Layout(("model.embed_tokens",), "model.layers", ("model.norm", "lm_head")),
}

_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


# Copied from chinese_bloom/device_map.py:parse_memory
def parse_memory(value) -> int:
    """20 * 2**30, "20GiB", "20GB", "512MiB" -> bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip().upper()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * _UNITS[unit])
    raise ValueError(f"cannot parse memory size {value!r}; use e.g. '20GiB' or a number of bytes")


# Copied from chinese_bloom/device_map.py:estimate_costs
def estimate_costs(config, bytes_per_param: int = 2) -> tuple[int, int, int]:
    """(embedding, one decoder layer, final norm + head) in bytes, from the config alone.

    The head is counted even when tied to the embedding: on the last card it needs the weight
    (or a copy) and its (batch, seq, vocab) logits, which is the largest activation of a step.
    """
    h = config.hidden_size
    vocab = config.vocab_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False):
        kv_heads = 1  # falcon-7b
    head_dim = h // heads
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "ffn_hidden_size", None) or 4 * h
    gated = getattr(config, "hidden_act", "") in ("silu", "swiglu")  # LLaMA-style gate + up + down
    attention = 2 * h * h + 2 * h * kv_heads * head_dim
    mlp = (3 if gated else 2) * h * ffn
    layer = attention + mlp + 4 * h
    return vocab * h * bytes_per_param, layer * bytes_per_param, (vocab * h + 2 * h) * bytes_per_param


# Copied from chinese_bloom/device_map.py:balanced_device_map
def balanced_device_map(config, num_gpus: int, max_memory=None, layout: Layout | None = None,
                        bytes_per_param: int = 2) -> dict[str, int]:
    """Module name -> GPU index, balancing estimated memory per card (see module docstring).

    max_memory: optional {gpu_index: bytes or "20GiB"} (or a list); cards then get loads
    proportional to it, and a ValueError says so if the model cannot fit.
    """
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    layout = layout or LAYOUTS.get(config.model_type)
    if layout is None:
        raise ValueError(f"no module layout for model_type {config.model_type!r}; pass layout=Layout(...)")
    n_layers = config.num_hidden_layers
    embed, layer, tail = estimate_costs(config, bytes_per_param)
    if max_memory is None:
        caps = [1.0] * num_gpus
    else:
        items = max_memory.items() if isinstance(max_memory, dict) else enumerate(max_memory)
        given = {int(k): parse_memory(v) for k, v in items if str(k).isdigit()}
        if sorted(given) != list(range(num_gpus)):
            raise ValueError(f"max_memory must give a size for each of the GPUs 0..{num_gpus - 1}, got {sorted(given)}")
        caps = [float(given[i]) for i in range(num_gpus)]
    fixed = [0.0] * num_gpus
    fixed[0] += embed
    fixed[-1] += tail

    def counts_for(t):
        """Greedy contiguous fill with every card at most t * its capacity; None if layers are left."""
        counts, left = [], n_layers
        for cap, fix in zip(caps, fixed):
            k = max(0, min(left, int((t * cap - fix) // layer))) if t * cap >= fix else -1
            if k < 0:
                return None
            counts.append(k)
            left -= k
        return counts if left == 0 else None

    lo, hi = 0.0, (embed + tail + n_layers * layer) / min(caps) + 1.0
    for _ in range(100):  # smallest t (max load / capacity) that still places every layer
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if counts_for(mid) is not None else (mid, hi)
    counts = counts_for(hi)
    if max_memory is not None and hi > 1.0:
        need = embed + tail + n_layers * layer
        raise ValueError(f"the model needs about {need / 2**30:.1f} GiB for weights but max_memory "
                         f"({sum(caps) / 2**30:.1f} GiB over {num_gpus} GPUs) cannot hold it balanced")

    device_map = {name: 0 for name in layout.embed}
    i = 0
    for gpu, k in enumerate(counts):
        for _ in range(k):
            device_map[f"{layout.layers}.{i}"] = gpu
            i += 1
    device_map.update({name: num_gpus - 1 for name in layout.tail})
    return device_map


# Copied from chinese_bloom/device_map.py:device_loads
def device_loads(config, device_map: dict[str, int], num_gpus: int, bytes_per_param: int = 2) -> list[int]:
    """Estimated bytes per card for a device_map of balanced_device_map (for checks and printing)."""
    embed, layer, tail = estimate_costs(config, bytes_per_param)
    layout = LAYOUTS[config.model_type]
    loads = [0] * num_gpus
    loads[device_map[layout.embed[0]]] += embed
    loads[device_map[layout.tail[-1]]] += tail
    for name, gpu in device_map.items():
        if name.startswith(layout.layers + "."):
            loads[gpu] += layer
    return loads
