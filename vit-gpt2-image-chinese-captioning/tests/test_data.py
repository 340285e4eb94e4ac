"""Cleaning (odd images counted exactly), lazy loading, -100 label padding."""
import json

import pytest
import torch

import dataset
from dataset import CaptionCollator, DataArguments, load_splits, tokenize_captions, with_transform
from model import ModelArguments, build_model, load_image_processor, load_tokenizer


def test_odd_images_are_rejected_or_converted_with_exact_counts(shapes):
    raw, clean, summary = shapes
    # make_data --odd_images adds one file of each odd kind + a duplicate row to train
    assert summary["reasons"] == {"zero_byte": 1, "truncated": 1, "unreadable": 1, "decompression_bomb": 1,
                                  "too_small": 1, "duplicate": 1}
    assert summary["kept"] + summary["rejected"] == summary["read"] and summary["rejected"] == 6
    modes = summary["images"]["modes"]
    assert all(modes[m] == 1 for m in ("CMYK", "P", "RGBA", "L")) and summary["images"]["converted_to_rgb"] == 4
    assert summary["images"]["exif_transposed"] == 1
    rejects = [json.loads(line) for line in (clean / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rejects) == 6 and all(set(r) == {"file", "line", "reason", "detail", "text"} for r in rejects)
    assert all(isinstance(r["line"], int) and r["line"] > 0 for r in rejects)
    # the converted ones load as upright RGB
    from clean_data import load_rgb
    rows = [json.loads(line) for line in (clean / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    odd = {r["image_path"].rsplit("/", 1)[1]: r["image_path"] for r in rows if "/odd/" in r["image_path"]}
    assert set(odd) == {"cmyk.jpg", "palette.png", "rgba.png", "gray.png", "exif_rotated.jpg"}
    for path in odd.values():
        img = load_rgb(path)
        assert img.mode == "RGB" and img.size == (32, 32)
    # held-out combinations: the colour-shape pairs of test_unseen never occur in train
    seen = {(r["attributes"]["colour"], r["attributes"]["shape"]) for r in rows if "colour" in r["attributes"]}
    unseen_rows = [json.loads(line) for line in (clean / "test_unseen.jsonl").read_text(encoding="utf-8").splitlines()]
    assert unseen_rows and not seen & {(r["attributes"]["colour"], r["attributes"]["shape"]) for r in unseen_rows}


def test_images_load_lazily_in_the_transform(shapes, monkeypatch):
    calls = []
    real = dataset.load_rgb
    monkeypatch.setattr(dataset, "load_rgb", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    raw = load_splits(DataArguments(data_dir=str(shapes[1])))
    margs = ModelArguments(image_size=32, patch_size=8)
    tok = load_tokenizer(margs, [r[0] for r in raw["train"]["references"]])
    ds = with_transform(raw["train"], load_image_processor(margs), tok, margs.max_target_length)
    assert calls == []  # building the dataset opened no image
    item = ds[3]
    assert calls == [raw["train"][3]["image_path"]]
    assert tuple(item["pixel_values"].shape) == (3, 32, 32)
    # evaluation splits: one row per image, all its references
    assert set(raw) == {"train", "validation", "test", "test_unseen"}
    assert all(len(r) == 6 for r in raw["test"]["references"])


def test_labels_are_minus_100_on_padding_and_padding_does_not_change_the_loss():
    """The original zero_nlp captioner computed the loss on padding (labels never set to -100)."""
    from train_tokenizer import train_tokenizer
    tok = train_tokenizer(["蓝色背景上有两个红色的圆形", "一个黄色正方形"])
    ids = tokenize_captions(["蓝色背景上有两个红色的圆形", "一个黄色正方形"], tok, 32)
    assert ids[0][-1] == ids[1][-1] == tok.sep_token_id  # eos ends every caption
    assert tok.cls_token_id not in ids[0]  # [CLS] is the decoder start, prepended by the model's shift
    batch = CaptionCollator()([{"pixel_values": torch.zeros(3, 32, 32), "labels": x} for x in ids])
    labels = batch["labels"]
    assert labels.shape == (2, len(ids[0]))
    assert (labels[1, len(ids[1]):] == -100).all() and (labels[1, :len(ids[1])] == torch.tensor(ids[1])).all()
    assert (labels != tok.pad_token_id).all()  # no pad id left where the loss would count it
    torch.manual_seed(0)
    model = build_model(ModelArguments(image_size=32, patch_size=8, encoder_hidden_size=32, decoder_hidden_size=32,
                                       encoder_layers=1, decoder_layers=1, num_attention_heads=2), tok).eval()
    pixels = torch.randn(1, 3, 32, 32)
    short = torch.tensor([ids[1]])
    padded = torch.cat([short, torch.full((1, 6), -100)], dim=1)
    with torch.no_grad():
        a, b = model(pixel_values=pixels, labels=short).loss, model(pixel_values=pixels, labels=padded).loss
        wrong = model(pixel_values=pixels, labels=padded.masked_fill(padded == -100, tok.pad_token_id)).loss
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, wrong, atol=1e-3)


# Copied from chinese_clip/tests/test_clean_data.py:test_scikit_image_real_photos_are_cleaned_with_exact_counts
def test_scikit_image_real_photos_are_cleaned_with_exact_counts(tmp_path):
    """make_data --skimage_photos: 29 real files (grayscale, RGBA, a 2-page TIFF, an animated GIF, a TIFF Pillow
    cannot read), two captions each. Every row ends as its attributes["expect"] says, with its line number."""
    import clean_data
    import make_data
    make_data.main(["--output_dir", str(tmp_path / "raw"), "--n_train", "1", "--n_validation", "1", "--n_test", "1",
                    "--n_test_unseen", "0", "--image_size", "32", "--skimage_photos"])
    rows = [json.loads(line) for line in (tmp_path / "raw/photos.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 * len(make_data.PHOTOS) == 58
    summary = clean_data.main(["--input", str(tmp_path / "raw/photos.jsonl"), "--output_dir", str(tmp_path / "clean"),
                               "--num_proc", "1"])
    assert (summary["read"], summary["kept"], summary["rejected"]) == (58, 52, 6)
    assert summary["reasons"] == {"too_small": 4, "unreadable": 2}
    assert summary["images"]["modes"] == {"RGB": 12, "L": 12, "RGBA": 2} and summary["images"]["converted_to_rgb"] == 14
    rejects = [json.loads(line) for line in (tmp_path / "clean/rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["line"]: r["reason"] for r in rejects} == {
        i: row["attributes"]["expect"] for i, row in enumerate(rows, 1) if row["attributes"]["expect"] != "kept"}
    kept = [json.loads(line) for split in summary["splits"]
            for line in (tmp_path / f"clean/{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(kept) == 52 and all(r["attributes"]["expect"] == "kept" for r in kept)
    horse = clean_data.load_rgb(tmp_path / "raw/images/photos/horse.png")  # RGBA: a black horse on transparent
    assert horse.mode == "RGB" and horse.getpixel((0, 0)) == (255, 255, 255)  # laid on white, not black
    camera = clean_data.load_rgb(tmp_path / "raw/images/photos/camera.png")  # grayscale
    r, g, b = camera.getpixel((100, 100))
    assert camera.mode == "RGB" and r == g == b


# Copied from chinese_clip/tests/test_clean_data.py:test_skimage_photos_without_scikit_image_fail_with_the_fix
def test_skimage_photos_without_scikit_image_fail_with_the_fix(tmp_path, monkeypatch):
    import make_data
    monkeypatch.setattr(make_data, "skimage_data_dir", lambda: None)
    with pytest.raises(SystemExit, match=r"^--skimage_photos: .*Fix: pip install scikit-image"):
        make_data.main(["--output_dir", str(tmp_path), "--skimage_photos"])
