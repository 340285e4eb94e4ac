"""LlamaForCausalLM (Llama-2 shapes) and its split into pipeline stages.

The model is cut at decoder-layer boundaries into `n_stages` contiguous pieces balanced by parameter count
(`balance_stages`): the embedding and the output head are units with their own (large) cost, the embedding
always in stage 0, norm + head always in the last stage. A stage is a plain nn.Module (`LlamaStage`) that
`torch.distributed.pipelining.PipelineStage` wraps; its parameter names ARE the global Hugging Face names
(`model.layers.5.mlp.up_proj.weight` stays layer 5 in whichever stage holds it), so the stage shards merge into
one checkpoint without a renaming table.

    python model.py                                   # print the split table of the default config (4 stages)
    python model.py --n_stages 8 --model_name_or_path /models/Llama-2-7b-hf
"""
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, HfArgumentParser, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import create_causal_mask

HERE = Path(__file__).resolve().parent
DEFAULT_TOKENIZER = HERE / "data/cache/people_daily/tokenizer"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "a local Llama-2 directory (save_pretrained / meta-llama/Llama-2-7b-hf downloaded); omit to train "
                "the small Llama-2-shaped config below from scratch"})
    tokenizer_name_or_path: str | None = field(default=None, metadata={
        "help": "default: the checkpoint's tokenizer, or data/cache/people_daily/tokenizer from scratch"})
    # from scratch: Llama-2 (4096 hidden, 32 layers, 32 heads, ffn 11008 = 2.6875 x hidden) scaled down
    hidden_size: int = 256
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = field(default=None, metadata={
        "help": "grouped-query attention (Llama-2 70B: 8 of 64); default: num_attention_heads (no GQA)"})
    intermediate_size: int | None = field(default=None, metadata={"help": "default: 2.6875 x hidden_size, rounded"})
    max_position_embeddings: int = 1024

    def __post_init__(self):
        for name in ("model_name_or_path", "tokenizer_name_or_path"):
            value = getattr(self, name)
            if value and not Path(value).exists():
                raise SystemExit(f"--{name}: {value} does not exist. Fix: pass a local directory saved with "
                                 "save_pretrained (nothing is downloaded here)")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SystemExit(f"--{name}: {value} must be > 0. Fix: e.g. --{name} "
                                 f"{ModelArguments.__dataclass_fields__[name].default or 8}")
        if self.num_key_value_heads is None:  # late defaults
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = int(round(self.hidden_size * 2.6875 / 8)) * 8
        if self.hidden_size % self.num_attention_heads:
            raise SystemExit(f"--num_attention_heads: {self.num_attention_heads} does not divide --hidden_size "
                             f"{self.hidden_size}. Fix: e.g. --num_attention_heads 8")
        if self.num_attention_heads % self.num_key_value_heads:
            raise SystemExit(f"--num_key_value_heads: {self.num_key_value_heads} does not divide "
                             f"--num_attention_heads {self.num_attention_heads}. Fix: a divisor, e.g. 2")
        if self.tokenizer_name_or_path is None:
            self.tokenizer_name_or_path = self.model_name_or_path or str(DEFAULT_TOKENIZER)


def load_tokenizer(args: ModelArguments):
    try:
        return AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--tokenizer_name_or_path: cannot load {args.tokenizer_name_or_path} ({e}). Fix: run "
                         "train_tokenizer.py (bash train.sh does) or pass the tokenizer the data was built with.")


def build_config(args: ModelArguments, tokenizer=None, vocab_size: int | None = None) -> LlamaConfig:
    """The checkpoint's config, or the from-scratch one (vocabulary and special ids from the tokenizer)."""
    if args.model_name_or_path:
        return LlamaConfig.from_pretrained(args.model_name_or_path)
    ids = {k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return LlamaConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=args.hidden_size,
                       intermediate_size=args.intermediate_size, num_hidden_layers=args.num_hidden_layers,
                       num_attention_heads=args.num_attention_heads, num_key_value_heads=args.num_key_value_heads,
                       max_position_embeddings=args.max_position_embeddings, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, **ids)


def build_model(args: ModelArguments, tokenizer) -> LlamaForCausalLM:
    """The whole model on every rank (each keeps only its stages): from scratch the seeded init is then the same
    everywhere. For a 7B+ checkpoint a per-stage load would save host memory; not done here."""
    if args.model_name_or_path:
        try:
            model = LlamaForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--model_name_or_path: cannot load {args.model_name_or_path} as LlamaForCausalLM ({e}). "
                             "Fix: a local Llama(-2) directory saved with save_pretrained")
    else:
        model = LlamaForCausalLM(build_config(args, tokenizer))
    if model.config.tie_word_embeddings:
        raise SystemExit("--model_name_or_path: the checkpoint ties lm_head to embed_tokens, which live in different "
                         "stages here. Fix: a Llama-2 checkpoint (untied), or train from scratch")
    if len(tokenizer) > model.config.vocab_size:
        raise SystemExit(f"--tokenizer_name_or_path: {len(tokenizer)} tokens but the model embeds "
                         f"{model.config.vocab_size}. Fix: use the model's own tokenizer")
    return model


# ---------------------------------------------------------------- the split: a pure function of unit costs
def unit_costs(model: LlamaForCausalLM) -> list[int]:
    """Parameter count of each unit, in order: embedding, decoder layer 0..L-1, final norm + lm_head."""
    count = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    return ([count(model.model.embed_tokens)] + [count(layer) for layer in model.model.layers]
            + [count(model.model.norm, model.lm_head)])


def balance_stages(costs: list[int], n_stages: int) -> list[range]:
    """Split units [embedding, layer 0..L-1, head] into `n_stages` contiguous ranges (of unit indices): first the
    largest stage cost is minimised, then, among the splits reaching it, the sum of squared stage costs (so that the
    middle stages are balanced too when a big embedding/head fixes the maximum). Every stage holds at least one
    decoder layer: stage 0 starts with the embedding, the last stage ends with the head. Exact dynamic programming."""
    n_layers = len(costs) - 2
    if n_layers < 1 or not 1 <= n_stages <= n_layers:
        raise ValueError(f"cannot split {n_layers} decoder layers into {n_stages} stages (need 1 <= stages <= layers)")
    largest = _best_split(costs, n_stages, max)[0]
    return _best_split(costs, n_stages, lambda acc, seg: acc + seg * seg if seg <= largest else float("inf"))[1]


def _best_split(costs: list[int], n_stages: int, combine) -> tuple[float, list[range]]:
    """min over splits of combine(...combine(combine(0, stage 0), stage 1)..., stage k-1); ties: earliest cuts."""
    n = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(n_stages + 1)]  # best[j][i]: units [0, i) in j stages
    cut = [[0] * (n + 1) for _ in range(n_stages + 1)]     # where the j-th stage starts
    for i in range(2, n + 1):
        best[1][i] = combine(0, prefix[i])
    for j in range(2, n_stages + 1):
        for i in range(j + 1, n + 1):
            for s in range(j, min(i, n - 1) if j == n_stages else i):  # the last stage holds a layer, not only the head
                value = combine(best[j - 1][s], prefix[i] - prefix[s])
                if value < best[j][i]:
                    best[j][i], cut[j][i] = value, s
    bounds = [n]
    for j in range(n_stages, 1, -1):
        bounds.append(cut[j][bounds[-1]])
    bounds = [0] + bounds[::-1]
    return best[n_stages][n], [range(bounds[k], bounds[k + 1]) for k in range(n_stages)]


def equal_layer_split(n_layers: int, n_stages: int) -> list[range]:
    """The naive split for comparison: the same number of decoder layers per stage (units, as balance_stages)."""
    per, extra = divmod(n_layers, n_stages)
    bounds = [0]
    for k in range(n_stages):
        bounds.append(bounds[-1] + per + (k < extra))
    units = [range(1 + a, 1 + b) for a, b in zip(bounds, bounds[1:])]
    return [range(0 if k == 0 else r.start, r.stop + (1 if k == n_stages - 1 else 0)) for k, r in enumerate(units)]


def stage_layers(units: range, n_layers: int) -> range:
    """The decoder-layer indices of a stage given its unit range (unit 0 = embedding, unit L+1 = head)."""
    return range(max(units.start, 1) - 1, min(units.stop, n_layers + 1) - 1)


def split_table(split: list[range], costs: list[int]) -> str:
    n_layers, total = len(costs) - 2, sum(costs)
    rows = ["stage | layers | params | share", "----- | ------ | ------ | -----"]
    for k, units in enumerate(split):
        layers = stage_layers(units, n_layers)
        parts = (["embed"] if 0 in units else []) + [f"{layers.start}-{layers.stop - 1}"] + \
                (["norm+head"] if n_layers + 1 in units else [])
        params = sum(costs[u] for u in units)
        rows.append(f"{k} | {' + '.join(parts)} | {params:,} | {params / total:.1%}")
    return "\n".join(rows)


# ---------------------------------------------------------------- a stage module
class LlamaStage(nn.Module):
    """Decoder layers `layers` of `model` (+ embeddings and rotary in stage 0, + norm and head in the last stage).

    The submodules are the model's own (no copy): slicing happens before anything is trained. `model.layers` is a
    ModuleDict keyed by the GLOBAL layer index, so state_dict() keys equal LlamaForCausalLM's."""

    def __init__(self, model: LlamaForCausalLM, layers: range, is_first: bool, is_last: bool):
        super().__init__()
        self.config, self.is_first, self.is_last = model.config, is_first, is_last
        self.model = nn.Module()
        if is_first:
            self.model.embed_tokens = model.model.embed_tokens
        self.model.layers = nn.ModuleDict({str(i): model.model.layers[i] for i in layers})
        self.model.rotary_emb = model.model.rotary_emb  # a buffer only (inv_freq, not in the state dict)
        if is_last:
            self.model.norm, self.lm_head = model.model.norm, model.lm_head
        self.autocast_dtype = None  # torch.bfloat16 under --bf16 (GPU): fp32 weights, bf16 matmuls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            out = self._forward(x)
        return out.float() if self.is_last else out  # the residual stream stays fp32 between stages

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] (stage 0) or hidden states [B, T, H] -> hidden states, or logits (last stage)."""
        hidden = self.model.embed_tokens(x) if self.is_first else x
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=None, cache=None,
                                  position_ids=position_ids)
        position_embeddings = self.model.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.model.layers.values():
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids,
                           position_embeddings=position_embeddings)
        if self.is_last:
            hidden = self.lm_head(self.model.norm(hidden))
        return hidden


def build_stage(model: LlamaForCausalLM, split: list[range], stage_idx: int) -> LlamaStage:
    layers = stage_layers(split[stage_idx], model.config.num_hidden_layers)
    return LlamaStage(model, layers, is_first=stage_idx == 0, is_last=stage_idx == len(split) - 1)


def stage_ids_for_rank(rank: int, world_size: int, stages_per_rank: int, style: str = "loop") -> list[int]:
    """Which stages a rank holds: 'loop' (GPipe/1F1B/Interleaved: r, r+p, ...) or 'v' (ZBV: r and 2p-1-r)."""
    if style == "v":
        return [rank, 2 * world_size - 1 - rank]
    return [rank + k * world_size for k in range(stages_per_rank)]


def main(argv: list[str] | None = None) -> str:
    @dataclass
    class SplitArguments:
        n_stages: int = 4
        vocab_size: int = field(default=32000, metadata={"help": "from scratch: Llama-2's 32000 tokens"})

        def __post_init__(self):
            if not 1 <= self.n_stages:
                raise SystemExit(f"--n_stages: {self.n_stages} must be >= 1. Fix: e.g. --n_stages 4")

    model_args, split_args = HfArgumentParser((ModelArguments, SplitArguments)).parse_args_into_dataclasses(args=argv)
    with torch.device("meta"):  # shapes only
        costs = unit_costs(LlamaForCausalLM(build_config(model_args, vocab_size=split_args.vocab_size)))
    table = split_table(balance_stages(costs, split_args.n_stages), costs)
    print(table)
    return table


if __name__ == "__main__":
    main()
