"""The ALiBi model (BaichuanForCausalLM): the equations, the official names and shapes, the four variants, the
cache, left padding, packing, NormHead, gradient checkpointing, the official config quirks."""
import json
import math

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from model import (SMALL_CONFIG, BaichuanConfig, BaichuanForCausalLM, ModelArguments, alibi_mask, alibi_slopes,
                   load_baichuan, load_model)

IDS = torch.tensor([[5, 200, 17, 300, 42, 599, 7, 8, 1, 250, 33, 60]])


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = BaichuanConfig(**({"vocab_size": 600, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 6, "model_max_length": 64} | kw))
    model = BaichuanForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms, so a wrong norm weight shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("n", [1, 2, 4, 6, 8, 12, 40])
def test_alibi_slopes_formula(n):
    p2 = 2 ** math.floor(math.log2(n))
    want = [2 ** (-8 * (k + 1) / p2) for k in range(p2)] + [2 ** (-8 * (2 * k + 1) / (2 * p2)) for k in range(n - p2)]
    assert alibi_slopes(n) == pytest.approx(want, rel=1e-12)
    if n == 6:
        assert alibi_slopes(6) == pytest.approx([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])


def test_alibi_bias_is_the_formula():
    slopes = torch.tensor(alibi_slopes(6))
    causal = torch.ones(1, 1, 5, 8, dtype=torch.bool).tril(3)  # 3 cached tokens, 5 new ones
    got = alibi_mask(causal, slopes, 3, 5, torch.float32)
    for h in range(6):
        for i in range(5):
            for j in range(8):
                want = -slopes[h].item() * (3 + i - j) if j <= 3 + i else torch.finfo(torch.float32).min
                assert got[0, h, i, j].item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("variant", ["baichuan-13b", "baichuan2-13b"])
def test_official_alibi_checkpoint_equals_the_equations(variant, tiny_variants, reference):
    reference_logits, official_state = reference
    src = tiny_variants[variant]
    model, info = BaichuanForCausalLM.from_pretrained(load_baichuan(src), output_loading_info=True)
    assert not any(info.values()), info  # strict: the official names
    cfg = json.loads(open(f"{src}/config.json").read())
    with torch.no_grad():
        got = model.eval()(IDS).logits.double()
    assert (got - reference_logits(official_state(src), cfg, IDS)).abs().max() <= 1e-5
    assert model.config.norm_head == (variant == "baichuan2-13b")


@pytest.mark.parametrize("variant", ["baichuan-7b", "baichuan-13b", "baichuan2-7b", "baichuan2-13b"])
def test_every_variant_builds_saves_and_reloads(variant, tiny_variants, tmp_path):
    model = load_model(load_baichuan(tiny_variants[variant], tmp_path / "cache")).eval()
    assert model.config.model_type == ("baichuan" if variant.endswith("13b") else "llama")
    fresh = AutoModelForCausalLM.from_config(model.config)  # builds from its config
    assert type(fresh) is type(model)
    model.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, load_model(tmp_path / "saved")(IDS).logits)


def expected_names(cfg: dict) -> dict:
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    names = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names |= {p + "self_attn.W_pack.weight": (3 * h, h), p + "self_attn.o_proj.weight": (h, h),
                  p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
                  p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}
    return names


def meta_names(cfg: dict) -> dict:
    with torch.device("meta"):
        model = BaichuanForCausalLM(BaichuanConfig(**cfg))
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


def test_official_13b_names_and_shapes_small():
    cfg = SMALL_CONFIG | {"vocab_size": 1000}
    assert meta_names(cfg) == expected_names(cfg)


def test_official_13b_names_and_shapes_real(real_dir):
    cfg = json.loads((real_dir / "config.json").read_text())  # Baichuan2-13B-Chat's
    assert meta_names(cfg) == expected_names(cfg)
    config = BaichuanConfig.from_dict(cfg)
    assert (config.position_embedding, config.norm_head) == ("ALIBI", True)


def test_official_config_quirks():
    official = {"auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig"}, "hidden_size": 5120,
                "vocab_size": 64000, "gradient_checkpointing": [False], "model_type": "baichuan"}
    v1 = BaichuanConfig.from_dict(official)  # Baichuan-13B: ALiBi, plain head; the truthy (False,) dropped
    assert (v1.position_embedding, v1.norm_head) == ("ALIBI", False)
    assert "auto_map" not in v1.to_dict() and "gradient_checkpointing" not in v1.to_dict()
    assert BaichuanConfig.from_dict(official | {"hidden_size": 4096, "num_attention_heads": 32}).position_embedding == "ROPE"
    assert BaichuanConfig.from_dict(official | {"vocab_size": 125696}).norm_head
    assert BaichuanConfig(max_position_embeddings=77).model_max_length == 77  # Baichuan-7B's name
    assert isinstance(AutoConfig.for_model("baichuan"), BaichuanConfig)  # registered


def test_cache_equals_full_forward_and_generate():
    model = tiny()
    with torch.no_grad():
        full = model(IDS).logits
        out = model(IDS[:, :7], use_cache=True)
        step1 = model(IDS[:, 7:8], cache=out.cache).logits
        rest = model(IDS[:, 8:], cache=out.cache).logits
    assert (torch.cat([out.logits, step1, rest], 1) - full).abs().max() <= 1e-5
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    greedy = model.generate(IDS[:, :5], **kw)
    assert torch.equal(greedy, model.generate(IDS[:, :5], use_cache=False, **kw))
    beams = model.generate(IDS[:, :5], num_beams=3, **kw)
    assert beams.shape == (1, 11) and torch.equal(beams[:, :5], IDS[:, :5])
    torch.manual_seed(1)
    sampled = model.generate(IDS[:, :5], do_sample=True, top_k=20, max_new_tokens=6, pad_token_id=0)
    torch.manual_seed(1)
    assert torch.equal(sampled, model.generate(IDS[:, :5], do_sample=True, top_k=20, max_new_tokens=6, pad_token_id=0))


def test_left_padded_batch_equals_single_rows():
    model = tiny()
    rows = [IDS[0, :12], IDS[0, 3:8], IDS[0, 6:10]]
    width = max(len(r) for r in rows)
    ids = torch.stack([F.pad(r, (width - len(r), 0)) for r in rows])
    mask = torch.stack([F.pad(torch.ones(len(r), dtype=torch.long), (width - len(r), 0)) for r in rows])
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        batch_gen = model.generate(ids, attention_mask=mask, **kw)
        for b, r in enumerate(rows):
            alone = model(r[None]).logits[0]
            assert (batch[b, width - len(r):] - alone).abs().max() <= 1e-5
            assert torch.equal(batch_gen[b, width:], model.generate(r[None], **kw)[0, len(r):])


def test_packed_rows_equal_separate_samples():
    """position_ids restarting per sample (no attention_mask) or a 4D block-diagonal mask: each sample as alone."""
    model = tiny()
    a, b = IDS[0, :7], IDS[0, 2:7]
    packed = torch.cat([a, b])[None]
    position_ids = torch.cat([torch.arange(7), torch.arange(5)])[None]
    block = torch.zeros(12, 12, dtype=torch.bool)
    block[:7, :7] = True
    block[7:, 7:] = True
    block = (block & torch.ones(12, 12, dtype=torch.bool).tril())[None, None]
    with torch.no_grad():
        alone = torch.cat([model(a[None]).logits, model(b[None]).logits], 1)
        by_positions = model(packed, position_ids=position_ids).logits
        by_mask = model(packed, attention_mask=block, position_ids=position_ids).logits
    assert (by_positions - alone).abs().max() <= 1e-5
    assert (by_mask - alone).abs().max() <= 1e-5


def test_norm_head_train_and_eval_never_writes_back(tmp_path):
    model = tiny(seed=3)
    head = model.lm_head.weight
    assert not torch.allclose(head.norm(dim=-1), torch.ones(600))
    with torch.no_grad():
        hidden = model.model(IDS).last_hidden_state
    for mode in ("train", "eval"):
        getattr(model, mode)()
        logits = model(IDS).logits
        want = F.linear(hidden, F.normalize(head.detach(), dim=-1))
        assert (logits.detach() - want).abs().max() <= 1e-5, mode
    before = head.detach().clone()
    model.eval()
    with torch.no_grad():
        model(IDS)
    assert torch.equal(model.lm_head.weight, before)  # eval does not normalise in place (the official code does)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(IDS, labels=IDS).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = model(IDS).logits  # the cached row norms follow the updated weight
        assert (after - F.linear(model.model(IDS).last_hidden_state, F.normalize(model.lm_head.weight, dim=-1))).abs().max() <= 1e-5
    model.save_pretrained(tmp_path / "trained")
    with torch.no_grad():
        assert torch.equal(after, BaichuanForCausalLM.from_pretrained(tmp_path / "trained")(IDS).logits)


def test_gradient_checkpointing_same_loss_and_grads():
    model = tiny(seed=5)
    model.train()
    model(IDS, labels=IDS).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.model.layers[0].gradient_checkpointing
    model(IDS, labels=IDS).loss.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-6), n


def test_z_loss_is_the_official_formula():
    """Baichuan2's fine-tuning loss: cross-entropy + z_loss_weight * mean over all shifted positions of max logit^2."""
    model = tiny(seed=6)
    labels = IDS.clone()
    labels[:, :3] = -100  # the z-loss still counts those positions, as the official code
    out = model(IDS, labels=labels)
    model.config.z_loss_weight = 0.25
    with_z = model(IDS, labels=labels).loss
    ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1))
    z = out.logits[:, :-1].reshape(-1, out.logits.shape[-1]).max(-1).values.pow(2).mean()
    assert torch.allclose(out.loss, ce, atol=1e-6) and torch.allclose(with_z, ce + 0.25 * z, atol=1e-6)
    assert with_z - out.loss > 1e-3  # it is not a no-op


def test_model_arguments_fail_fast():
    for argv, match in [({"lora_r": 0}, "--lora_r: must be > 0"), ({"lora_dropout": 1.0}, "--lora_dropout"),
                        ({"lora_target_modules": "query_key_value"}, "--lora_target_modules: unknown"),
                        ({"use_lora": True}, "--use_lora: LoRA needs a trained base"),
                        ({"tokenizer_vocab_size": 100}, "--tokenizer_vocab_size: must be >="),
                        ({"model_name_or_path": "/no/such/dir"}, "--model_name_or_path: /no/such/dir does not exist")]:
        with pytest.raises(SystemExit, match=match):
            ModelArguments(**argv)
    assert ModelArguments().use_lora is False
