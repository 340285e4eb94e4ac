"""Data pipeline: rejects with file+line, exact dedup, exact token accounting, resumable preprocessing."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

import clean_data
import dataset
from clean_data import people_daily_docs, write_shards

HERE = Path(__file__).resolve().parents[1]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines()]


def summary_file(out):
    """summary.json as written, with kept + rejected = read and the rejects' fields checked."""
    summary = json.loads((Path(out) / "summary.json").read_text())
    assert summary["kept"] + summary["rejected"] == summary["read"], summary
    for r in read_jsonl(Path(out) / "rejects.jsonl"):
        assert set(r) == {"file", "line", "reason", "detail", "text"}, r
    return summary


def long_docs(n):
    docs = [d for d in people_daily_docs(20 * n) if len(d) >= 20]
    return list(dict.fromkeys(docs))[:n]


def test_corrupt_shards_reported_with_file_and_line_rest_processed(tmp_path):
    docs = people_daily_docs(60)
    long_docs = [d for d in docs if len(d) >= 20][:12]
    raw = tmp_path / "raw"
    raw.mkdir()
    good = [json.dumps({"content": d}, ensure_ascii=False).encode() for d in long_docs[:4]]
    # line 3: broken JSON, line 5: invalid UTF-8, line 6: field missing; the rest is fine
    (raw / "a.jsonl").write_bytes(b"\n".join([good[0], good[1], b'{"content": "unterminated', good[2],
                                              b'{"content": "\xff\xfe bad bytes"}', b'{"title": "no content"}',
                                              good[3]]) + b"\n")
    with gzip.open(raw / "b.jsonl.gz", "wb") as f:  # gzip shard; its first doc duplicates a.jsonl line 1
        f.write(b"\n".join([good[0]] + [json.dumps({"content": d}, ensure_ascii=False).encode()
                                        for d in long_docs[4:8]]) + b"\n")
    truncated = gzip.compress("".join(json.dumps({"content": d}, ensure_ascii=False) + "\n"
                                      for d in long_docs[8:12]).encode())
    (raw / "c.jsonl.gz").write_bytes(truncated[:-30])  # cut off: a broken gzip stream
    out = tmp_path / "clean"
    summary = clean_data.main(["--input", str(raw), "--output_dir", str(out), "--text_field", "content",
                               "--num_workers", "2", "--validation_ratio", "0"])

    rejects = read_jsonl(out / "rejects.jsonl")
    where = {(Path(r["file"]).name, r["line"], r["reason"]) for r in rejects}
    assert ("a.jsonl", 3, "bad_json") in where
    assert ("a.jsonl", 5, "bad_encoding") in where
    assert ("a.jsonl", 6, "missing_field") in where
    assert ("b.jsonl.gz", 1, "duplicate") in where  # first occurrence (a.jsonl:1) wins
    assert any(f == "c.jsonl.gz" and r == "bad_file" for f, _, r in where)
    kept = [d["text"] for p in sorted(out.glob("train-*.jsonl")) for d in read_jsonl(p)]
    expected = [clean_data.normalize(d) for d in long_docs[:8]]
    assert kept[:8] == expected  # every good record of a and b kept, in order, the duplicate once
    assert summary["kept"] + summary["rejected"] == summary["read"]
    assert summary["reasons"]["duplicate"] == 1 and summary["reasons"]["bad_json"] == 1
    assert summary_file(out) == summary


def test_filters_and_resume_skip_done_shards(tmp_path):
    raw = write_shards(tmp_path / "raw", people_daily_docs(400) + ["哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈", "abc def ghi jkl mno"], 2)
    out = tmp_path / "clean"
    args = ["--input", str(raw), "--output_dir", str(out), "--num_workers", "2"]
    first = clean_data.main(args)
    assert first["reasons"]["repetitive"] >= 1 and first["reasons"]["low_chinese_ratio"] >= 1
    markers = sorted((out / "stage").glob("*.json"))
    mtimes = [m.stat().st_mtime_ns for m in markers]
    train_before = [p.read_bytes() for p in sorted(out.glob("train-*.jsonl"))]
    second = clean_data.main(args)  # everything done: nothing is recomputed, same result
    assert [m.stat().st_mtime_ns for m in markers] == mtimes
    assert [p.read_bytes() for p in sorted(out.glob("train-*.jsonl"))] == train_before
    assert {k: second[k] for k in ("read", "kept", "reasons")} == {k: first[k] for k in ("read", "kept", "reasons")}


def test_split_is_by_document_and_exact_token_accounting(pipeline):
    tok = AutoTokenizer.from_pretrained(pipeline["tok"])
    meta, summary = pipeline["meta"], pipeline["summary"]
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(tok) == 1024
    for split in ("train", "validation"):
        texts = [d["text"] for p in sorted(pipeline["clean"].glob(f"{split}-*.jsonl")) for d in read_jsonl(p)]
        assert len(texts) == summary[f"{split}_docs"] == meta["splits"][split]["docs"]
        # reference: every kept document tokenised on its own + one EOS, in shard order
        expected = np.concatenate([tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts])
        stream = np.concatenate([np.fromfile(pipeline["tokens"] / s["file"], dtype=np.uint16)
                                 for s in meta["splits"][split]["shards"]])
        np.testing.assert_array_equal(stream, expected)
        ds = dataset.PackedDataset(pipeline["tokens"], split)
        blocks = np.concatenate([ds[i]["input_ids"].numpy() for i in range(len(ds))])
        remainder = len(expected) - len(blocks)
        assert 0 <= remainder < 32  # tokens in all blocks = docs + separators - the final remainder
        np.testing.assert_array_equal(blocks, expected[:len(blocks)])
    train = {d["text"] for p in pipeline["clean"].glob("train-*.jsonl") for d in read_jsonl(p)}
    valid = {d["text"] for p in pipeline["clean"].glob("validation-*.jsonl") for d in read_jsonl(p)}
    assert valid and not train & valid


def test_blocks_spanning_shards_and_any_block_size(pipeline):
    meta = pipeline["meta"]
    stream = np.concatenate([np.fromfile(pipeline["tokens"] / s["file"], dtype=np.uint16)
                             for s in meta["splits"]["train"]["shards"]])
    for block in (7, 50):
        ds = dataset.PackedDataset(pipeline["tokens"], "train", block_size=block)
        assert len(ds) == len(stream) // block
        for i in (0, len(ds) // 3, len(ds) - 1):  # random access, some blocks cross shard boundaries
            np.testing.assert_array_equal(ds[i]["input_ids"].numpy(), stream[i * block:(i + 1) * block])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_tokenization_resumes_after_kill(pipeline, tmp_path):
    raw = write_shards(tmp_path / "raw", people_daily_docs(2400), 24)
    cmd = [sys.executable, str(HERE / "dataset.py"), "--input", str(raw), "--tokenizer_name_or_path",
           str(pipeline["tok"]), "--num_workers", "1", "--batch_docs", "8"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--output_dir", str(killed)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list(killed.glob("train-*.json"))) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group we started: dataset.py and its pool worker
        proc.wait()
    done = sorted(killed.glob("train-*.json"))
    assert 3 <= len(done) < 24 and not (killed / "meta.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in done}
    (killed / "train-00023.bin").write_bytes(b"\x00" * 10)  # a stray partial file without a marker: redone
    subprocess.run(cmd + ["--output_dir", str(killed)], check=True, capture_output=True)
    assert all((killed / n).stat().st_mtime_ns == t for n, t in mtimes.items())  # finished shards not redone
    subprocess.run(cmd + ["--output_dir", str(tmp_path / "fresh"), "--num_workers", "2"], check=True, capture_output=True)
    for name in sorted(p.name for p in (tmp_path / "fresh").glob("train-*.bin")):
        assert (killed / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    assert not list(killed.glob("*.tmp"))
    resumed, fresh = (json.loads((d / "meta.json").read_text()) for d in (killed, tmp_path / "fresh"))
    assert resumed["splits"] == fresh["splits"]


def test_parquet_shards_read_with_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [d for d in people_daily_docs(80) if len(d) >= 20][:3]
    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"content": [docs[0], None, docs[1], docs[2]]}), raw / "a.parquet")
    pq.write_table(pa.table({"title": ["没有 content 列"]}), raw / "b.parquet")  # wrong column
    (raw / "c.parquet").write_bytes(b"PAR1 not really parquet")
    out = tmp_path / "clean"
    summary = clean_data.main(["--input", str(raw), "--output_dir", str(out), "--text_field", "content",
                               "--num_workers", "1", "--validation_ratio", "0"])
    where = {(Path(r["file"]).name, r["line"], r["reason"]) for r in read_jsonl(out / "rejects.jsonl")}
    assert ("a.parquet", 2, "missing_field") in where
    assert ("b.parquet", 1, "bad_file") in where and ("c.parquet", 1, "bad_file") in where
    kept = [d["text"] for p in sorted(out.glob("train-*.jsonl")) for d in read_jsonl(p)]
    assert kept == [clean_data.normalize(d) for d in docs]
    assert summary["kept"] == 3 and summary["kept"] + summary["rejected"] == summary["read"]
    detail = {Path(r["file"]).name: r["detail"] for r in read_jsonl(out / "rejects.jsonl") if r["reason"] == "bad_file"}
    assert "no column 'content'" in detail["b.parquet"] and "title" in detail["b.parquet"]  # the column found
    assert summary_file(out) == summary


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "gbk"])
def test_nothing_kept_writes_rejects_and_summary_and_names_the_cause(tmp_path, kind):
    raw = tmp_path / "raw"
    raw.mkdir()
    docs = long_docs(3)
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"title": docs}), raw / "a.parquet")
        cause = "--text_field"
    elif kind == "jsonl":
        (raw / "a.jsonl").write_text("".join(json.dumps({"content": d}, ensure_ascii=False) + "\n" for d in docs))
        cause = "--text_field"
    else:
        (raw / "a.txt").write_bytes("".join(d + "\n" for d in docs).encode("gbk"))
        cause = "--encoding gb18030"
    out = tmp_path / "clean"
    with pytest.raises(SystemExit, match="nothing kept") as e:
        clean_data.main(["--input", str(raw), "--output_dir", str(out), "--num_workers", "1"])
    assert cause in str(e.value) and "\n" not in str(e.value)
    summary = summary_file(out)
    assert summary["kept"] == 0 and summary["read"] == (1 if kind == "parquet" else 3)
    rejects = read_jsonl(out / "rejects.jsonl")
    assert rejects and all(r["detail"] for r in rejects)
    if kind != "gbk":
        assert any("title" in r["detail"] or "content" in r["detail"] for r in rejects)  # the field found
    else:  # the fix the message names works: the same run with --encoding keeps every document
        fixed = clean_data.main(["--input", str(raw), "--output_dir", str(out), "--num_workers", "1",
                                 "--encoding", "gb18030", "--validation_ratio", "0"])
        assert fixed["kept"] == 3 and fixed["args"]["encoding"] == "gb18030"


def test_rerun_with_corrected_arguments_redoes_the_stages(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    docs = long_docs(6)
    (raw / "a.jsonl").write_text("".join(json.dumps({"content": d}, ensure_ascii=False) + "\n" for d in docs))
    out = tmp_path / "clean"
    args = ["--input", str(raw), "--output_dir", str(out), "--num_workers", "1", "--validation_ratio", "0"]
    with pytest.raises(SystemExit, match="--text_field"):
        clean_data.main(args)  # default --text_field text: nothing kept
    fixed = clean_data.main(args + ["--text_field", "content"])
    assert fixed["kept"] == 6 and summary_file(out)["args"]["text_field"] == "content"
    # a changed filter is applied too, and summary.json records it
    strict = clean_data.main(args + ["--text_field", "content", "--min_chars", str(sorted(map(len, docs))[3])])
    assert strict["kept"] == 3 and strict["reasons"] == {"too_short": 3}
    assert summary_file(out)["args"]["min_chars"] == sorted(map(len, docs))[3]
    # and a changed input file
    (raw / "a.jsonl").write_text("".join(json.dumps({"content": d}, ensure_ascii=False) + "\n" for d in docs[:2]))
    assert clean_data.main(args + ["--text_field", "content"])["read"] == 2


def test_json_array_and_utf8_bom(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    docs = long_docs(14)
    records = [{"text": d} for d in docs[:10]]
    records[6] = {"title": "no text"}  # a record of the array without the field, reported at its own line
    text = json.dumps(records, ensure_ascii=False, indent=2)
    (raw / "a.json").write_text(text, "utf-8")
    bad_line = text.count("\n", 0, text.index('{\n    "title"')) + 1
    (raw / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n"
                                                             for d in docs[10:12]).encode())
    (raw / "c.txt").write_bytes(b"\xef\xbb\xbf" + "".join(d + "\n" for d in docs[12:14]).encode())
    out = tmp_path / "clean"
    summary = clean_data.main(["--input", str(raw), "--output_dir", str(out), "--num_workers", "1",
                               "--validation_ratio", "0"])
    assert summary["read"] == 10 + 2 + 2 and summary["kept"] == 13
    assert summary["reasons"] == {"missing_field": 1}
    where = {(Path(r["file"]).name, r["line"], r["reason"]) for r in read_jsonl(out / "rejects.jsonl")}
    assert where == {("a.json", bad_line, "missing_field")}
    kept = [d["text"] for p in sorted(out.glob("train-*.jsonl")) for d in read_jsonl(p)]
    expected = [clean_data.normalize(d) for i, d in enumerate(docs) if i != 6]
    assert kept == expected  # the BOM lost no JSONL record and stayed in no .txt document
    assert not any("\ufeff" in t for t in kept)
    assert summary_file(out) == summary
