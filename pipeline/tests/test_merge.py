"""merge.py: the stage shards of a 3-stage split -> one HF checkpoint that LlamaForCausalLM.from_pretrained loads
with identical logits (to the stage modules chained and to the original model); incomplete inputs are refused."""
import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import merge
from model import balance_stages, build_stage, unit_costs
from train import save_stage


@pytest.fixture
def checkpoint(tiny_llama, tmp_path):
    """tiny_llama's weights as a 3-stage pipeline checkpoint (as train.py writes it) + the 3 stage modules."""
    model = LlamaForCausalLM.from_pretrained(tiny_llama)
    split = balance_stages(unit_costs(model), 3)
    stages = [build_stage(model, split, i) for i in range(3)]
    ckpt = tmp_path / "checkpoint-7"
    ckpt.mkdir()
    for i, stage in enumerate(stages):
        save_stage(stage, ckpt, i, 3)
    model.config.save_pretrained(ckpt)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(ckpt)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    return ckpt, stages, model


def test_merged_checkpoint_has_identical_logits(checkpoint, tmp_path):
    ckpt, stages, model = checkpoint
    out = merge.main(["--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "merged")])
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    merged = LlamaForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out)("人民日报").input_ids  # the tokenizer came along
    ids = torch.randint(3, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        chained = ids
        for stage in stages:
            chained = stage(chained)
        assert torch.equal(merged(ids).logits, chained)  # bit-identical: the same weights, the same ops
        assert torch.equal(merged(ids).logits, model(ids).logits)
    assert merge.main(["--checkpoint", str(ckpt)]) == ckpt / "merged"  # the default output_dir


def test_incomplete_checkpoints_are_refused(checkpoint):
    ckpt, _, _ = checkpoint
    (ckpt / "stage-01-of-03.safetensors").unlink()
    with pytest.raises(ValueError, match="miss"):
        merge.merge(ckpt, ckpt / "merged")
    (ckpt / "trainer_state.json").unlink()
    with pytest.raises(SystemExit, match="--checkpoint"):
        merge.main(["--checkpoint", str(ckpt)])
    assert isinstance(LlamaConfig.from_pretrained(ckpt), LlamaConfig)
