"""clean_data.py (shapes, errors, rejects) and dataset.py (template, label masking, truncation, packing)."""
import json

import pytest

import clean_data
from dataset import (IGNORE_INDEX, TEMPLATES, SFTCollator, build_prompt, build_sft_dataset, pack_examples,
                     render_segments, tokenize_conversation)
from train_tokenizer import train_tokenizer

BELLE = TEMPLATES["belle"]


@pytest.fixture(scope="module")
def tok():
    texts = ["Human: 你好，3千米等于多少米？\n\nAssistant: 3000米。今天天气很好。"] * 50
    return train_tokenizer(texts, vocab_size=400)


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


def test_labels_are_masked_exactly_on_prompt_tokens(tok):
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "3000米"},
                {"role": "user", "content": "今天天气"}, {"role": "assistant", "content": "很好"}]
    ex = tokenize_conversation(messages, tok, BELLE, max_length=512)
    expected_labels = []
    for text, is_answer in render_segments(messages, BELLE, tok.eos_token):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        expected_labels += ids if is_answer else [IGNORE_INDEX] * len(ids)
    assert ex["labels"] == expected_labels
    # the trained tokens decode to exactly both answers, each followed by EOS
    trained = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    assert tok.decode(trained) == "3000米</s>很好</s>"
    assert ex["input_ids"].count(tok.eos_token_id) == 2


def test_inference_prompt_is_the_training_prefix(tok):
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "3000米"}]
    for template in TEMPLATES.values():
        prompt = build_prompt(messages[:1], template, tok.eos_token)
        full = "".join(t for t, _ in render_segments(messages, template, tok.eos_token))
        assert full == prompt + "3000米" + tok.eos_token


def test_truncation_drops_whole_turns(tok):
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "很好"},
                {"role": "user", "content": "今天天气" * 20}, {"role": "assistant", "content": "很好"}]
    first = tokenize_conversation(messages[:2], tok, BELLE, max_length=512)
    cut = tokenize_conversation(messages, tok, BELLE, max_length=len(first["input_ids"]) + 5)
    assert cut == first  # second turn did not fit: dropped entirely, first kept with its EOS
    assert tokenize_conversation(messages, tok, BELLE, max_length=3) is None
    ds, dropped = build_sft_dataset([{"messages": messages}] * 3, tok, BELLE, max_length=3)
    assert len(ds) == 0 and dropped == 3


def test_packing_fills_rows_and_restarts_positions():
    batch = {"input_ids": [[1] * 5, [2] * 7, [3] * 4, [4] * 9], "labels": [[1] * 5, [2] * 7, [3] * 4, [4] * 9]}
    rows = pack_examples(batch, max_length=12)
    assert [len(r) for r in rows["input_ids"]] == [12, 4, 9]  # first fit: [5+7], [4], [9]
    assert rows["position_ids"][0] == list(range(5)) + list(range(7))
    feats = [dict(zip(rows, v)) for v in zip(*rows.values())]
    out = SFTCollator(pad_token_id=0, packed=True)(feats)
    mask = out["attention_mask"][:, 0] == 0
    assert mask[0, 4, :5].all() and not mask[0, 5, :5].any() and mask[0, 11, 5:12].all()  # never across samples
    assert mask[0, 11].sum() == 7 and not mask[0].triu(1).any()  # causal inside a sample
    assert not mask[1, :, 4:].any()  # padding is never attended to

