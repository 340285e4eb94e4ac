"""convert.py: official RoPE Baichuan / Baichuan2 (7B-style) checkpoints -> LlamaForCausalLM with the logits of the
equations (tests/conftest.py:reference_logits: fused W_pack, RoPE, NormHead), strict loading, safetensors sources,
the convert-once cache, one-line errors for what is not a RoPE Baichuan."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from convert import convert_baichuan, main
from model import load_baichuan, load_model, load_tokenizer

IDS = torch.tensor([[5, 200, 17, 300, 42, 599, 7, 8, 1, 250, 33]])


@pytest.mark.parametrize("variant", ["baichuan-7b", "baichuan2-7b"])
def test_converted_llama_equals_the_equations(variant, tiny_variants, reference, tmp_path):
    reference_logits, official_state = reference
    src = Path(tiny_variants[variant])
    out = convert_baichuan(src, tmp_path / "llama")
    model, info = LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # every tensor used, none missing: a strict load
    cfg = json.loads((src / "config.json").read_text())
    with torch.no_grad():
        got = model.eval()(IDS).logits.double()
    want = reference_logits(official_state(src), cfg, IDS)
    assert (got - want).abs().max() <= 1e-5
    if variant == "baichuan2-7b":  # NormHead folded in: rows stored with norm 1
        assert torch.allclose(model.lm_head.weight.norm(dim=-1), torch.ones(cfg["vocab_size"]), atol=1e-6)
    assert load_tokenizer(out)("你好")["input_ids"] == load_tokenizer(src)("你好")["input_ids"]
    assert json.loads((Path(out) / "generation_config.json").read_text())["eos_token_id"] == 2


def test_load_baichuan_converts_once(tiny_variants, tmp_path, capsys):
    src = tiny_variants["baichuan2-7b"]
    first = load_baichuan(src, tmp_path / "cache")
    assert "converting" in capsys.readouterr().out
    assert load_baichuan(src, tmp_path / "cache") == first
    assert "using the converted" in capsys.readouterr().out
    assert load_model(first).config.model_type == "llama"
    alibi = tiny_variants["baichuan2-13b"]
    assert load_baichuan(alibi, tmp_path / "cache") == alibi  # the ALiBi model loads as it is
    assert load_baichuan(first) == first  # a converted directory is itself


def test_safetensors_source(tiny_variants, reference, tmp_path):
    from safetensors.torch import save_file
    _, official_state = reference
    src = Path(tiny_variants["baichuan-7b"])
    st = tmp_path / "st"
    shutil.copytree(src, st, ignore=shutil.ignore_patterns("pytorch_model*"))
    save_file({k: v.contiguous() for k, v in official_state(src).items()}, st / "model.safetensors")
    with torch.no_grad():
        a = LlamaForCausalLM.from_pretrained(convert_baichuan(src, tmp_path / "a"))(IDS).logits
        b = LlamaForCausalLM.from_pretrained(main(["--src_dir", str(st), "--output_dir", str(tmp_path / "b")]))(IDS).logits
    assert torch.equal(a, b)


def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text()) | changes
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_errors_are_one_line(tiny_variants, tmp_path):
    with pytest.raises(SystemExit, match="ALiBi Baichuan"):
        convert_baichuan(tiny_variants["baichuan2-13b"], tmp_path / "x")
    bloom = _edit_config(Path(tiny_variants["baichuan-7b"]), tmp_path / "bloom", model_type="bloom")
    with pytest.raises(SystemExit, match="model_type 'bloom'"):
        convert_baichuan(bloom, tmp_path / "y")
    no_tok = tmp_path / "no_tok"
    shutil.copytree(tiny_variants["baichuan-7b"], no_tok)
    (no_tok / "tokenizer.model").unlink()
    with pytest.raises(SystemExit, match="no tokenizer.model"):
        convert_baichuan(no_tok, tmp_path / "z")
    extra = tmp_path / "extra"
    shutil.copytree(tiny_variants["baichuan-7b"], extra)
    shard = sorted(extra.glob("pytorch_model-*.bin"))[0]
    torch.save(torch.load(shard, weights_only=True) | {"model.prefix_encoder.weight": torch.zeros(2)}, shard)
    with pytest.raises(SystemExit, match="unexpected tensor model.prefix_encoder"):
        convert_baichuan(extra, tmp_path / "w")
    with pytest.raises(SystemExit, match="--src_dir"):
        main(["--src_dir", str(tmp_path / "nothing")])
