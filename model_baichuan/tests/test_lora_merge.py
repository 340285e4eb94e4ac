"""add_lora -> adapter -> merge.py -> the same logits, for the ALiBi model (W_pack) and a converted Llama (q/k/v);
an official-style W_pack adapter on a RoPE base converts to q/k/v; bad --adapter_dir fails in one line."""
import pytest
import torch

import merge
from model import add_lora, load_baichuan, load_model
from tokenization import chat_ids

IDS = torch.tensor([[5, 200, 17, 300, 42, 599, 7, 8]])


def trained_adapter(base_dir, out, targets="auto"):
    model = add_lora(load_model(base_dir), 4, 8, 0.0, targets, gradient_checkpointing=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # as if trained: B = 0 would make the test vacuous
    model.save_pretrained(out)
    with torch.no_grad():
        return model.eval()(IDS).logits


@pytest.mark.parametrize("variant,targets,kind", [("baichuan2-13b", "auto", "baichuan"),
                                                   ("baichuan2-7b", "auto", "llama"),
                                                   ("baichuan2-13b", "W_pack,o_proj,down_proj", "baichuan")])
def test_adapter_merge_same_logits(variant, targets, kind, tiny_variants, tmp_path):
    base = load_baichuan(tiny_variants[variant], tmp_path / "cache")
    want = trained_adapter(base, tmp_path / "adapter", targets)
    out = merge.main(["--adapter_dir", str(tmp_path / "adapter"), "--output_dir", str(tmp_path / "merged"),
                      "--cache_dir", str(tmp_path / "cache")])
    merged = load_model(out).eval()
    assert merged.config.model_type == kind
    with torch.no_grad():
        assert (merged(IDS).logits - want).abs().max() <= 1e-5
        assert (load_model(base)(IDS).logits - want).abs().max() > 1e-3  # the adapter did something
    assert chat_ids(out) == (195, 196)


def test_w_pack_adapter_on_a_rope_base(tiny_variants, reference, tmp_path):
    """An adapter on the official W_pack (as the official fine-tune.py trains it) merged into the Llama conversion
    equals the equations on W_pack + (alpha / r) B·A."""
    import json

    from peft import LoraConfig
    from safetensors.torch import save_file

    reference_logits, official_state = reference
    src = tiny_variants["baichuan2-7b"]
    cfg = json.loads(open(f"{src}/config.json").read())
    h, r, alpha = cfg["hidden_size"], 2, 4
    g = torch.Generator().manual_seed(1)
    sd, weights = official_state(src), {}
    for i in range(cfg["num_hidden_layers"]):
        a, b = torch.randn(r, h, generator=g) * 0.1, torch.randn(3 * h, r, generator=g) * 0.1
        p = f"base_model.model.model.layers.{i}.self_attn.W_pack."
        weights |= {p + "lora_A.weight": a, p + "lora_B.weight": b}
        sd[f"model.layers.{i}.self_attn.W_pack.weight"] += alpha / r * b @ a
    adapter = tmp_path / "official_adapter"
    LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, target_modules=["W_pack"],
               base_model_name_or_path=src).save_pretrained(adapter)
    save_file(weights, adapter / "adapter_model.safetensors")
    out = merge.main(["--adapter_dir", str(adapter), "--output_dir", str(tmp_path / "merged"),
                      "--cache_dir", str(tmp_path / "cache")])
    with torch.no_grad():
        got = load_model(out).eval()(IDS).logits.double()
    assert (got - reference_logits(sd, cfg, IDS)).abs().max() <= 1e-5


def test_bad_adapter_dir(tmp_path):
    with pytest.raises(SystemExit, match="--adapter_dir: .* has no adapter_config.json"):
        merge.main(["--adapter_dir", str(tmp_path)])
