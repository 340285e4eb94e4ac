"""Packed batches give every sample exactly the loss it has alone (no cross-contamination)."""
import pytest
import torch
from transformers import AutoModelForCausalLM, DataCollatorWithFlattening

from dataset import IGNORE_INDEX, SFTCollator, pack_examples
from model import SUPPORTED, enable_packing


def per_sample_losses(logits, labels, spans):
    out = []
    for row, s, e in spans:
        lg, lb = logits[row, s:e - 1], labels[row, s + 1:e]
        keep = lb != IGNORE_INDEX
        out.append(torch.nn.functional.cross_entropy(lg[keep], lb[keep], reduction="mean"))
    return torch.stack(out)


@pytest.mark.parametrize("model_type", SUPPORTED)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_loss_equals_unpacked(model_type, attn, tiny_config):
    if model_type == "bloom" and attn == "sdpa":
        pytest.skip("BLOOM only has its own eager attention")
    torch.manual_seed(0)
    config = tiny_config(model_type)
    config._attn_implementation = attn
    model = AutoModelForCausalLM.from_config(config).eval()
    enable_packing(model)
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
        # samples are packed first-fit; match them back by their token ids
        packed = {}
        for (r, s, e), loss in zip(spans, per_sample_losses(logits, batch["labels"], spans)):
            packed[tuple(batch["input_ids"][r, s:e].tolist())] = loss
        packed = torch.stack([packed[tuple(s["input_ids"])] for s in samples])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("model_type", SUPPORTED)
def test_flattening_position_ids_alone_leak(model_type, tiny_config):
    """Why the 4D mask is needed: DataCollatorWithFlattening's restarted position_ids alone (no mask) do not
    isolate the samples on CPU; the second sample's logits change when the first is packed before it."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()
    a, b = torch.randint(5, 1000, (6,)).tolist(), torch.randint(5, 1000, (6,)).tolist()
    batch = DataCollatorWithFlattening()([{"input_ids": a}, {"input_ids": b}])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b])).logits[0]
        leaked = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0, 6:]
    assert (alone - leaked).abs().max() > 1e-3
