"""clean_data.py on malformed inputs (chinese_bloom's cases, same cleaner, a whole-file copy): kept + rejected = read,
always; dataset.py's length checks on Baichuan2-Chat's format."""
import gzip
import json

import pytest

import clean_data
from dataset import check_dropped, default_max_length

GOOD = [{"instruction": f"问题{i}", "output": f"回答{i}"} for i in range(4)]


def run(tmp_path, files, *extra):
    out = tmp_path / "out"
    try:
        clean_data.main(["--input", *map(str, files), "--output_dir", str(out), "--validation_ratio", "0",
                         "--test_ratio", "0", *extra])
        error = None
    except SystemExit as e:
        error = str(e)
    summary = json.loads((out / "summary.json").read_text())  # written also when nothing is kept
    assert summary["kept"] + summary["rejected"] == summary["read"]
    rejects = [json.loads(line) for line in open(out / "rejects.jsonl", encoding="utf-8")]
    assert len(rejects) == summary["rejected"] and sum(summary["reasons"].values()) == summary["rejected"]
    return summary, rejects, error


def jsonl(rows):
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


def test_gbk_file_names_encoding_and_reads_with_it(tmp_path):
    f = tmp_path / "gbk.jsonl"
    f.write_bytes(jsonl(GOOD).encode("gbk"))
    summary, rejects, error = run(tmp_path, [f])
    assert summary["read"] == 4 and summary["kept"] == 0 and summary["reasons"] == {"bad_encoding": 4}
    assert error.startswith("--encoding:") and str(f) in error and "gb18030" in error
    summary, _, error = run(tmp_path, [f], "--encoding", "gb18030")
    assert error is None and summary["kept"] == 4


def test_one_bad_byte_is_one_reject(tmp_path):
    f = tmp_path / "mixed.jsonl"
    lines = jsonl(GOOD).encode().split(b"\n")
    lines.insert(2, b'{"instruction": "\xff", "output": "x"}')
    f.write_bytes(b"\n".join(lines))
    summary, rejects, error = run(tmp_path, [f])
    assert error is None and summary["read"] == 5 and summary["kept"] == 4
    assert [(r["line"], r["reason"]) for r in rejects] == [(3, "bad_encoding")]


def test_line_separators_inside_strings_are_text(tmp_path):
    """issue 12.10: JSONL is split on \\n only (str.splitlines also splits on U+2028/U+2029/U+0085)."""
    f = tmp_path / "sep.jsonl"
    f.write_text(jsonl([{"instruction": "一\u2028二\u2029三\x85四", "output": "好"},
                        {"instruction": "再来", "output": "行"}]), encoding="utf-8")
    summary, rejects, error = run(tmp_path, [f])
    assert summary["read"] == 2 and summary["kept"] == 2 and error is None


def test_gz_and_parquet_are_read(tmp_path):
    gz = tmp_path / "data.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as g:
        g.write(jsonl(GOOD[:2]))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pqf = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(GOOD[2:] + [{"instruction": "问题0", "output": "回答0"}]), pqf)
    summary, rejects, error = run(tmp_path, [gz, pqf])
    assert error is None and summary["read"] == 5 and summary["kept"] == 4
    assert [(r["file"].endswith(".parquet"), r["line"], r["reason"]) for r in rejects] == [(True, 3, "duplicate")]
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(SystemExit, match="--input: .*broken.parquet cannot be read as parquet"):
        clean_data.main(["--input", str(bad), "--output_dir", str(tmp_path / "o2")])


def test_json_array_rejects_report_the_file_line(tmp_path):
    """issue 11.9: the line where the record's object starts, not the record's index."""
    f = tmp_path / "arr.json"
    f.write_text(json.dumps(GOOD + [GOOD[1], {"instruction": "x", "output": ""}], ensure_ascii=False, indent=2))
    text = f.read_text().splitlines()
    starts = [i + 1 for i, line in enumerate(text) if line.strip() == "{"]
    summary, rejects, error = run(tmp_path, [f])
    assert summary["read"] == 6 and summary["kept"] == 4
    assert [(r["line"], r["reason"]) for r in rejects] == [(starts[4], "duplicate"), (starts[5], "empty_answer")]
    assert text[starts[4]].strip().startswith('"instruction": "问题1"')


def test_blank_lines_format_errors_and_turn_order(tmp_path):
    """issue 12.15: blank lines counted, format_error keeps its text, user,user / assistant,assistant rejected."""
    u, a = (lambda c: {"role": "user", "content": c}), (lambda c: {"role": "assistant", "content": c})
    f = tmp_path / "x.jsonl"
    f.write_text(jsonl([GOOD[0], "", "{broken json", {"messages": [u("一"), u("二"), a("三")]},
                        {"messages": [u("一"), a("二"), a("三")]}, {"messages": [a("只有回答")]},
                        {"messages": [u("问"), a("答"), u(""), a("没有问题的回答")]}, GOOD[1]]), encoding="utf-8")
    summary, rejects, error = run(tmp_path, [f])
    assert error is None and summary["read"] == 8 and summary["kept"] == 2
    got = {r["line"]: r for r in rejects}
    assert got[2]["reason"] == "empty" and got[3]["reason"] == "format_error" and got[3]["text"] == "{broken json"
    assert got[3]["detail"].startswith("not valid JSON")
    assert got[4]["reason"] == got[5]["reason"] == "bad_turn_order" and "assistant" in got[5]["detail"]
    assert got[6]["reason"] == "does_not_start_with_user" and got[7]["reason"] == "empty_question"
    assert all(r["detail"] for r in rejects)


def test_nothing_kept_still_writes_summary(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(jsonl([{"text": "a"}, {"text": "b"}]))
    summary, rejects, error = run(tmp_path, [f])
    assert summary["kept"] == 0 and error.startswith("--input: no record") and "line 1" in error


def test_dropped_records_are_said_and_all_dropped_names_max_length(capsys):
    """issue 11.8: how many were dropped and why; loud above 10%; none left = one line naming --max_length."""
    check_dropped(1, 100, 128, "train")
    assert "dropped 1 of 100 records (1.0%)" in capsys.readouterr().out
    check_dropped(71, 100, 128, "train")
    assert "WARNING" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--max_length: all 5 train records were dropped"):
        check_dropped(5, 5, 16, "train")


def test_default_max_length_follows_user_data(bc_tokenizer):
    tok, template = bc_tokenizer
    long = [{"messages": [{"role": "user", "content": "问北" * 1500}, {"role": "assistant", "content": "答南" * 1500}]}] * 10
    assert default_max_length(long, tok, template) == 1024  # capped
    mid = [{"messages": [{"role": "user", "content": "问北" * 100}, {"role": "assistant", "content": "答南" * 100}]}] * 10
    assert 128 < default_max_length(mid, tok, template) < 1024
    assert default_max_length([{**r, "task": "add"} for r in mid], tok, template) == 128


def test_a_good_file_after_one_with_blank_lines_is_not_called_undecodable(tmp_path):
    """Blank lines were counted from the rejects of all files so far: b.jsonl (2 good records, 1 bad line) after
    a.jsonl (4 blank lines) was reported as 'none of its lines decodes' and the run stopped."""
    good = json.dumps({"instruction": "你好", "output": "你好！"}, ensure_ascii=False)
    (tmp_path / "a.jsonl").write_text("\n\n\n\n" + good + "\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"instruction": "早上好", "output": "早！"}, ensure_ascii=False) + "\n"
                                      + json.dumps({"instruction": "晚上好", "output": "晚安"}, ensure_ascii=False) + "\n"
                                      + "{not json\n", encoding="utf-8")
    summary = clean_data.main(["--input", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"),
                               "--output_dir", str(tmp_path / "out")])
    assert (summary["read"], summary["kept"], summary["reasons"]) == (8, 3, {"empty": 4, "format_error": 1})
