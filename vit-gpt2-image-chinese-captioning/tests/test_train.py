"""One short training run (conftest `trained`): it learns captions, not one caption for everything."""
import json

import pytest

from model import caption_images, load_trained


# Measured with the `trained` fixture (OMP_NUM_THREADS=1, ~20-35 s of training), seeds 42 / 7:
#   Intel Xeon, 2 cores:
#     test        BLEU-4 68.1 vs constant 46.8 / 67.0 vs 41.6;  CIDEr 2.96 vs 1.14 / 2.45 vs 1.27
#     test_unseen BLEU-4 65.1 vs constant 44.1 / 63.4 vs 41.5;  CIDEr 1.93 vs 0.68 / 1.60 vs 0.76
#     distinct generated / true: test 55 / 77, 51 / 77; test_unseen 54 / 70, 38 / 69 (untrained and constant: 1-2)
#     colour accuracy 0.925 vs constant 0.125 / 0.725 vs 0.275
#   AMD EPYC (Zen 4), 2 cores:
#     test        BLEU-4 63.4 vs constant 46.8 / 65.0 vs 41.6;  CIDEr 2.65 vs 1.14 / 2.46 vs 1.27
#     test_unseen BLEU-4 62.0 vs constant 44.1 / 61.3 vs 41.5;  CIDEr 1.81 vs 0.68 / 1.60 vs 0.76
#     distinct generated / true: test 48 / 77, 46 / 77; test_unseen 41 / 70, 34 / 69
#     colour accuracy 0.875 vs constant 0.125 / 0.775 vs 0.275
# Every threshold sits at or below half the smaller measured margin.


def test_heldout_bleu4_and_cider_are_well_above_the_constant_caption(trained):
    out, m = trained
    for split, bleu, cider in (("test", 8, 0.5), ("test_unseen", 8, 0.4)):
        assert m[f"{split}_bleu4"] > m[f"{split}_constant_bleu4"] + bleu, m
        assert m[f"{split}_cider"] > m[f"{split}_constant_cider"] + cider, m
    assert m["test_colour_accuracy"] > m["test_constant_colour_accuracy"] + 0.2, m
    assert m["test_unseen_images"] == 80
    saved = json.loads((out / "test_results.json").read_text(encoding="utf-8"))
    assert saved["test_bleu4"] == pytest.approx(m["test_bleu4"]) and "constant_caption" in saved


def test_distinct_captions_are_close_to_the_distinct_true_captions(trained):
    """Not 'the same caption for every image': the model tells the held-out scenes apart about as often as the
    references do (the default run: 449 distinct for 430 true, README)."""
    _, m = trained
    for split in ("test", "test_unseen"):
        assert m[f"{split}_distinct_true"] == m[f"{split}_distinct_scenes"] > 50, m  # 6 references per image
        assert m[f"{split}_distinct_generated"] >= 0.25 * m[f"{split}_distinct_true"], m
        assert m[f"{split}_most_common_share"] < 0.3, m


def test_saved_model_reloads_and_captions_the_same(trained):
    out, _ = trained
    from clean_data import load_rgb
    rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    model, tok, proc = load_trained(out)
    images = [load_rgb(r["image_path"]) for r in rows[:16]]
    assert caption_images(images, model, tok, proc) == [r["caption"] for r in rows[:16]]
    assert all(" " not in r["caption"] for r in rows)  # batch_decode's spaces between Chinese characters removed
    assert (out / "curves.png").is_file() and list((out / "runs").iterdir())
    assert {"beam": caption_images(images[:2], model, tok, proc, num_beams=4)}  # beam search runs
    import torch
    torch.manual_seed(0)
    sampled = caption_images(images[:4], model, tok, proc, do_sample=True, top_k=5, temperature=1.5)
    assert len(sampled) == 4 and all(isinstance(s, str) for s in sampled)


def test_resume_last_continues_from_the_newest_complete_checkpoint(trained, shapes, tmp_path, tiny_model):
    import shutil
    import train
    out, _ = trained
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert ckpts
    work = tmp_path / "resume"
    work.mkdir()
    shutil.copytree(ckpts[-1], work / ckpts[-1].name)
    (work / "checkpoint-99999").mkdir()  # killed while saving: no trainer_state.json
    step = int(ckpts[-1].name.split("-")[1])
    m = train.main(["--data_dir", str(shapes[1]), "--output_dir", str(work), *tiny_model, "--max_steps", str(step + 2),
                    "--resume_from_checkpoint", "last", "--eval_strategy", "no", "--save_strategy", "no",
                    "--max_eval_samples", "8", "--report_to", "none", "--disable_tqdm", "true"])
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    assert state["global_step"] == step and m["test_images"] == 8


def test_benchmark_runs_both_paths_in_one_run(trained, shapes):
    import benchmark
    out, _ = trained
    r = benchmark.main(["--model_dir", str(out), "--data_dir", str(shapes[1]), "--num_workers", "1",
                        "--n_images", "64", "--n_caption", "8", "--num_beams", "2"])
    assert r["images_per_s_main_process"] > 0 and r["images_per_s_1_workers"] > 0
    assert r["captions_per_s_greedy"] > 0 and r["captions_per_s_beam2"] > 0
    assert (out / "benchmark.json").is_file()
