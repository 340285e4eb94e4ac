"""LoRA: adapter -> merge.py -> the same logits; an original repo's fused query_key_value adapter -> q/k/v, same logits."""
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GlmForCausalLM

from model import add_lora, convert_config, convert_state, load_model

IDS = torch.randint(0, 300, (2, 13), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def official_state(src) -> dict:
    index = json.loads((Path(src) / "pytorch_model.bin.index.json").read_text())
    return {k: v for f in dict.fromkeys(index["weight_map"].values())
            for k, v in torch.load(Path(src) / f, weights_only=True).items()}


def test_adapter_merge_gives_the_same_logits(tmp_path, tiny_official):
    import merge
    base_dir = tiny_official[1]
    model = add_lora(load_model(base_dir), 4, 16, 0.0, "q_proj,k_proj,v_proj,o_proj", gradient_checkpointing=False)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapter do something
            p.data = 0.05 * torch.randn(p.shape, generator=g)
    want = logits(model)
    assert (want - logits(load_model(base_dir))).abs().max() > 1e-3
    model.save_pretrained(tmp_path / "lora")
    out = merge.main(["--adapter_dir", str(tmp_path / "lora"), "--output_dir", str(tmp_path / "merged")])
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(merged, GlmForCausalLM) and (Path(out) / "tokenizer.json").is_file()
    assert not any("lora" in k for k in merged.state_dict())
    assert (logits(merged) - want).abs().max() <= 1e-5


@pytest.mark.parametrize("file", ["adapter_model.bin", "adapter_model.safetensors"])
def test_fused_qkv_adapter_converts_to_the_same_logits(tmp_path, tiny_official, file):
    """An adapter as the original ChatGLM2 LoRA repos save it (peft on the official model's query_key_value and
    dense), compared with the fused computation: W_qkv + (alpha/r)·B·A on the official weights, then converted."""
    from peft import PeftModel
    from safetensors.torch import save_file

    import merge
    src, base_dir = tiny_official
    cfg = json.loads((Path(src) / "config.json").read_text())
    h, n, gr, d, r, alpha = cfg["hidden_size"], cfg["num_attention_heads"], cfg["multi_query_group_num"], \
        cfg["kv_channels"], 4, 8
    g = torch.Generator().manual_seed(2)
    adapter, sd = {}, official_state(src)
    for i in range(cfg["num_layers"]):
        for module, rows, cols in (("query_key_value", (n + 2 * gr) * d, h), ("dense", h, n * d)):
            p = f"base_model.model.transformer.encoder.layers.{i}.self_attention.{module}."
            a, b = 0.1 * torch.randn(r, cols, generator=g), 0.1 * torch.randn(rows, r, generator=g)  # B nonzero
            adapter[p + "lora_A.weight"], adapter[p + "lora_B.weight"] = a, b
            sd[f"transformer.encoder.layers.{i}.self_attention.{module}.weight"] += (alpha / r) * b @ a
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": str(src), "peft_type": "LORA", "task_type": "CAUSAL_LM", "inference_mode": True,
        "r": r, "lora_alpha": alpha, "lora_dropout": 0.1, "target_modules": ["query_key_value", "dense"],
        "fan_in_fan_out": False, "bias": "none", "modules_to_save": None}))
    torch.save(adapter, fused / file) if file.endswith(".bin") else save_file(adapter, fused / file)
    reference = GlmForCausalLM(convert_config(cfg))
    reference.load_state_dict(convert_state(sd, cfg))
    want = logits(reference)
    assert (want - logits(load_model(base_dir))).abs().max() > 1e-3  # the adapter changes the output

    qkv = merge.convert_fused_adapter(fused, tmp_path / "qkv", cfg, base_dir)
    assert set(json.loads((Path(qkv) / "adapter_config.json").read_text())["target_modules"]) == \
        {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert (logits(PeftModel.from_pretrained(load_model(base_dir), qkv)) - want).abs().max() <= 1e-5
    # merge.py takes the fused adapter directly; its base (the official dir) is converted on the way
    out = merge.main(["--adapter_dir", str(fused), "--output_dir", str(tmp_path / "merged"),
                      "--cache_dir", str(tmp_path / "cache")])
    assert (logits(AutoModelForCausalLM.from_pretrained(out)) - want).abs().max() <= 1e-5


def test_unconvertible_adapters_fail_in_one_line(tmp_path, tiny_official):
    import merge
    cfg = json.loads((Path(tiny_official[0]) / "config.json").read_text())
    d = tmp_path / "old"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                       "target_modules": ["query_key_value"],
                                                       "enable_lora": [True, False, True]}))
    with pytest.raises(SystemExit, match="enable_lora") as e:
        merge.convert_fused_adapter(d, tmp_path / "out", cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="--adapter_dir"):
        merge.main(["--adapter_dir", str(tmp_path / "missing")])
