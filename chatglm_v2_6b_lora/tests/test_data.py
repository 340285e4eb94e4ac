"""clean_data.py (every shape incl. ADGEN and ChatGLM history, rejects) and dataset.py (ChatGLM's format, label
masking on every turn, whole-answer truncation, left padding for generation, packing)."""
import json

import pytest
import torch

import clean_data
from dataset import (IGNORE_INDEX, SFTCollator, build_sft_dataset, left_pad, pack_examples,
                     tokenize_conversation)
from tokenization import build_tokenizer, conversation_segments, prompt_ids

U, A = (lambda c: {"role": "user", "content": c}), (lambda c: {"role": "assistant", "content": c})


def write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def clean(tmp_path, *files, extra=()):
    out = tmp_path / "out"
    summary = clean_data.main(["--input", *map(str, files), "--output_dir", str(out), "--validation_ratio", "0",
                               "--test_ratio", "0", *extra])
    kept = [json.loads(line) for line in open(out / "train.jsonl", encoding="utf-8")]
    rejects = [json.loads(line) for line in open(out / "rejects.jsonl", encoding="utf-8")]
    assert summary["kept"] + summary["rejected"] == summary["read"] == len(kept) + len(rejects)
    return summary, kept, rejects


def test_adgen_and_chatglm_history_shapes(tmp_path):
    """ADGEN (content/summary) and ChatGLM's prompt/response/history become messages; history turns come first."""
    adgen = write(tmp_path / "adgen.json", [
        {"content": "类型#上衣*材质#牛仔布*颜色#白色", "summary": "简约的白色牛仔上衣，百搭又舒适。"},
        {"content": "类型#裙*风格#简约", "summary": ""},                                            # line 2: empty
        {"content": "类型#裤"},                                                                   # line 3: no summary
    ])
    hist = write(tmp_path / "hist.jsonl", [
        {"prompt": "那5千米呢？", "response": "5000米", "history": [["3千米等于多少米？", "3000米"]]},
        {"prompt": "你好", "response": "你好！", "history": []},
        {"prompt": "x", "response": "y", "history": [["only question"]]},                       # line 3: bad pair
        {"instruction": "再说一遍", "input": "", "output": "好的", "history": [["你是谁", "我是助手"]]},
    ])
    summary, kept, rejects = clean(tmp_path, adgen, hist)
    assert summary["read"] == 7 and summary["kept"] == 4
    assert kept[0]["messages"] == [U("类型#上衣*材质#牛仔布*颜色#白色"), A("简约的白色牛仔上衣，百搭又舒适。")]
    assert kept[1]["messages"] == [U("3千米等于多少米？"), A("3000米"), U("那5千米呢？"), A("5000米")]
    assert kept[3]["messages"] == [U("你是谁"), A("我是助手"), U("再说一遍"), A("好的")]
    got = {(r["file"].split("/")[-1], r["line"]): (r["reason"], r["detail"]) for r in rejects}
    assert got[("adgen.json", 2)][0] == "empty_answer"
    assert got[("adgen.json", 3)] == ("format_error", "ADGEN record is missing field 'summary' "
                                                      "(expected 'content' and 'summary')")
    assert got[("hist.jsonl", 3)][0] == "format_error" and "history[0]" in got[("hist.jsonl", 3)][1]


def test_sharegpt_openai_and_alpaca_shapes(tmp_path):
    share = tmp_path / "share.json"
    records = [{"conversations": [{"from": "human", "value": "你是谁"}, {"from": "gpt", "value": "助手"}]},
               {"conversations": [{"from": "bot", "value": "?"}]}]
    share.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]")  # record 2: line 3
    oa = write(tmp_path / "oa.jsonl", [{"messages": [{"role": "system", "content": "你是助手"}, U("1+1"), A("2")]},
                                       {"instruction": "翻译", "input": "你好", "output": "Hello"}, "{broken"])
    summary, kept, rejects = clean(tmp_path, share, oa)
    assert summary["kept"] == 3 and summary["reasons"] == {"format_error": 2}
    assert kept[2]["messages"] == [U("翻译\n你好"), A("Hello")]
    assert {(r["file"].split("/")[-1], r["line"]) for r in rejects} == {("share.json", 3), ("oa.jsonl", 3)}


def test_wrong_shape_names_every_supported_shape(tmp_path):
    bad = write(tmp_path / "bad.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(SystemExit, match="--input: no record .* line 1.*'content'\\+'summary' \\(ADGEN\\)"):
        clean_data.main(["--input", str(bad), "--output_dir", str(tmp_path / "out")])


def test_generated_splits_share_no_question(clean_dir):
    qs = {split: {json.loads(line)["messages"][0]["content"] for line in open(clean_dir / f"{split}.jsonl")}
          for split in ("train", "validation", "test")}
    assert len(qs["test"]) > 50 and not (qs["train"] & qs["test"]) and not (qs["train"] & qs["validation"])


MULTI = [U("你好"), A("你好！"), U("3千米等于多少米？"), A("3000米")]


@pytest.mark.parametrize("template", ["chatglm2", "chatglm3"])
def test_labels_on_every_answer_and_its_terminator_only(sp_model, template):
    tok = build_tokenizer(sp_model, template)
    ex = tokenize_conversation(MULTI, tok, template, max_length=512)
    assert ex["input_ids"] == [i for ids, _ in conversation_segments(tok, MULTI, template) for i in ids]
    assert ex["input_ids"][:2] == tok.convert_tokens_to_ids(["[gMASK]", "sop"])
    trained = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ex["input_ids"], ex["labels"]))
    if template == "chatglm2":  # the official multi-turn prompt is one text: eos only after the last answer
        assert tok.decode(trained).replace(" ", "") == "你好！3000米</s>"  # decode shows the dummy prefix
    else:  # "\n" + answer, then the token that ends it (the next <|user|>, or eos at the end)
        assert tok.decode(trained).replace("\n", "").replace(" ", "") == "你好！<|user|>3000米</s>"
    # the generation prompt for turn 2 is exactly the training input before the second answer
    prompt = prompt_ids(tok, MULTI[:3], template)
    assert ex["input_ids"][:len(prompt)] == prompt and ex["labels"][len(prompt) - 1] == IGNORE_INDEX


@pytest.mark.parametrize("template", ["chatglm2", "chatglm3"])
def test_truncation_keeps_whole_answers(sp_model, template):
    tok = build_tokenizer(sp_model, template)
    long = [U("你好"), A("很好"), U("今天天气" * 20), A("很好")]
    first = tokenize_conversation(long[:2], tok, template, max_length=512)
    cut = tokenize_conversation(long, tok, template, max_length=len(first["input_ids"]) + 5)
    assert cut == first  # the second turn did not fit: dropped entirely, the first kept with its eos
    assert cut["input_ids"][-1] == tok.eos_token_id and cut["labels"][-1] == tok.eos_token_id
    assert tokenize_conversation(long, tok, template, max_length=3) is None
    ds, dropped = build_sft_dataset([{"messages": long}] * 3, tok, template, max_length=3)
    assert len(ds) == 0 and dropped == 3
    # a trailing question without an answer is ignored, not an error
    assert tokenize_conversation(long[:3], tok, template, max_length=512) == first


def test_left_padding_for_generation():
    out = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_left_padded_batch_generates_what_single_rows_do(glm_tokenizer):
    """GlmForCausalLM.generate on a left-padded batch = each prompt alone (positions follow the attention mask)."""
    from transformers import AutoModelForCausalLM, GlmConfig
    tok, template = glm_tokenizer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GlmConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, partial_rotary_factor=0.5, attention_bias=True, pad_token_id=0,
        eos_token_id=2, initializer_range=0.5)).eval()
    prompts = [prompt_ids(tok, [U(q)], template) for q in ("你好", "3千米等于多少米？今天天气很好")]
    assert len(prompts[0]) != len(prompts[1])
    kw = dict(max_new_tokens=6, do_sample=False, top_k=None, top_p=None, temperature=None, pad_token_id=0,
              eos_token_id=[2])
    with torch.no_grad():
        batch = model.generate(**left_pad(prompts, 0), **kw)
        for row, p in zip(batch, prompts):
            alone = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), **kw)
            n = alone.shape[1] - len(p)
            assert row[-6:][:n].tolist() == alone[0, len(p):].tolist()


def test_packing_fills_rows_and_never_attends_across_samples():
    batch = {"input_ids": [[1] * 5, [2] * 7, [3] * 4, [4] * 9], "labels": [[1] * 5, [2] * 7, [3] * 4, [4] * 9]}
    rows = pack_examples(batch, max_length=12)
    assert [len(r) for r in rows["input_ids"]] == [12, 4, 9]  # first fit: [5+7], [4], [9]
    assert rows["position_ids"][0] == list(range(5)) + list(range(7))
    out = SFTCollator(pad_token_id=0, packed=True)([dict(zip(rows, v)) for v in zip(*rows.values())])
    mask = out["attention_mask"][:, 0] == 0
    assert mask[0, 4, :5].all() and not mask[0, 5, :5].any() and mask[0, 11, 5:12].all()
    assert mask[0, 11].sum() == 7 and not mask[0].triu(1).any()  # causal inside a sample
    assert not mask[1, :, 4:].any()  # padding is never attended to


def test_a_conversation_the_template_cannot_write_is_one_line(glm_tokenizer):
    tok, template = glm_tokenizer
    with pytest.raises(SystemExit, match="--template: a conversation cannot be written in the chatglm2 format"):
        tokenize_conversation([U("你好"), A("你好！"), {"role": "system", "content": "x"}, U("再见"), A("再见")],
                              tok, template, max_length=512)
