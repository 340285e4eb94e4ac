"""train.py: the LM learns (perplexity vs a character-unigram model), samples at each evaluation, resume,
reproducible seeded sampling, save -> load, the real-checkpoint path (GPT-2 + BERT vocab.txt), chat learns."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import train
from model import ModelArguments, build_model, chat, generate, load_for_inference, load_tokenizer

FOLDER = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("ZERO_NLP_TEST_SEED", "42"))  # as in conftest.py (not importable: the root has one too)
# lm_run (2 layers x 128, block 64, 150 steps of 16 blocks, Muon, 2.7k People's Daily paragraphs):
# perplexity / character-unigram perplexity on the same validation tokens. Untrained: about uniform over the
# vocabulary, ratio ~4.5. Measured (AMD EPYC 2 cores, OMP_NUM_THREADS=1): seed 42: 0.265 (ppl 164.9 vs unigram 622.7), seed 7: 0.261 (ppl 162.6 vs unigram 622.5; untrained ratio 4.58). Threshold 0.6 < halfway.
LM_RATIO_MAX = 0.6
# chat_run (2 layers x 128, 120 steps of 32 dialogues, from scratch): held-out exact match of the last answer.
# Untrained 0.0. Measured: seed 42: 0.680 (name 1.0, weekday 0.15, antonym 0.0), seed 7: 0.680 (name 1.0, weekday 0.21, antonym 0.0). Threshold 0.3 < halfway (0.34).
CHAT_EM_MIN = 0.3


def test_lm_learns_beyond_unigram(lm_run):
    out, m = lm_run
    print(f"measured: perplexity {m['perplexity']:.1f}, unigram {m['unigram_perplexity']:.1f}, "
          f"ratio {m['perplexity_ratio_to_unigram']:.3f}, init {m['init_perplexity']:.1f}")
    assert m["init_perplexity"] > 1.5 * m["unigram_perplexity"]  # untrained: about uniform over the vocabulary
    assert m["perplexity_ratio_to_unigram"] < LM_RATIO_MAX
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["perplexity"] == pytest.approx(m["perplexity"]) and "unigram_perplexity" in saved
    for name in ("model.safetensors", "config.json", "tokenizer.json", "vocab.txt", "curves.png", "train_results.json",
                 "samples.jsonl", "checkpoint-150/trainer_state.json"):
        assert (out / name).exists(), name
    acc = json.loads((out / "train_results.json").read_text())["train_tokens"]
    assert acc["block_tokens"] == acc["doc_tokens"] + acc["separators"] - acc["remainder"]


def test_samples_logged_at_each_evaluation(lm_run):
    out, _ = lm_run
    logged = [json.loads(x) for x in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["step"] for e in logged] == [0, 75, 150, 150]  # eval_on_start, every 75 steps, the final evaluate
    assert [s["prompt"] for s in logged[0]["samples"]] == ["中国", "今天", "经济发展", "人民"]
    assert logged[0]["samples"] != logged[-1]["samples"]
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events and any(b"samples" in e.read_bytes() for e in events)  # tensorboard text


def test_save_load_gives_the_same_generations(lm_run, tmp_path):
    out, _ = lm_run
    model, tok = load_for_inference(out)
    final = [json.loads(x) for x in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()][-1]
    # the trained model's own samples (logged in memory during training) == the reloaded model's
    assert [s["text"] for s in final["samples"]] == [
        generate(model, tok, s["prompt"], max_new_tokens=8, repetition_penalty=1.2)[0] for s in final["samples"]]
    model.save_pretrained(tmp_path / "again")
    tok.save_pretrained(tmp_path / "again")
    again, tok2 = load_for_inference(tmp_path / "again")
    for kwargs in (dict(), dict(num_beams=3), dict(no_repeat_ngram_size=2, max_new_tokens=20)):
        assert generate(model, tok, "人民", **kwargs) == generate(again, tok2, "人民", **kwargs)


def test_seeded_sampling_is_reproducible(lm_run):
    model, tok = load_for_inference(lm_run[0])
    kw = dict(do_sample=True, top_k=50, top_p=0.95, temperature=1.0, max_new_tokens=16, num_return_sequences=3)
    torch.manual_seed(123)
    a = generate(model, tok, "中国", **kw)
    torch.manual_seed(123)
    b = generate(model, tok, "中国", **kw)
    torch.manual_seed(124)
    c = generate(model, tok, "中国", **kw)
    assert a == b and a != c and len(set(a)) > 1


def test_resume_from_last_checkpoint(lm_run, lm_args, tmp_path, capsys):
    """'last' = the newest complete checkpoint (a kill while saving leaves one without trainer_state.json)."""
    out = tmp_path / "run"
    shutil.copytree(lm_run[0], out, ignore=shutil.ignore_patterns("checkpoint-150"))
    broken = out / "checkpoint-999"
    shutil.copytree(out / "checkpoint-75", broken)
    (broken / "trainer_state.json").unlink()
    m = train.main(lm_args(out) + ["--max_steps", "80", "--resume_from_checkpoint", "last", "--report_to", "none"])
    assert f"skipping {broken}" in capsys.readouterr().out
    assert m["global_step"] == 80 and "init_perplexity" not in m  # continued at step 75, not from scratch
    assert [h["step"] for h in m["log_history"] if "loss" in h][:2] == [10, 20]  # the history up to 75 came along


def test_real_checkpoint_path_gpt2_with_bert_vocab(clean_dir, tmp_path):
    """--model_name_or_path with a uer-style checkpoint: GPT2LMHeadModel weights + a BERT vocab.txt (no
    tokenizer.json), config.json naming BertTokenizer: loads, trains, generates."""
    texts = [json.loads(x)["text"] for x in (clean_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in "0123456789"]
    ckpt = tmp_path / "uer_style"
    ckpt.mkdir()
    (ckpt / "vocab.txt").write_text("".join(w + "\n" for w in vocab), encoding="utf-8")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab) + 11, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                               tokenizer_class="BertTokenizer")).save_pretrained(ckpt)
    tok = load_tokenizer(str(ckpt))
    assert len(tok) == len(vocab) and tok.cls_token_id == 2 and tok.sep_token_id == 3
    m = train.main(["--model_name_or_path", str(ckpt), "--data_dir", str(clean_dir), "--output_dir", str(tmp_path / "o"),
                    "--block_size", "64", "--max_steps", "12", "--per_device_train_batch_size", "8",
                    "--learning_rate", "5e-3", "--eval_steps", "12", "--max_eval_blocks", "32", "--save_strategy", "no",
                    "--report_to", "none", "--disable_tqdm", "true", "--sample_max_new_tokens", "4"])
    assert m["perplexity"] < 0.5 * m["init_perplexity"]
    model, tok2 = load_for_inference(tmp_path / "o")
    assert isinstance(model, GPT2LMHeadModel) and tok2.get_vocab() == tok.get_vocab()
    assert len(generate(model, tok2, "中国", max_new_tokens=5)) == 1
    # a vocabulary larger than the embedding: one clear line
    (ckpt / "vocab.txt").write_text("".join(w + "\n" for w in vocab + [f"[unused{i}]" for i in range(20)]), "utf-8")
    with pytest.raises(SystemExit, match="--model_name_or_path: the tokenizer has .* tokens but the model embeds only"):
        build_model(ModelArguments(model_name_or_path=str(ckpt)), load_tokenizer(str(ckpt)))


def test_chat_learns_to_use_the_history(chat_run):
    out, m = chat_run
    print(f"measured: chat exact match {m['exact_match_before']:.3f} -> {m['exact_match_after']:.3f} "
          f"{m['exact_match_by_kind_after']}")
    assert m["exact_match_before"] == 0.0 and m["exact_match_after"] >= CHAT_EM_MIN
    model, tok = load_for_inference(out)
    answer = chat(model, tok, [{"role": "user", "content": "“大”的反义词是什么？"}])
    assert answer == chat(model, tok, [{"role": "user", "content": "“大”的反义词是什么？"}])  # greedy: deterministic


def test_notebook_runs(lm_run, chat_run, notebook_runner):
    nb = notebook_runner(FOLDER / "infer.ipynb", env={"ZERO_NLP_OUTPUT_DIR": lm_run[0],
                                                       "ZERO_NLP_CHAT_DIR": chat_run[0]})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for label in ("greedy:", "top-k:", "top-p:", "beam search:", "repetition_penalty:", "no_repeat_ngram_size:",
                  "助手："):
        assert label in text, label
