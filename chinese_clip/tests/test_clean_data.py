"""clean_data.py: every odd image in the input is rejected with its reason or converted, with exact counts;
kept + rejected = read; text normalised; exact duplicate pairs dropped; the loader's conversions are right."""
import json

import numpy as np
import pytest
from PIL import Image

import clean_data
from clean_data import BadImage, load_rgb, normalize_text


def test_odd_images_are_rejected_or_converted_with_exact_counts(shapes, clean):
    out, summary = clean
    rows = [json.loads(line) for s in ("train", "validation", "test", "test_unseen")
            for line in (shapes[0] / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert summary["read"] == len(rows) and summary["kept"] + summary["rejected"] == summary["read"]
    assert summary["reasons"] == {"zero_byte": 1, "truncated": 1, "unreadable": 1, "decompression_bomb": 1,
                                  "too_small": 1, "duplicate": 1}
    modes = summary["images"]["modes"]
    assert {m: modes[m] for m in ("CMYK", "P", "RGBA", "L")} == {"CMYK": 1, "P": 1, "RGBA": 1, "L": 1}
    assert summary["images"]["converted_to_rgb"] == 4 and summary["images"]["exif_transposed"] == 1
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rejects) == summary["rejected"]
    expected = {r["image_id"]: r["attributes"]["expect"] for r in rows if "expect" in r["attributes"]}
    for r in rejects:
        assert set(r) == {"file", "line", "reason", "detail", "text"} and r["detail"]
        # the reported line holds the rejected record
        line = (shapes[0] / "train.jsonl").read_text(encoding="utf-8").splitlines()[r["line"] - 1]
        assert json.loads(line)["text"] == r["text"]
    assert sorted(r["reason"] for r in rejects) == sorted(v for v in expected.values() if v != "kept")
    assert summary["splits"]["test_unseen"]["images"] == 96 and summary["leaked_images"] == 0


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_load_rgb_converts_every_mode_to_rgb_on_white(tmp_path):
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red -> white
    assert load_rgb(_save(rgba, tmp_path / "a.png")).getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (20, 20), (0, 255))
    assert load_rgb(_save(la, tmp_path / "la.png")).getpixel((0, 0)) == (0, 0, 0)
    p = Image.new("RGB", (20, 20), (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert load_rgb(_save(p, tmp_path / "p.png")).getpixel((3, 3)) == (0, 0, 255)
    cmyk = load_rgb(_save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), tmp_path / "c.jpg"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((5, 5))[0] > 200 and cmyk.getpixel((5, 5))[2] < 60  # red
    gray16 = Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16))
    assert load_rgb(_save(gray16, tmp_path / "g16.png")).getpixel((0, 0)) == (255, 255, 255)
    info = {}
    assert load_rgb(_save(Image.new("L", (20, 20), 7), tmp_path / "l.png"), info=info).getpixel((0, 0)) == (7, 7, 7)
    assert info["mode"] == "L" and info["exif_transposed"] is False


def test_load_rgb_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left of a wide image
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    stored = img.transpose(Image.Transpose.ROTATE_90)  # 20 x 40, red band at the bottom
    info = {}
    up = load_rgb(_save(stored, tmp_path / "r.jpg", exif=exif.tobytes(), quality=95), info=info)
    assert up.size == (40, 20) and info["exif_transposed"] is True
    assert up.getpixel((2, 10))[0] > 200 and up.getpixel((35, 10))[0] < 60


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(b""), "zero_byte"),
    (lambda p: p.write_text("hello"), "unreadable"),
    (lambda p: None, "missing"),
    (lambda p: Image.new("RGB", (8, 30)).save(p, "PNG"), "too_small"),
    (lambda p: Image.new("RGB", (300, 300)).save(p, "PNG"), "decompression_bomb"),  # over max_pixels=50_000
])
def test_load_rgb_reasons(tmp_path, make, reason):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(BadImage) as e:
        load_rgb(path, max_pixels=50_000, min_side=16)
    assert e.value.reason == reason and e.value.detail


def test_normalize_text():
    assert normalize_text("  蓝色\u200b背景，\t两个\x00红色  圆形 ") == "蓝色背景, 两个 红色 圆形"
    assert normalize_text("\u200b\ufeff \n") == ""


def test_csv_input_random_split_by_image_and_bad_rows(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(40):
        Image.new("RGB", (24, 24), (i * 6, 0, 0)).save(root / f"{i}.png")
    lines = ["image_path,text"] + [f"{i}.png,第{i}张红色图片" for i in range(40)] + \
        [f"{i}.png,另一种说法{i}" for i in range(40)] + ["3.png,", "nope.png,不存在的图", "3.png,第3张红色图片"]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = clean_data.main(["--input", str(tmp_path / "pairs.csv"), "--image_root", str(root), "--output_dir",
                         str(tmp_path / "out"), "--validation_ratio", "0.2", "--test_ratio", "0.2"])
    assert (s["read"], s["kept"]) == (83, 80)
    assert s["reasons"] == {"empty_text": 1, "missing": 1, "duplicate": 1}
    rejects = [json.loads(x) for x in (tmp_path / "out/rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["reason"]: r["line"] for r in rejects} == {"empty_text": 82, "missing": 83, "duplicate": 84}
    owners = {}
    for split in ("train", "validation", "test"):
        for line in (tmp_path / f"out/{split}.jsonl").read_text(encoding="utf-8").splitlines():
            owners.setdefault(json.loads(line)["image_path"], set()).add(split)
    assert len(owners) == 40 and all(len(v) == 1 for v in owners.values())  # both captions in the same split
    assert s["leaked_images"] == 0


def test_nothing_kept_still_writes_rejects_and_summary(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"img": "a.png", "caption": "x"}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match="--input: no pair kept of 1 read; check --image_column"):
        clean_data.main(["--input", str(tmp_path / "p.jsonl"), "--output_dir", str(tmp_path / "o")])
    assert json.loads((tmp_path / "o/summary.json").read_text())["rejected"] == 1


def test_several_processes_give_the_same_result(shapes, clean, tmp_path):
    files = [str(shapes[0] / f"{s}.jsonl") for s in ("train", "validation", "test", "test_unseen")]
    s = clean_data.main(["--input", *files, "--output_dir", str(tmp_path), "--num_proc", "2"])
    assert {k: s[k] for k in ("read", "kept", "reasons", "images", "splits")} == \
        {k: clean[1][k] for k in ("read", "kept", "reasons", "images", "splits")}


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


def test_skimage_photos_without_scikit_image_fail_with_the_fix(tmp_path, monkeypatch):
    import make_data
    monkeypatch.setattr(make_data, "skimage_data_dir", lambda: None)
    with pytest.raises(SystemExit, match=r"^--skimage_photos: .*Fix: pip install scikit-image"):
        make_data.main(["--output_dir", str(tmp_path), "--skimage_photos"])
