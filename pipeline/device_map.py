"""Naive model parallelism for LlamaForCausalLM: a balanced `device_map` (chinese_bloom's helper) and a runner
that executes the model device by device in ONE process, timing each device.

    from device_map import balanced_device_map, NaiveModelParallel
    device_map = balanced_device_map(model.config, num_gpus=4, bytes_per_param=4)
    naive = NaiveModelParallel(model, device_map)           # cuda:0..3 when there are 4 GPUs, else all on the CPU
    logits, times = naive.forward(input_ids)                # == model(input_ids).logits
    loss, times = naive.train_step(input_ids, labels)       # forward + backward, per-device busy seconds

On GPUs this is what `from_pretrained(path, device_map=device_map)` does (accelerate moves the hidden states from
card to card): only one card computes at any moment, so with N cards each is idle (N-1)/N of the step. On a CPU
the N "devices" are emulated honestly: the same stages run one after the other in this process, each stage's
forward and backward timed on its own (its backward starts from the gradient of its output, as it would on its
card), so `times` shows which device would work when; no overlap is pretended. Pipeline parallelism (train.py)
fills that idle time with microbatches.
For single-process inference of the merged checkpoint on several GPUs:
    LlamaForCausalLM.from_pretrained(merged_dir, device_map=balanced_device_map(config, torch.cuda.device_count()))
"""
import time
from dataclasses import dataclass

import torch
from transformers.masking_utils import create_causal_mask


# Copied from chinese_bloom/device_map.py:Layout
@dataclass(frozen=True)
class Layout:
    """Module names of a causal LM, as they appear in `model.named_modules()`."""
    embed: tuple[str, ...]   # go on the first card (with anything computed once before the layers)
    layers: str              # prefix of the decoder layers: f"{layers}.{i}"
    tail: tuple[str, ...]    # final norm + head, on the last card


LAYOUTS = {"llama": Layout(("model.embed_tokens", "model.rotary_emb"), "model.layers", ("model.norm", "lm_head"))}

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


# ---------------------------------------------------------------- naive model parallelism, device by device
def default_devices(n: int) -> list[torch.device]:
    """cuda:0..n-1 when there are n GPUs, else n emulated devices that are all the CPU."""
    if torch.cuda.device_count() >= n:
        return [torch.device("cuda", i) for i in range(n)]
    return [torch.device("cpu")] * n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class NaiveModelParallel:
    """A LlamaForCausalLM placed by a device_map of balanced_device_map; runs device by device (module docstring)."""

    def __init__(self, model, device_map: dict[str, int], devices: list[torch.device] | None = None):
        self.model, self.layout = model, LAYOUTS[model.config.model_type]
        self.n = max(device_map.values()) + 1
        self.devices = devices or default_devices(self.n)
        self.layers = [[int(name.rsplit(".", 1)[1]) for name, d in device_map.items()
                        if name.startswith(self.layout.layers + ".") and d == k] for k in range(self.n)]
        for name, d in device_map.items():
            model.get_submodule(name).to(self.devices[d])

    def stage(self, k: int, x, position_ids):
        """Device k's part: (embedding + rotary on device 0) + its decoder layers (+ norm + head on the last)."""
        inner, device = self.model.model, self.devices[k]
        if k == 0:
            x = inner.embed_tokens(x.to(device))
        position_ids = position_ids.to(device)
        # rotary and mask are cheap and weight-free: recomputed per device instead of sent (accelerate sends them)
        position_embeddings = inner.rotary_emb(x, position_ids=position_ids)
        mask = create_causal_mask(config=self.model.config, inputs_embeds=x, attention_mask=None, cache=None,
                                  position_ids=position_ids)
        for i in self.layers[k]:
            x = inner.layers[i](x, attention_mask=mask, position_embeddings=position_embeddings,
                                position_ids=position_ids)
        if k == self.n - 1:
            x = self.model.lm_head(inner.norm(x))
        return x

    def _run(self, input_ids, grad: bool):
        position_ids = torch.arange(input_ids.shape[1]).unsqueeze(0)
        inputs, outputs, times = [], [], []
        x = input_ids
        for k in range(self.n):
            if k > 0:  # the hand-over between cards; a leaf here lets device k's backward be timed alone
                x = x.detach().to(self.devices[k]).requires_grad_(grad)
            inputs.append(x)
            start = time.perf_counter()
            with torch.set_grad_enabled(grad):
                x = self.stage(k, x, position_ids)
            _sync(self.devices[k])
            times.append(time.perf_counter() - start)
            outputs.append(x)
        return inputs, outputs, times

    @torch.no_grad()
    def forward(self, input_ids) -> tuple[torch.Tensor, list[float]]:
        """Logits (on the last device) and the forward seconds of each device."""
        _, outputs, times = self._run(input_ids, grad=False)
        return outputs[-1], times

    def train_step(self, input_ids, labels) -> tuple[torch.Tensor, dict[str, list[float]]]:
        """Forward + backward of the whole batch (gradients land in the model's .grad, as model(...).loss.backward()
        would put them). Returns the loss and {"forward": [s per device], "backward": [s per device]}."""
        inputs, outputs, forward = self._run(input_ids, grad=True)
        logits = outputs[-1]
        loss = self.model.loss_function(logits=logits, labels=labels.to(logits.device),
                                        vocab_size=self.model.config.vocab_size)
        backward = [0.0] * self.n
        for k in reversed(range(self.n)):
            start = time.perf_counter()
            if k == self.n - 1:
                loss.backward()
            else:
                outputs[k].backward(inputs[k + 1].grad.to(self.devices[k]))
            _sync(self.devices[k])
            backward[k] = time.perf_counter() - start
        return loss.detach(), {"forward": forward, "backward": backward}


def print_device_table(config, device_map: dict[str, int], num_gpus: int, bytes_per_param: int = 4) -> str:
    """Which decoder layers sit on which device, and the estimated weight bytes there."""
    layout = LAYOUTS[config.model_type]
    loads = device_loads(config, device_map, num_gpus, bytes_per_param)
    rows = ["| device | holds | layers | est. weights (MiB) |", "|---|---|---|---|"]
    for d in range(num_gpus):
        layers = [int(n.rsplit(".", 1)[1]) for n, g in device_map.items() if n.startswith(layout.layers + ".") and g == d]
        extra = [n for n in (*layout.embed[:1], *layout.tail[-1:]) if device_map[n] == d]
        span = f"{layers[0]}-{layers[-1]}" if layers else "-"
        rows.append(f"| {d} | {', '.join(extra) or '-'} | {span} ({len(layers)}) | {loads[d] / 2**20:.1f} |")
    table = "\n".join(rows)
    print(table)
    return table
