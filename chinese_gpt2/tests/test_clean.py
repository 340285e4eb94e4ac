"""clean_data.py: readers (text, POS-tagged, JSON array / JSONL, CSV), normalisation, filters, dedup, rejects."""
import json

import pytest

import clean_data


def run(tmp_path, *argv):
    out = tmp_path / "out"
    summary = clean_data.main([*argv, "--output_dir", str(out)])
    rows = lambda name: [json.loads(x) for x in (out / name).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    return summary, rows


def test_offline_default_people_daily(clean_dir):
    summary = json.loads((clean_dir / "summary.json").read_text())
    assert summary["read"] == 3000 and summary["kept"] + summary["rejected"] == summary["read"]
    assert summary["kept"] > 2500 and set(summary["reasons"]) <= {"too_short", "duplicate", "low_chinese_ratio"}
    train = [json.loads(x)["text"] for x in (clean_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert train[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片1张）"  # tags stripped, １ -> 1, （） kept
    assert not any("/" in t and t.count("/") > 3 for t in train)
    rejects = [json.loads(x) for x in (clean_dir / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rejects) == summary["rejected"]
    assert {"file", "line", "reason", "detail", "text"} == set(rejects[0]) and rejects[0]["file"].endswith("199801.txt")
    assert all(r["line"] >= 1 for r in rejects)


def test_pos_tags_article_ids_and_normalisation(tmp_path):
    raw = tmp_path / "tagged.txt"
    raw.write_text("19980101-01-001-001/m  迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w  一九九八年/t  新年/t  讲话/n\n"
                   "19980101-01-001-002/m  [香港/ns  特别/a  行政区/n]ns  成立/v  １/m  周年/n  。/w\n"
                   "19980101-01-002-001/m  北京/ns  冬天/t  很/d  冷/a  ，/w  但是/c  阳光/n  很/d  好/a  。/w\n", "utf-8")
    summary, rows = run(tmp_path, "--input", str(raw), "--validation_ratio", "0.5")
    docs = sorted(r["text"] for r in rows("train.jsonl") + rows("validation.jsonl"))
    # two articles (the id prefix tells them apart): lines of one article make one document
    assert docs == sorted(["迈向充满希望的新世纪——一九九八年新年讲话香港特别行政区成立1周年。", "北京冬天很冷，但是阳光很好。"])
    assert summary["read"] == 2 and summary["kept"] == 2


def test_counts_rejects_with_line_numbers_and_dedup(tmp_path):
    raw = tmp_path / "a.txt"
    raw.write_text("今天北京的天气非常好，适合出门散步。\n"  # 1 kept
                   "短句。\n"                              # 2 too_short
                   "\n"                                    # 3 empty
                   "今天北京的天气非常好，适合出门散步。\n"  # 4 duplicate
                   "This line is English only, no Chinese at all.\n"  # 5 low_chinese_ratio
                   "全角数字１２３和ＡＢＣ会变成半角，标点“，。”保持全角。\n", "utf-8")  # 6 kept
    summary, rows = run(tmp_path, "--input", str(raw))
    assert summary["read"] == 6 and summary["kept"] == 2 and summary["rejected"] == 4
    assert summary["reasons"] == {"too_short": 1, "empty": 1, "duplicate": 1, "low_chinese_ratio": 1}
    by_line = {r["line"]: r["reason"] for r in rows("rejects.jsonl")}
    assert by_line == {2: "too_short", 3: "empty", 4: "duplicate", 5: "low_chinese_ratio"}
    texts = {r["text"] for r in rows("train.jsonl") + rows("validation.jsonl")}
    assert "全角数字123和ABC会变成半角，标点“，。”保持全角。" in texts


def test_paragraph_mode(tmp_path):
    raw = tmp_path / "p.txt"
    raw.write_text("第一段的第一行，内容很长。\n第一段的第二行，内容也很长。\n\n第二段只有一行，但是也够长。\n", "utf-8")
    summary, rows = run(tmp_path, "--input", str(raw), "--doc_split", "paragraph", "--validation_ratio", "0.5")
    docs = sorted(r["text"] for r in rows("train.jsonl") + rows("validation.jsonl"))
    assert summary["read"] == 2 and docs == sorted(["第一段的第一行，内容很长。 第一段的第二行，内容也很长。",
                                                     "第二段只有一行，但是也够长。"])


def test_one_json_reader_for_arrays_and_jsonl_and_csv(tmp_path):
    records = [{"content": f"第{i}篇文章：人民日报的一段新闻报道。"} for i in range(5)] + [{"title": "没有正文"}, {"content": 3}]
    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.json").write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]",
                                        "utf-8")
    (tmp_path / "in/b.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n{bad\n",
                                         "utf-8")
    (tmp_path / "in/c.csv").write_text("id,content\n1,\"一篇CSV里的文章，\n跨了两行。\"\n2,另一篇CSV里的文章。\n", "utf-8")
    summary, rows = run(tmp_path, "--input", str(tmp_path / "in"), "--text_field", "content")
    # a.json: 5 kept + 2 bad; b.jsonl: 5 duplicates + 2 bad + 1 invalid JSON; c.csv: 2 kept
    assert summary["read"] == 7 + 8 + 2 and summary["kept"] == 7
    rejects = rows("rejects.jsonl")
    a = {r["line"]: r["reason"] for r in rejects if r["file"].endswith("a.json")}
    assert a == {7: "missing_field", 8: "format_error"}  # JSON array: the line where the object starts
    b = {r["line"]: r["reason"] for r in rejects if r["file"].endswith("b.jsonl")}
    assert b == {1: "duplicate", 2: "duplicate", 3: "duplicate", 4: "duplicate", 5: "duplicate", 6: "missing_field",
                 7: "format_error", 8: "format_error"}
    assert "fields found: title" in next(r["detail"] for r in rejects if r["reason"] == "missing_field")


def test_encodings(tmp_path):
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("这是一个用GBK编码保存的中文文件。\n第二行也是中文内容的句子。\n".encode("gbk"))
    with pytest.raises(SystemExit, match="--input: nothing kept .* --encoding"):
        run(tmp_path, "--input", str(gbk))
    rejects = [json.loads(x) for x in (tmp_path / "out/rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [(1, "bad_encoding"), (2, "bad_encoding")]
    summary, _ = run(tmp_path, "--input", str(gbk), "--encoding", "gb18030")
    assert summary["kept"] == 2
    mixed = tmp_path / "mixed.txt"  # one bad line costs one line
    mixed.write_bytes("第一行是正常的UTF-8中文句子。\n".encode() + "第二行是GBK编码的句子。\n".encode("gbk")
                      + "第三行又是正常的中文句子。\n".encode())
    summary, rows = run(tmp_path, "--input", str(mixed))
    assert summary["kept"] == 2 and [(r["line"], r["reason"]) for r in rows("rejects.jsonl")] == [(2, "bad_encoding")]


def test_split_is_by_document_and_stable(tmp_path):
    raw = tmp_path / "many.txt"
    raw.write_text("".join(f"第{i}条新闻：今天的会议讨论了经济发展。\n" for i in range(400)), "utf-8")
    _, rows = run(tmp_path, "--input", str(raw), "--validation_ratio", "0.1")
    train, valid = {r["text"] for r in rows("train.jsonl")}, {r["text"] for r in rows("validation.jsonl")}
    assert not train & valid and len(train) + len(valid) == 400 and 15 < len(valid) < 70
    raw.write_text("".join(f"第{i}条新闻：今天的会议讨论了经济发展。\n" for i in reversed(range(400))), "utf-8")
    _, rows = run(tmp_path, "--input", str(raw), "--validation_ratio", "0.1")
    assert {r["text"] for r in rows("validation.jsonl")} == valid  # the order of the input does not matter


def test_generated_chats_need_the_history(chat_dir):
    summary = json.loads((chat_dir / "summary.json").read_text())
    assert summary["read"] == summary["kept"] == 1500
    rows = [json.loads(x) for x in (chat_dir / "validation.jsonl").read_text(encoding="utf-8").splitlines()]
    train = {json.dumps(json.loads(x)["messages"], ensure_ascii=False)
             for x in (chat_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()}
    assert not any(json.dumps(r["messages"], ensure_ascii=False) in train for r in rows)  # held out
    multi = [r for r in rows if r["kind"] in ("name", "weekday")]
    assert len(multi) > 0.8 * len(rows)
    for r in multi:
        msgs = r["messages"]
        assert len(msgs) >= 4
        last_q, answer = msgs[-2]["content"], msgs[-1]["content"]
        assert last_q in ("我叫什么名字？", "明天是星期几？", "昨天是星期几？")  # the question alone does not tell
    name = next(r for r in rows if r["kind"] == "name")["messages"]
    assert name[-1]["content"][2:-1] in name[0]["content"]  # the answer's name was said in the first turn


def test_chat_input_is_validated(tmp_path):
    good = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}
    bad_order = {"messages": [{"role": "assistant", "content": "你好"}]}
    no_answer = {"messages": [{"role": "user", "content": "你好"}]}
    raw = tmp_path / "chats.jsonl"
    raw.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (good, bad_order, no_answer, good)), "utf-8")
    summary, rows = run(tmp_path, "--task", "chat", "--input", str(raw), "--validation_ratio", "0.5")
    assert summary["kept"] == 1 and summary["reasons"] == {"bad_turn_order": 1, "no_answer": 1, "duplicate": 1}
    assert [r["line"] for r in rows("rejects.jsonl")] == [2, 3, 4]
