"""Official ChatGLM2/3 checkpoint -> GlmForCausalLM: same logits as the ChatGLM2 equations, caches, padding, names."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GlmForCausalLM

from model import (ModelArguments, convert_chatglm, convert_config, convert_state, official_shapes, resolve_model_dir,
                   write_tiny_official)

REAL_CONFIG = Path(__file__).resolve().parents[2] / "../shared/reference/chatglm2/config.json"
SMALL = dict(hidden_size=64, num_layers=2, num_attention_heads=4, kv_channels=16, multi_query_group_num=2,
             ffn_hidden_size=96)


def official_state(src) -> dict:
    index = json.loads((Path(src) / "pytorch_model.bin.index.json").read_text())
    sd = {}
    for f in dict.fromkeys(index["weight_map"].values()):
        sd |= torch.load(Path(src) / f, weights_only=True)
    return sd


def reference_logits(sd, cfg, ids, mask=None, rope="theta"):
    """ChatGLM2 written from its equations: fused qkv with bias, multi-query groups, interleaved rotary on the
    first half of each head's dims, RMSNorm, SwiGLU, untied output layer. Left padding: positions count real tokens."""
    b, s = ids.shape
    heads, groups, hd, eps = cfg["num_attention_heads"], cfg["multi_query_group_num"], cfg["kv_channels"], cfg["layernorm_epsilon"]
    mask = torch.ones(b, s, dtype=torch.long) if mask is None else mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0).double()
    ratio = cfg.get("rope_ratio", 1)
    base = 10000.0 * (ratio if rope == "theta" else 1)
    pos = pos / ratio if rope == "linear" else pos
    rot = hd // 2
    angle = pos[..., None] * base ** (-torch.arange(0, rot, 2, dtype=torch.double) / rot)  # (b, s, rot/2)
    cos, sin = angle.cos()[:, :, None].float(), angle.sin()[:, :, None].float()

    def rope_(x):  # (b, s, n, hd): rotate pairs (x0, x1), (x2, x3), ... of the first hd/2 dims
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        x0, x1 = x_rot[..., 0::2], x_rot[..., 1::2]
        return torch.cat([torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(-2), x_pass], -1)

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    allowed = torch.tril(torch.ones(s, s, dtype=torch.bool)) & mask.bool()[:, None, None, :]  # (b, 1, q, k)
    allowed |= torch.eye(s, dtype=torch.bool)  # pad queries see themselves (no NaN; real tokens never see pads)
    h = sd["transformer.embedding.word_embeddings.weight"][ids]
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        x = rms(h, sd[p + "input_layernorm.weight"])
        qkv = x @ sd[p + "self_attention.query_key_value.weight"].T + sd[p + "self_attention.query_key_value.bias"]
        if cfg.get("multi_query_attention", True):  # rows: q of all heads, k of all groups, v of all groups
            q, k, v = qkv.split([heads * hd, groups * hd, groups * hd], -1)
            q, k, v = q.view(b, s, heads, hd), k.view(b, s, groups, hd), v.view(b, s, groups, hd)
        else:  # without multi-query: per head [q | k | v]
            groups = heads
            q, k, v = qkv.view(b, s, heads, 3 * hd).split(hd, -1)
        q, k = rope_(q), rope_(k)
        k, v = k.repeat_interleave(heads // groups, 2), v.repeat_interleave(heads // groups, 2)  # group g: heads g*n..
        scores = torch.einsum("bqnd,bknd->bnqk", q, k) / hd ** 0.5
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        ctx = torch.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, s, heads * hd)
        h = h + ctx @ sd[p + "self_attention.dense.weight"].T
        x = rms(h, sd[p + "post_attention_layernorm.weight"])
        gate, up = (x @ sd[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, -1)
        h = h + (F.silu(gate) * up) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    h = rms(h, sd["transformer.encoder.final_layernorm.weight"])
    return h @ sd["transformer.output_layer.weight"].T


@pytest.fixture(scope="module")
def converted(tiny_official):
    src, dst = tiny_official
    cfg = json.loads((Path(src) / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    return cfg, official_state(src), model


def test_converts_to_glm_with_the_reference_logits(tiny_official, converted):
    cfg, sd, model = converted
    assert isinstance(model, GlmForCausalLM)
    assert len(list(Path(tiny_official[0]).glob("pytorch_model-*.bin"))) == 2  # sharded official input
    assert json.loads((Path(tiny_official[1]) / "model.safetensors.index.json").read_text())["weight_map"]
    ids = torch.randint(0, cfg["padded_vocab_size"], (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(input_ids=ids).logits
    want = reference_logits(sd, cfg, ids)
    assert want.abs().max() > 0.1  # not trivially zero
    assert (got - want).abs().max() <= 1e-5


def test_kv_cache_decoding_equals_full_forward(converted):
    cfg, sd, model = converted
    ids = torch.randint(0, cfg["padded_vocab_size"], (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :8], use_cache=True)
        steps = [out.logits]
        for t in range(8, 12):  # one token at a time through the cache
            out = model(input_ids=ids[:, t:t + 1], cache=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_left_padded_batch_equals_single_rows(converted, tiny_official):
    from model import load_tokenizer
    cfg, sd, model = converted
    tok = load_tokenizer(tiny_official[1])
    batch = tok(["你好，世界！今天天气很好。", "学习"], padding=True, return_tensors="pt")
    assert tok.padding_side == "left" and (batch["attention_mask"][1, 0] == 0) and batch["input_ids"][1, 0] == 0
    with torch.no_grad():
        # positions count real tokens (as generate() and the official tokenizer's position_ids do)
        padded_pos = model(**batch, position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)).logits
        gen = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=0)
        for row in range(2):
            ids = tok(["你好，世界！今天天气很好。", "学习"][row], return_tensors="pt")["input_ids"]
            single = model(input_ids=ids).logits[0]
            n = ids.shape[1]
            assert (padded_pos[row, -n:] - single).abs().max() <= 1e-5
            assert (model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, n:]
                    == gen[row, -5:]).all()
    ref = reference_logits(sd, cfg, batch["input_ids"], batch["attention_mask"])
    assert not ref.isnan().any()
    real = batch["attention_mask"].bool()
    assert (padded_pos - ref)[real].abs().max() <= 1e-5


@pytest.mark.parametrize("template,rope", [("chatglm2", "linear"), ("chatglm3", "theta")])
def test_32k_rope_ratio(tmp_path, sp_model, template, rope):
    """ChatGLM2-6B-32k interpolates positions by rope_ratio; ChatGLM3-6B-32k multiplies the base by it."""
    src = write_tiny_official(tmp_path / "src", sp_model, template=template, rope_ratio=8.0, **SMALL)
    model = AutoModelForCausalLM.from_pretrained(convert_chatglm(src, tmp_path / "dst")).eval()
    cfg = json.loads((Path(src) / "config.json").read_text())
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(input_ids=ids).logits
    sd = official_state(src)
    assert (got - reference_logits(sd, cfg, ids, rope=rope)).abs().max() <= 1e-5
    other = "theta" if rope == "linear" else "linear"
    assert (got - reference_logits(sd, cfg, ids, rope=other)).abs().max() > 1e-4  # the variants do differ


def test_without_multi_query_attention(tmp_path, sp_model):
    """multi_query_attention false (no released checkpoint, but a valid ChatGLMConfig): per-head fused rows."""
    src = write_tiny_official(tmp_path / "src", sp_model, **SMALL | dict(multi_query_attention=False))
    model = AutoModelForCausalLM.from_pretrained(convert_chatglm(src, tmp_path / "dst")).eval()
    assert model.config.num_key_value_heads == model.config.num_attention_heads
    cfg = json.loads((Path(src) / "config.json").read_text())
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(input_ids=ids).logits - reference_logits(official_state(src), cfg, ids)).abs().max() <= 1e-5


def expected_official(cfg) -> dict:
    """The official ChatGLMForConditionalGeneration state dict, written out from its modules."""
    h, n, g, d, f, v = (cfg[k] for k in ("hidden_size", "num_attention_heads", "multi_query_group_num", "kv_channels",
                                          "ffn_hidden_size", "padded_vocab_size"))
    out = {"transformer.embedding.word_embeddings.weight": (v, h), "transformer.rotary_pos_emb.inv_freq": (d // 4,),
           "transformer.encoder.final_layernorm.weight": (h,), "transformer.output_layer.weight": (v, h)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        out |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                p + "self_attention.query_key_value.weight": (n * d + 2 * g * d, h),
                p + "self_attention.query_key_value.bias": (n * d + 2 * g * d,),
                p + "self_attention.dense.weight": (h, n * d),
                p + "mlp.dense_h_to_4h.weight": (2 * f, h), p + "mlp.dense_4h_to_h.weight": (h, f)}
    return out


def expected_glm(cfg) -> dict:
    """The mapping of the issue, written out: renames, and query_key_value split by rows [n*d, g*d, g*d]."""
    h, n, g, d, f, v = (cfg[k] for k in ("hidden_size", "num_attention_heads", "multi_query_group_num", "kv_channels",
                                          "ffn_hidden_size", "padded_vocab_size"))
    out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(cfg["num_layers"]):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (n * d, h), p + "self_attn.q_proj.bias": (n * d,),
                p + "self_attn.k_proj.weight": (g * d, h), p + "self_attn.k_proj.bias": (g * d,),
                p + "self_attn.v_proj.weight": (g * d, h), p + "self_attn.v_proj.bias": (g * d,),
                p + "self_attn.o_proj.weight": (h, n * d),
                p + "mlp.gate_up_proj.weight": (2 * f, h), p + "mlp.down_proj.weight": (h, f)}
    return out


def check_meta(cfg):
    """Names and shapes on the meta device: official list -> convert_state -> a GlmForCausalLM built from the config."""
    assert official_shapes(cfg) == expected_official(cfg)
    meta = {k: torch.empty(s, device="meta", dtype=torch.float16) for k, s in expected_official(cfg).items()}
    converted = {k: tuple(t.shape) for k, t in convert_state(meta, cfg).items()}
    assert converted == expected_glm(cfg)
    with torch.device("meta"):
        glm = GlmForCausalLM(convert_config(cfg))
    assert {k: tuple(t.shape) for k, t in glm.state_dict().items()} == converted
    return sum(torch.Size(s).numel() for s in expected_official(cfg).values())


def test_meta_names_and_shapes_small_config(tiny_official):
    cfg = json.loads((Path(tiny_official[0]) / "config.json").read_text())
    check_meta(cfg)
    check_meta({**cfg, "multi_query_attention": False, "multi_query_group_num": cfg["num_attention_heads"]})


@pytest.mark.skipif(not REAL_CONFIG.is_file(), reason="../shared/reference/chatglm2/config.json not available")
def test_meta_names_and_shapes_real_6b():
    cfg = json.loads(REAL_CONFIG.read_text())
    n = check_meta(cfg)
    assert n * 2 == 12_487_168_064  # the official index's total_size (fp16 bytes), inv_freq included
    c = convert_config(cfg)
    assert (c.vocab_size, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.intermediate_size) == \
        (65024, 28, 2, 128, 13696)
    assert (c.rms_norm_eps, c.pad_token_id, c.eos_token_id, c.tie_word_embeddings, c.max_position_embeddings) == \
        (1e-5, 0, 2, False, 32768)
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}


def test_safetensors_shards_convert_too(tmp_path, tiny_official, converted):
    from safetensors.torch import save_file
    cfg, sd, model = converted
    src = tmp_path / "st"
    src.mkdir()
    for f in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        (src / f).write_bytes((Path(tiny_official[0]) / f).read_bytes())
    names = list(sd)
    weight_map = {}
    for k, part in enumerate((names[:10], names[10:])):
        file = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: sd[n].contiguous() for n in part}, src / file)
        weight_map |= dict.fromkeys(part, file)
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    st_model = AutoModelForCausalLM.from_pretrained(convert_chatglm(src, tmp_path / "dst")).eval()
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        assert torch.equal(st_model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_chatglm_v1_and_other_layouts_fail_with_one_line(tmp_path, tiny_official):
    src = Path(tiny_official[0])
    cases = {
        "v1_config": ({"inner_hidden_size": 16384, "position_encoding_2d": True}, None, "ChatGLM-6B \\(v1\\)"),
        "v1_weights": ({}, "transformer.word_embeddings.weight", "ChatGLM-6B v1 layout"),
        "ptuning": ({"pre_seq_len": 128}, None, "pre_seq_len"),
        "int4": ({"quantization_bit": 4}, None, "quantization_bit"),
    }
    for name, (extra, weight, message) in cases.items():
        d = tmp_path / name
        d.mkdir()
        for f in src.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        (d / "config.json").write_text(json.dumps(json.loads((src / "config.json").read_text()) | extra))
        if weight:  # rename the embedding the v1 way
            shard = d / "pytorch_model-00001-of-00002.bin"
            part = torch.load(shard, weights_only=True)
            part[weight] = part.pop("transformer.embedding.word_embeddings.weight")
            torch.save(part, shard)
        with pytest.raises(SystemExit, match=message) as e:
            convert_chatglm(d, tmp_path / f"out_{name}")
        assert "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_resolve_model_dir_converts_once(tmp_path, tiny_official, capsys):
    src, dst = tiny_official
    first = resolve_model_dir(src, cache_dir=tmp_path)
    assert "converting" in capsys.readouterr().out and (Path(first) / "config.json").is_file()
    assert Path(first).parent == tmp_path and not list(tmp_path.glob("*.tmp*"))
    assert resolve_model_dir(src, cache_dir=tmp_path) == first and "using the converted" in capsys.readouterr().out
    assert resolve_model_dir(dst) == str(dst)  # already converted: itself


@pytest.mark.parametrize("argv,match", [
    (["--lora_r", "0"], "--lora_r"), (["--lora_alpha", "-1"], "--lora_alpha"), (["--lora_dropout", "1"], "--lora_dropout"),
    (["--lora_target_modules", "query_key_value"], "--lora_target_modules"), (["--template", "chatglm4"], "--template"),
    (["--tokenizer_vocab_size", "100"], "--tokenizer_vocab_size"),
    (["--model_name_or_path", "/nonexistent/chatglm2"], "--model_name_or_path"),
])
def test_bad_model_arguments_fail_in_one_line(argv, match, monkeypatch):
    import model
    from transformers import HfArgumentParser

    def boom(*a, **k):
        raise AssertionError("loaded something")
    for name in ("convert_chatglm", "load_model", "load_tokenizer", "build_tokenizer"):
        monkeypatch.setattr(model, name, boom)
    with pytest.raises(SystemExit, match=match) as e:
        HfArgumentParser(ModelArguments).parse_args_into_dataclasses(argv)
    assert "\n" not in str(e.value)


def test_glm4_tiktoken_tokenizer_fails_with_one_line(tmp_path, tiny_official):
    d = tmp_path / "glm4"
    d.mkdir()
    for f in Path(tiny_official[0]).iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")  # GLM-4's tokenizer.model: tiktoken ranks
    with pytest.raises(SystemExit, match="tiktoken") as e:
        convert_chatglm(d, tmp_path / "out")
    assert "\n" not in str(e.value)


def test_resolve_model_dir_when_another_process_converted_first(tmp_path, tiny_official, monkeypatch):
    import model
    src = tiny_official[0]
    real = model.convert_chatglm

    def convert_twice(s, out, **kw):  # another rank renames its finished copy into place while we convert
        final = Path(str(out).rsplit(".tmp", 1)[0])
        real(s, final)
        return real(s, out, **kw)
    monkeypatch.setattr(model, "convert_chatglm", convert_twice)
    out = resolve_model_dir(src, cache_dir=tmp_path)
    assert (Path(out) / "config.json").is_file() and [p.name for p in tmp_path.iterdir()] == [Path(out).name]
