"""clean_data.py on bad input: every rejected record named with its file, 1-based line and reason code;
kept + rejected = read, also when nothing is kept (then one line naming the likely cause)."""
import json

import pytest

import clean_data
from clean_data import people_daily_docs


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def long_docs(n):
    return list(dict.fromkeys(d for d in people_daily_docs(20 * n) if len(d) >= 20))[:n]


def test_bad_lines_rejected_with_line_numbers_and_counts_add_up(tmp_path):
    docs = long_docs(6)
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = [docs[0].encode(), "短".encode(),                     # 2: too_short
             docs[1].encode(), b"\xff\xfe not utf-8",              # 4: bad_encoding
             ("pipeline parallel training " * 3).encode(),         # 5: low_chinese_ratio
             docs[0].encode(), docs[2].encode()]                   # 6: duplicate of line 1
    (raw / "a.txt").write_bytes(b"\n".join(lines) + b"\n")
    good = [json.dumps({"text": d}, ensure_ascii=False) for d in docs[3:6]]
    (raw / "b.jsonl").write_text("\n".join([good[0], '{"text": "unterminated', good[1], "", '{"title": "x"}',
                                            good[2]]) + "\n", encoding="utf-8")  # 2 bad_json, 4 empty, 5 missing
    out = tmp_path / "clean"
    summary = clean_data.main(["--input", str(raw), "--output_dir", str(out), "--num_workers", "1",
                               "--validation_ratio", "0"])
    rejects = read_jsonl(out / "rejects.jsonl")
    got = sorted((r["file"].rsplit("/", 1)[1], r["line"], r["reason"]) for r in rejects)
    assert got == [("a.txt", 2, "too_short"), ("a.txt", 4, "bad_encoding"), ("a.txt", 5, "low_chinese_ratio"),
                   ("a.txt", 6, "duplicate"), ("b.jsonl", 2, "bad_json"), ("b.jsonl", 4, "empty_line"),
                   ("b.jsonl", 5, "missing_field")]
    assert all(set(r) == {"file", "line", "reason", "detail", "text"} and r["detail"] for r in rejects)
    assert (summary["read"], summary["kept"], summary["rejected"]) == (13, 6, 7)
    assert summary["kept"] + summary["rejected"] == summary["read"]
    assert summary["reasons"] == {"too_short": 1, "bad_encoding": 1, "low_chinese_ratio": 1, "duplicate": 1,
                                  "bad_json": 1, "empty_line": 1, "missing_field": 1}
    kept = [r["text"] for p in sorted(out.glob("train-*.jsonl")) for r in read_jsonl(p)]
    assert sorted(kept) == sorted(map(clean_data.normalize, docs))  # NFKC; the first of the duplicates stays
    assert json.loads((out / "summary.json").read_text())["read"] == 13


def test_nothing_kept_still_writes_rejects_and_names_the_field(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text("".join(json.dumps({"content": d}, ensure_ascii=False) + "\n"
                                         for d in long_docs(3)), encoding="utf-8")
    out = tmp_path / "clean"
    with pytest.raises(SystemExit) as e:
        clean_data.main(["--input", str(raw), "--output_dir", str(out), "--num_workers", "1"])
    message = str(e.value.code)
    assert "\n" not in message and "--text_field 'text'" in message
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["read"], summary["kept"], summary["rejected"]) == (3, 0, 3)
    assert [r["line"] for r in read_jsonl(out / "rejects.jsonl")] == [1, 2, 3]
    assert "fields found: content" in read_jsonl(out / "rejects.jsonl")[0]["detail"]


@pytest.mark.parametrize("argv, flag", [
    (["--validation_ratio", "1.5"], "--validation_ratio"),
    (["--encoding", "no-such-codec"], "--encoding"),
    (["--num_workers", "0"], "--num_workers"),
])
def test_bad_clean_arguments_stop_in_one_line(argv, flag, tmp_path, monkeypatch):
    monkeypatch.setattr(clean_data, "prepare_people_daily", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(SystemExit, match=flag) as e:
        clean_data.main(argv + ["--output_dir", str(tmp_path)])
    assert "\n" not in str(e.value.code)
