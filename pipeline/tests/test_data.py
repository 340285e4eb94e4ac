"""The token files train.py reads: model_clm's memmap format written by dataset.py and read back exactly by
PackedDataset (every kept document once, in order, each followed by EOS), blocks crossing shard boundaries."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import dataset
from clean_data import iter_records


def clean_texts(clean_dir, split):
    return [text for path in sorted(clean_dir.glob(f"{split}-*.jsonl"))
            for _, text, err, _ in iter_records(path) if err is None]


def test_token_stream_round_trips_the_clean_documents(tiny_data):
    tok = AutoTokenizer.from_pretrained(tiny_data["tokenizer"])
    meta = json.loads((tiny_data["tokens"] / "meta.json").read_text())
    assert meta["format"] == dataset.FORMAT and meta["dtype"] == "uint16" and meta["eos_token_id"] == tok.eos_token_id
    for split in ("train", "validation"):
        texts = clean_texts(tiny_data["clean"], split)
        expected = [i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
        ds = dataset.PackedDataset(tiny_data["tokens"], split, block_size=32)
        stream = ds.tokens(0, int(ds.starts[-1]))
        assert stream.tolist() == expected  # nothing lost, nothing reordered, one EOS per document
        assert meta["splits"][split]["docs"] == len(texts) and meta["splits"][split]["tokens"] == len(expected)
        assert int((stream == tok.eos_token_id).sum()) == len(texts)
        # blocks: consecutive slices of the stream; only the final remainder (< block) is dropped
        assert len(ds) == len(expected) // 32
        blocks = torch.stack([ds[i]["input_ids"] for i in range(len(ds))])
        assert blocks.flatten().tolist() == expected[:len(ds) * 32]
        assert torch.equal(ds[3]["labels"], ds[3]["input_ids"])  # the model shifts the labels itself
    assert meta["splits"]["train"]["docs"] + meta["splits"]["validation"]["docs"] == tiny_data["summary"]["kept"]


def test_blocks_cross_shard_boundaries_and_any_block_size(tiny_data):
    ds = dataset.PackedDataset(tiny_data["tokens"], "train", block_size=48)
    assert len(ds.files) == 4  # the 4 clean shards -> 4 .bin files, one stream
    raw = np.concatenate([np.fromfile(tiny_data["tokens"] / f, dtype=np.uint16) for f in ds.files])
    crossing = [i for i in range(len(ds)) if any(i * 48 < s < (i + 1) * 48 for s in ds.starts[1:-1])]
    assert crossing, "no block spans two shards: the test data is too small"
    for i in crossing + [0, len(ds) - 1]:
        assert ds[i]["input_ids"].tolist() == raw[i * 48:(i + 1) * 48].tolist()
    with pytest.raises(IndexError):
        ds[len(ds)]
    capped = dataset.PackedDataset(tiny_data["tokens"], "train", block_size=48, max_blocks=5)
    assert len(capped) == 5 and torch.equal(capped[4]["input_ids"], ds[4]["input_ids"])


def test_data_arguments_take_meta_block_size_and_stop_on_a_missing_dir(tiny_data, tmp_path):
    args = dataset.DataArguments(data_dir=str(tiny_data["tokens"]))
    assert args.block_size == 32  # late default from meta.json
    train, validation = args.datasets()
    assert len(train) > 100 and len(validation) > 0
    with pytest.raises(SystemExit, match="--data_dir"):
        dataset.DataArguments(data_dir=str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="--block_size"):
        dataset.DataArguments(data_dir=str(tiny_data["tokens"]), block_size=0)


def test_sampler_order_depends_only_on_seed_and_epoch(seed):
    a, b = dataset.EpochShuffleSampler(100, seed), dataset.EpochShuffleSampler(100, seed)
    assert list(a) == list(b) and sorted(a) == list(range(100))
    b.set_epoch(1)
    assert list(a) != list(b)


def test_rerun_skips_finished_shards_and_rebuilds_a_deleted_one(tiny_data, tmp_path):
    """A killed dataset.py leaves only *.tmp files; a rerun keeps the finished shards and redoes the rest."""
    import shutil

    out = tmp_path / "tokens"
    shutil.copytree(tiny_data["tokens"], out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    (out / "train-00002.bin").unlink()
    (out / "train-00003.bin.tmp").write_bytes(b"half")  # a killed worker's leftover is never read
    dataset.main(["--input", str(tiny_data["clean"]), "--output_dir", str(out), "--tokenizer_name_or_path",
                  str(tiny_data["tokenizer"]), "--block_size", "32", "--num_workers", "1"])
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    assert after.keys() == before.keys()
    assert [n for n in after if after[n] != before[n]] == ["train-00002.bin"]
    assert (out / "train-00002.bin").read_bytes() == (tiny_data["tokens"] / "train-00002.bin").read_bytes()
