"""clean_data.py (chinese_bloom's cleaner: shapes, errors, rejects) and dataset.py (Baichuan2-Chat's format via
tokenization.conversation_labels / prompt_ids, label masking on every answer, whole-answer truncation, left padding
for generation, packing)."""
import json

import pytest
import torch

import clean_data
from dataset import (IGNORE_INDEX, SFTCollator, build_sft_dataset, left_pad, pack_examples,
                     tokenize_conversation)
from tokenization import conversation_labels, prompt_ids

U, A = (lambda c: {"role": "user", "content": c}), (lambda c: {"role": "assistant", "content": c})


def write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def test_three_shapes_become_messages_and_rejects_are_counted(tmp_path):
    alpaca = write(tmp_path / "belle.jsonl", [
        {"instruction": "翻译成英文", "input": "你好", "output": "Hello"},
        {"instruction": "空回答", "input": "", "output": "   "},                                  # line 2
        {"instruction": "翻译成英文", "input": "你好", "output": "Hello"},                          # line 3: duplicate
        {"instruction": "零宽\u200b字符\r\n", "output": "好\u200b的"},
        "{not json",                                                                             # line 5
        {"instruction": "太长", "output": "长" * 500},                                            # line 6
    ])
    sharegpt = tmp_path / "share.json"
    sharegpt.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "你是谁"}, {"from": "gpt", "value": "助手"},
                           {"from": "human", "value": "再见"}, {"from": "gpt", "value": "再见！"}]},
        {"conversations": [{"from": "bot", "value": "?"}]},                                     # record 2: bad role
    ], ensure_ascii=False))
    openai_style = write(tmp_path / "oa.jsonl", [
        {"messages": [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "1+1"},
                      {"role": "assistant", "content": "2"}]},
    ])
    summary = clean_data.main(["--input", str(alpaca), str(sharegpt), str(openai_style),
                               "--output_dir", str(tmp_path / "out"), "--max_chars", "200",
                               "--validation_ratio", "0", "--test_ratio", "0"])
    assert summary["read"] == 9 and summary["kept"] == 4 and summary["rejected"] == 5
    assert summary["kept"] + summary["rejected"] == summary["read"]
    assert summary["reasons"] == {"empty_answer": 1, "duplicate": 1, "format_error": 2, "too_long": 1}
    rejects = [json.loads(line) for line in open(tmp_path / "out/rejects.jsonl")]
    where = {(r["file"].split("/")[-1], r["line"]): r["reason"] for r in rejects}
    # reason is a code (counted by summary.json), detail the human text: "code: detail" reads like before
    said = {(r["file"].split("/")[-1], r["line"]): f"{r['reason']}: {r['detail']}" for r in rejects}
    assert all(set(r) == {"file", "line", "reason", "detail", "text"} for r in rejects)
    assert set(where.values()) <= set(summary["reasons"])
    assert where[("belle.jsonl", 2)] == "empty_answer"
    assert where[("belle.jsonl", 3)] == "duplicate"
    assert said[("belle.jsonl", 5)].startswith("format_error: not valid JSON")
    assert where[("belle.jsonl", 5)] == "format_error"
    assert where[("belle.jsonl", 6)] == "too_long"
    # a JSON array's record is reported at the line where its object starts (json.dumps: one line here)
    assert "conversations[0].from" in said[("share.json", 1)] and "'bot'" in said[("share.json", 1)]
    kept = [json.loads(line) for line in open(tmp_path / "out/train.jsonl")]
    assert {"role": "user", "content": "零宽字符"} in kept[1]["messages"]  # normalised
    assert [m["role"] for m in kept[2]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert kept[3]["messages"][0] == {"role": "system", "content": "你是助手"}


@pytest.mark.parametrize("record, field", [
    ({"instruction": "x"}, "'output'"),
    ({"messages": [{"role": "user"}]}, "messages[0]"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
    ({"conversations": "hi"}, "'conversations'"),
    ({"text": "hello"}, "expected 'instruction'+'output'"),
    ({"instruction": "x", "output": 3}, "'output' must be a string"),
])
def test_wrong_shape_file_gets_one_clear_error(tmp_path, record, field):
    bad = write(tmp_path / "bad.jsonl", [record, record])
    with pytest.raises(SystemExit, match="--input") as e:
        clean_data.main(["--input", str(bad), "--output_dir", str(tmp_path / "out")])
    assert "line 1" in str(e.value) and field in str(e.value)


def test_missing_input_file(tmp_path):
    with pytest.raises(SystemExit, match="--input: .* does not exist"):
        clean_data.main(["--input", str(tmp_path / "nope.json"), "--output_dir", str(tmp_path)])


def test_generated_splits_share_no_question(clean_dir):
    qs = {}
    for split in ("train", "validation", "test"):
        qs[split] = {json.loads(line)["messages"][0]["content"] for line in open(clean_dir / f"{split}.jsonl")}
    assert len(qs["test"]) > 50
    assert not (qs["train"] & qs["test"]) and not (qs["train"] & qs["validation"])


MULTI = [U("你好"), A("你好！"), U("3千米等于多少米？"), A("3000米")]


def test_labels_are_the_official_fine_tune_labels(bc_tokenizer):
    """Baichuan2-Chat's format: user_token_id question assistant_token_id answer ... eos. The labels are the official
    fine-tune.py's: the answers and the final eos, eos at each user token (the answer before it ends there), -100 on
    the assistant token and the questions."""
    tok, template = bc_tokenizer
    user_id, assistant_id = template
    eos = tok.eos_token_id
    ex = tokenize_conversation(MULTI, tok, template, max_length=512)
    official_ids, official_labels = conversation_labels(tok, MULTI, *template)
    # position 0's label is never a target alone (labels shift); -100 so that packing cannot use it
    assert ex["input_ids"] == official_ids and ex["labels"] == [IGNORE_INDEX] + official_labels[1:]
    assert ex["input_ids"].count(user_id) == 2 and ex["input_ids"].count(assistant_id) == 2
    assert ex["input_ids"][-1] == eos and ex["labels"][-1] == eos
    assert all(lab in (IGNORE_INDEX, t) or (t == user_id and lab == eos) for t, lab in zip(ex["input_ids"], ex["labels"]))
    second_user = [i for i, t in enumerate(ex["input_ids"]) if t == user_id][1]
    assert ex["labels"][second_user] == eos  # the first answer ends with eos in the loss (its input is 195)
    trained = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == t]
    assert user_id not in trained and assistant_id not in trained
    text = tok.decode(trained, skip_special_tokens=True).replace(" ", "")
    assert "你好！" in text and "3000米" in text and "3千米" not in text
    # the generation prompt for turn 2 is exactly the training input before the second answer
    prompt = prompt_ids(tok, MULTI[:3], *template)
    assert prompt[-1] == assistant_id
    assert ex["input_ids"][:len(prompt)] == prompt and ex["labels"][len(prompt) - 1] == IGNORE_INDEX


def test_truncation_keeps_whole_answers(bc_tokenizer):
    tok, template = bc_tokenizer
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


def test_a_system_message_after_the_first_is_one_line(bc_tokenizer):
    tok, template = bc_tokenizer
    with pytest.raises(SystemExit, match="--train_file: a conversation cannot be written in Baichuan's chat format"):
        tokenize_conversation([U("你好"), A("你好！"), {"role": "system", "content": "x"}, U("再见"), A("再见")],
                              tok, template, max_length=512)


def test_left_padding_for_generation():
    out = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("kind", ["llama", "alibi"])
def test_left_padded_batch_generates_what_single_rows_do(bc_tokenizer, kind):
    """generate on a left-padded batch = each prompt alone, on both paths (RoPE positions / ALiBi distances follow
    the attention mask)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from model import BaichuanConfig
    tok, template = bc_tokenizer
    torch.manual_seed(0)
    dims = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                hidden_act="silu", pad_token_id=0, eos_token_id=2, initializer_range=0.5)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**dims) if kind == "llama" else BaichuanConfig(**dims)).eval()
    prompts = [prompt_ids(tok, [U(q)], *template) for q in ("你好", "3千米等于多少米？今天天气很好")]
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
