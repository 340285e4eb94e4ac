"""The pipelined model equals a single-process LlamaForCausalLM: loss, gradients (after global-norm clipping), and the
weights after one AdamW step, within 1e-5, for every schedule, with 2 and 4 processes, on a batch whose microbatches
hold different numbers of valid tokens (-100 labels), where the mean of microbatch means would be wrong.

This file is also the worker: `torchrun --nproc_per_node N tests/test_equivalence.py OUT_DIR` runs all cases of N
processes in one launch and writes one JSON of max differences per rank.
"""
import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

FOLDER = Path(__file__).resolve().parents[1]
TOL = 1e-5
CASES = {  # (schedule, n_microbatches) per world size
    2: [("gpipe", 4), ("1f1b", 4), ("interleaved1f1b", 4), ("zbv", 4), ("interleavedzb", 4)],
    4: [("gpipe", 4), ("1f1b", 4), ("interleaved1f1b", 8)],
}


def make_args(schedule: str, n_microbatches: int):
    from train import MULTI_STAGE
    return SimpleNamespace(schedule=schedule, n_microbatches=n_microbatches,
                           stages_per_rank=2 if schedule in MULTI_STAGE else 1, learning_rate=1e-3, weight_decay=0.1,
                           adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, lr_scheduler_type="linear",
                           max_steps=10, get_warmup_steps=lambda n: 0, max_grad_norm=0.5)  # 0.5: the clip is active


def make_model_and_batch():
    """8 decoder layers (8 stages for 4 ranks x 2), GQA; 8 rows of 16 tokens, row i ends with 2*i labels -100."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0,
                         initializer_range=0.1)  # larger logits: per-token losses differ, so does the naive mean
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    input_ids = torch.randint(1, 96, (8, 16), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    for i in range(8):
        if i:
            input_ids[i, -2 * i:], labels[i, -2 * i:] = 0, -100  # right padding
    return model, input_ids, labels


def reference(model, input_ids, labels, args):
    """One step of the plain model: HF loss (mean over valid tokens), clip_grad_norm_, AdamW, then the new loss."""
    import torch
    from train import make_optimizer, make_scheduler
    model = copy.deepcopy(model)
    opt = make_optimizer(model, args)
    sched = make_scheduler(opt, args)
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    sched.step()
    with torch.no_grad():
        after = model(input_ids=input_ids, labels=labels).loss
    return {"loss": float(loss), "norm": float(norm), "grads": grads, "after": float(after),
            "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}


def mean_of_microbatch_means(model, input_ids, labels, n_microbatches) -> float:
    import torch
    with torch.no_grad():
        return float(torch.stack([model(input_ids=i, labels=l).loss for i, l in
                                  zip(input_ids.chunk(n_microbatches), labels.chunk(n_microbatches))]).mean())


def worker(out_dir: str) -> None:
    import torch
    import torch.distributed as dist
    from train import build_pipeline, evaluate, train_step
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, input_ids, labels = make_model_and_batch()
    results = {}
    for schedule, n_mb in CASES[world]:
        args = make_args(schedule, n_mb)
        ref = reference(model, input_ids, labels, args)
        pipe = build_pipeline(copy.deepcopy(model), args)
        loss, norm = train_step(pipe, input_ids, labels, args.max_grad_norm)
        named = {n: p for m in pipe.modules for n, p in m.named_parameters()}
        eval_loss = evaluate(pipe, [{"input_ids": a, "labels": b} for a, b in zip(input_ids, labels)], len(input_ids))
        results[f"{schedule}/{n_mb}"] = {
            "stages": pipe.stage_ids, "params": sorted(named),
            "loss": None if loss is None else abs(loss - ref["loss"]),
            "after": None if eval_loss is None else abs(eval_loss - ref["after"]),
            "norm": abs(norm - ref["norm"]),
            "grad": max(float((p.grad - ref["grads"][n]).abs().max()) for n, p in named.items()),
            "weight": max(float((p.detach() - ref["weights"][n]).abs().max()) for n, p in named.items()),
            "naive": abs(mean_of_microbatch_means(model, input_ids, labels, n_mb) - ref["loss"]),
            "clipped": ref["norm"] > args.max_grad_norm,  # the global-norm clip did act (norm 3.1 > 0.5)
        }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("nproc", [2, 4])
def test_pipeline_equals_single_process(nproc, torchrun, tmp_path):
    torchrun(nproc, [Path(__file__).resolve(), tmp_path], timeout=600)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(nproc)]
    from transformers import LlamaForCausalLM
    model, _, _ = make_model_and_batch()
    all_names = sorted(n for n, _ in model.named_parameters())
    assert isinstance(model, LlamaForCausalLM)
    for case in ranks[0]:
        per_rank = [r[case] for r in ranks]
        assert sorted(n for r in per_rank for n in r["params"]) == all_names, case  # each parameter in one stage
        assert sorted(s for r in per_rank for s in r["stages"]) == list(range(len(per_rank) * len(per_rank[0]["stages"])))
        losses = [r["loss"] for r in per_rank if r["loss"] is not None]
        assert len(losses) == 1 and losses[0] < TOL, (case, losses)  # the loss lives on the last stage's rank only
        assert [r["after"] for r in per_rank if r["after"] is not None][0] < TOL, case
        for key in ("norm", "grad", "weight"):
            assert max(r[key] for r in per_rank) < TOL, (case, key, [r[key] for r in per_rank])
        # the batch does discriminate: averaging the microbatch means would be off by far more than the tolerance
        assert per_rank[0]["naive"] > 1e-3, case
        assert per_rank[0]["clipped"], case


if __name__ == "__main__":
    sys.path.insert(0, str(FOLDER))
    worker(sys.argv[1])
