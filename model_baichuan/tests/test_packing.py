"""Packed batches give every sample exactly the loss it has alone (no cross-contamination), on both model paths:
the converted RoPE models (transformers' LlamaForCausalLM) and this folder's ALiBi + NormHead BaichuanForCausalLM.

LlamaForCausalLM (transformers 5.24) hands a 4D attention mask to its attention as it is (masking_utils returns an
already prepared 4D mask unchanged) and applies the rotary embedding from the given position_ids. The ALiBi model
adds its bias -slope * (i - j) to that mask: within one sample the distance i - j is the same packed or alone, and
the block-diagonal mask removes everything else. So the packed rows of SFTCollator (block-diagonal causal mask,
position_ids restarting at 0 per sample) need no model patch on either path.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM, DataCollatorWithFlattening, LlamaConfig

from dataset import IGNORE_INDEX, SFTCollator, build_sft_dataset, pack_examples
from model import BaichuanConfig

KINDS = ["llama", "alibi"]


def tiny_model(kind="alibi", attn="sdpa", vocab_size=1000):
    """kind "llama": a converted Baichuan(2)-7B; "alibi": Baichuan2-13B-style (ALiBi + NormHead)."""
    torch.manual_seed(0)
    dims = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, hidden_act="silu", max_position_embeddings=256, pad_token_id=0, eos_token_id=2)
    config = LlamaConfig(**dims) if kind == "llama" else BaichuanConfig(**dims)
    config._attn_implementation = attn
    return AutoModelForCausalLM.from_config(config).eval()


def per_sample_losses(logits, labels, spans):
    out = []
    for row, s, e in spans:
        lg, lb = logits[row, s:e - 1], labels[row, s + 1:e]
        keep = lb != IGNORE_INDEX
        out.append(torch.nn.functional.cross_entropy(lg[keep], lb[keep], reduction="mean"))
    return torch.stack(out)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_loss_equals_unpacked(kind, attn):
    model = tiny_model(kind, attn)
    lengths = [7, 12, 5, 9, 15, 3, 11, 6]
    samples = []
    for n in lengths:
        ids = torch.randint(5, 1000, (n,)).tolist()
        labels = [IGNORE_INDEX] * 2 + ids[2:]  # 2 "prompt" tokens, then answer
        samples.append({"input_ids": ids, "labels": labels})
    with torch.no_grad():
        alone = torch.stack([per_sample_losses(model(input_ids=torch.tensor([s["input_ids"]])).logits,
                                               torch.tensor([s["labels"]]), [(0, 0, len(s["input_ids"]))])[0]
                             for s in samples])
        rows = pack_examples({"input_ids": [s["input_ids"] for s in samples],
                              "labels": [s["labels"] for s in samples]}, max_length=32)
        feats = [dict(zip(rows, v)) for v in zip(*rows.values())]
        assert len(feats) < len(samples) and len(feats) >= 2  # really packed, and padded
        batch = SFTCollator(pad_token_id=0, packed=True)(feats)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        spans = []
        for r, f in enumerate(feats):
            starts = [i for i, p in enumerate(f["position_ids"]) if p == 0] + [len(f["position_ids"])]
            spans += [(r, s, e) for s, e in zip(starts, starts[1:])]
        packed = {}  # samples are packed first-fit; match them back by their token ids
        for (r, s, e), loss in zip(spans, per_sample_losses(logits, batch["labels"], spans)):
            packed[tuple(batch["input_ids"][r, s:e].tolist())] = loss
        packed = torch.stack([packed[tuple(s["input_ids"])] for s in samples])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_trainer_loss_packed_equals_unpacked(bc_tokenizer, kind):
    """The whole path on real chat records (conversation_labels -> build_sft_dataset -> collator -> model's own
    loss): the token-weighted loss of the packed dataset equals that of the unpacked one."""
    records = [{"messages": [{"role": "user", "content": f"{a}加{b}等于多少？"},
                             {"role": "assistant", "content": str(a + b)}]} for a, b in [(1, 2), (13, 29), (40, 7)]]
    records.append({"messages": [{"role": "user", "content": "3千米等于多少米？"}, {"role": "assistant", "content": "3000米"},
                                 {"role": "user", "content": "那5千米呢？"}, {"role": "assistant", "content": "5000米"}]})
    tok, template = bc_tokenizer
    model = tiny_model(kind, vocab_size=len(tok))

    def total(packing):
        ds, dropped = build_sft_dataset(records, tok, template, 128, packing=packing)
        assert dropped == 0 and (len(ds) < len(records)) == packing
        batch = SFTCollator(tok.pad_token_id, packed=packing)(list(ds))
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        lb = batch["labels"][:, 1:]
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), lb.flatten(), reduction="sum"), \
            (lb != IGNORE_INDEX).sum()

    (packed, n_packed), (alone, n_alone) = total(True), total(False)
    assert n_packed == n_alone > 4
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_flattening_position_ids_alone(kind):
    """Why SFTCollator sends the 4D mask: restarted position_ids alone (DataCollatorWithFlattening, no mask) do not
    isolate the samples of LlamaForCausalLM on CPU (the second sample's logits change when the first is packed before
    it). This folder's ALiBi model derives the block-diagonal mask from restarted position_ids itself (model.py), so
    there they are isolated either way."""
    model = tiny_model(kind, "sdpa")
    a, b = torch.randint(5, 1000, (6,)).tolist(), torch.randint(5, 1000, (6,)).tolist()
    batch = DataCollatorWithFlattening()([{"input_ids": a}, {"input_ids": b}])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b])).logits[0]
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0, 6:]
    if kind == "llama":
        assert (alone - packed).abs().max() > 1e-3
    else:
        torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
