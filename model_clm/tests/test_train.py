"""Training: perplexity drops, exact data-position resume, real-checkpoint path, clear argument errors, notebook."""
import io
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import dataset
import train

SEED = int(os.environ.get("ZERO_NLP_TEST_SEED", "42"))  # as in tests/conftest.py (not importable: root conftest)

HERE = Path(__file__).resolve().parents[1]
# perplexity / unigram perplexity of the `trained` fixture (Muon, the from-scratch default). Untrained: 1.91.
# Measured (AMD EPYC, 2 cores; 1 and 2 threads identical): 0.237 (seed 42), 0.241 (seed 7); with AdamW it was
# 0.638 / 0.749. With Float32Muon (fp32 Newton-Schulz on CPU; Intel Xeon, 2 cores, 1 thread): 0.2376 / 0.2405.
# Halfway to untrained: 1.07; the threshold keeps 2.5x margin and still fails an AdamW-level run.
RATIO_MAX = 0.6
TINY = "hidden_size=32,intermediate_size=64,num_hidden_layers=1,num_attention_heads=2,num_key_value_heads=2"


def common(pipeline, out, *extra):
    return ["--data_dir", str(pipeline["tokens"]), "--tokenizer_name_or_path", str(pipeline["tok"]),
            "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true", "--seed", str(SEED),
            "--dataloader_pin_memory", "false", "--max_eval_blocks", "32", *extra]


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    """Every trainable tensor is in exactly one of the two optimizers: Linear weights inside the blocks in Muon,
    the (tied) embedding / head, norms and biases in AdamW; a step moves both kinds."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    net = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
    opt = train.MuonWithAdamW(net, lr=1e-2, muon_lr=0.02, weight_decay=0.01)
    adamw, muon = ([p for g in o.param_groups for p in g["params"]] for o in opt.optimizers)
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in adamw + muon) == sorted(names.values())  # each exactly once
    assert {names[id(p)] for p in adamw} == {n for n in names.values() if "norm" in n or "embed_tokens" in n}
    assert all(p.ndim == 2 and ("_proj" in names[id(p)]) for p in muon) and len(muon) == 2 * 7
    # CPU parameters: fp32 Newton-Schulz where this CPU's bf16 matmul is slow, else torch's (as on a GPU)
    assert type(opt.optimizers[1]) is (train.Float32Muon if train.bf16_matmul_is_slow() else torch.optim.Muon)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net(torch.randint(0, 64, (2, 8)), labels=torch.randint(0, 64, (2, 8))).loss.backward()
    opt.step()
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"} <= moved
    state = opt.state_dict()
    opt2 = train.MuonWithAdamW(net, lr=1e-2, muon_lr=0.02, weight_decay=0.01)
    opt2.load_state_dict(state)  # resume restores both optimizers' moments
    assert len(opt2.optimizers[1].state) == len(muon) and len(opt2.optimizers[0].state) == len(adamw)


@pytest.mark.parametrize("slow", [True, False])
def test_muon_newton_schulz_dtype_follows_the_cpus_bf16_speed(slow, monkeypatch):
    monkeypatch.setattr(train, "bf16_matmul_is_slow", lambda: slow)
    net = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 4))
    net.get_output_embeddings = lambda: None
    opt = train.MuonWithAdamW(net, 1e-3, 0.02, 0.0)
    assert type(opt.optimizers[1]) is (train.Float32Muon if slow else torch.optim.Muon)


def saved_and_loaded(state_dict):
    """Through torch.save / torch.load like a checkpoint (load_state_dict alone would share the buffer tensors)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _muon_pair(seed, nesterov=True):
    """torch.optim.Muon and Float32Muon on two copies of the same matrices (wide, tall, square), with 3 steps of
    the same random gradients each."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (32, 64), (48, 48), (128, 96)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) * 1e-2 for s in shapes] for _ in range(3)]
    ref, ours = ([p.clone().requires_grad_() for p in start] for _ in range(2))
    kw = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="original", nesterov=nesterov)
    return start, grads, (ref, torch.optim.Muon(ref, **kw)), (ours, train.Float32Muon(ours, **kw))


@pytest.mark.parametrize("nesterov", [True, False])
def test_float32_muon_steps_like_torch_muon(nesterov):
    """Float32Muon (fp32 Newton-Schulz) follows torch.optim.Muon (bf16 Newton-Schulz) step for step: the momentum
    buffers are identical and the parameters differ only by bf16 rounding. Tolerance: 8% of each matrix's total
    change after each of 3 steps; measured at most 2.1% (seeds 42 and 7). Deliberate errors give (after 3 steps,
    both seeds): no weight decay >= 80%, the other lr adjustment >= 46%, nesterov flipped >= 29%, 4 NS steps >= 22%."""
    start, grads, (ref, ref_opt), (ours, our_opt) = _muon_pair(SEED, nesterov)
    for step in grads:
        for a, b, grad in zip(ref, ours, step):
            a.grad, b.grad = grad.clone(), grad.clone()
        ref_opt.step(), our_opt.step()
        for a, b, p0 in zip(ref, ours, start):
            assert torch.equal(ref_opt.state[a]["momentum_buffer"], our_opt.state[b]["momentum_buffer"])
            change = (a - p0).abs().max()
            assert (a - b).abs().max() < 0.08 * change, ((a - b).abs().max() / change).item()


def test_float32_muon_state_dict_interchanges_with_torch_muon():
    """A checkpoint written by either class loads into the other, and both then take the same next step."""
    _, grads, (ref, ref_opt), (ours, our_opt) = _muon_pair(SEED)
    for a, b, grad in zip(ref, ours, grads[0]):
        a.grad, b.grad = grad.clone(), grad.clone()
    ref_opt.step(), our_opt.step()
    mine = our_opt.state_dict()
    assert {k for s in mine["state"].values() for k in s} == {"momentum_buffer"}
    assert mine["param_groups"] == ref_opt.state_dict()["param_groups"]
    fresh_torch = torch.optim.Muon([p.detach().clone().requires_grad_() for p in ours])  # other hyperparameters
    fresh_torch.load_state_dict(saved_and_loaded(mine))
    back = train.Float32Muon([p.detach().clone().requires_grad_() for p in ours])
    back.load_state_dict(saved_and_loaded(fresh_torch.state_dict()))
    for opt in (fresh_torch, back):
        params = opt.param_groups[0]["params"]
        assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[0]["adjust_lr_fn"] == "original"
        for p, b in zip(params, ours):
            assert torch.equal(opt.state[p]["momentum_buffer"], our_opt.state[b]["momentum_buffer"])
    # the next step from the round-tripped state equals the next step of the optimizer it came from
    for p, b, grad in zip(back.param_groups[0]["params"], ours, grads[1]):
        p.grad, b.grad = grad.clone(), grad.clone()
    back.step(), our_opt.step()
    assert all(torch.equal(p, b) for p, b in zip(back.param_groups[0]["params"], ours))


@pytest.fixture(scope="module")
def trained(pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("clm_trained")
    metrics = train.main(common(pipeline, out, "--config_overrides",
                                "hidden_size=64,intermediate_size=128,num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=4",
                                "--max_steps", "150", "--per_device_train_batch_size", "16", "--block_size", "64",
                                "--learning_rate", "5e-3", "--eval_steps", "50", "--save_steps", "150",
                                "--logging_steps", "10", "--report_to", "tensorboard"))
    return out, metrics


def test_heldout_perplexity_drops(trained):
    out, metrics = trained
    # random init is ~uniform over the 1024-token vocabulary; 150 small steps must halve held-out perplexity
    assert metrics["init_perplexity"] > 500
    assert metrics["perplexity"] < 0.5 * metrics["init_perplexity"], metrics
    # and it uses context: better than token frequencies alone on the same held-out tokens
    assert metrics["perplexity"] < metrics["unigram_perplexity"], metrics
    # issue 13 item 7 on a shorter run: the ratio to the unigram model, with margin (see RATIO_MAX)
    assert metrics["perplexity_ratio_to_unigram"] < RATIO_MAX, metrics
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["perplexity"] == pytest.approx(math.exp(saved["eval_loss"]))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "curves.png", "checkpoint-150/data_position.json"):
        assert (out / name).exists(), name
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events and len({e.parent for e in events}) == 1  # one run dir under output_dir, initial eval included
    assert not (HERE / "runs").exists()


def test_notebook_runs_on_trained_model(trained, notebook_runner):
    out, metrics = trained
    nb = notebook_runner(HERE / "infer.ipynb", env={"ZERO_NLP_OUTPUT_DIR": out})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    ppl = float(re.search(r"held-out perplexity ([0-9.]+)", text).group(1))
    assert ppl == pytest.approx(metrics["perplexity"], rel=1e-3)  # the notebook recomputes train.py's number
    assert "generated:" in text


def test_resume_continues_exact_data_position(pipeline, tmp_path, monkeypatch):
    # record what the model is actually trained on (the dataloader itself reads one batch ahead)
    blocks = dataset.PackedDataset(pipeline["tokens"], "train", max_blocks=40)
    index_of = {blocks[i]["input_ids"].numpy().tobytes(): i for i in range(len(blocks))}
    assert len(index_of) == 40
    seen = []
    step = train.CLMTrainer.training_step

    def recording_step(self, model, inputs, *a, **kw):
        seen.extend(index_of[row.numpy().tobytes()] for row in inputs["input_ids"])
        return step(self, model, inputs, *a, **kw)

    monkeypatch.setattr(train.CLMTrainer, "training_step", recording_step)
    args = ["--config_overrides", TINY, "--max_train_blocks", "40", "--per_device_train_batch_size", "4",
            "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--eval_strategy", "no", "--save_steps", "13",
            "--logging_steps", "1"]  # 10 steps an epoch; stop and resume at step 13, in the middle of epoch 1

    train.main(common(pipeline, tmp_path / "a", *args, "--max_steps", "25"))
    straight, seen[:] = list(seen), []
    train.main(common(pipeline, tmp_path / "b", *args, "--max_steps", "13"))
    before, seen[:] = list(seen), []
    train.main(common(pipeline, tmp_path / "b", *args, "--max_steps", "25", "--resume_from_checkpoint", "last"))
    after = list(seen)

    assert len(straight) == 25 * 4 and before + after == straight  # nothing repeated, nothing skipped
    sampler = dataset.EpochShuffleSampler(40, seed=SEED)
    assert straight == [int(i) for e in range(3) for i in sampler.order(e)][:100]  # whole epochs are permutations
    pos = json.loads((tmp_path / "b/checkpoint-13/data_position.json").read_text())
    assert (pos["epoch"], pos["next_index_in_epoch"]) == (1, 12)
    assert after[0] == sampler.order(1)[12]
    a, b = load_file(tmp_path / "a/model.safetensors"), load_file(tmp_path / "b/model.safetensors")
    for k in a:  # same data, same order, same optimizer state: the same weights
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)

    with pytest.raises(SystemExit, match="--resume_from_checkpoint"):  # a different batch layout can't continue exactly
        train.main(common(pipeline, tmp_path / "b", *args, "--max_steps", "30", "--resume_from_checkpoint", "last",
                          "--per_device_train_batch_size", "8"))


def test_resume_last_skips_an_incomplete_checkpoint(pipeline, tmp_path, capsys, monkeypatch):
    """A kill while checkpoint-N is written leaves it without trainer_state.json: 'last' takes N-1 and says so."""
    out = tmp_path / "run"
    args = ["--config_overrides", TINY, "--max_train_blocks", "40", "--per_device_train_batch_size", "4",
            "--eval_strategy", "no", "--eval_on_start", "false", "--save_steps", "2", "--save_total_limit", "3",
            "--logging_steps", "1"]
    train.main(common(pipeline, out, *args, "--max_steps", "4"))
    (out / "checkpoint-4/trainer_state.json").unlink()
    capsys.readouterr()
    resumed_from, train_fn = [], train.CLMTrainer.train

    def spy(self, *a, resume_from_checkpoint=None, **kw):
        resumed_from.append(resume_from_checkpoint)
        return train_fn(self, *a, resume_from_checkpoint=resume_from_checkpoint, **kw)

    monkeypatch.setattr(train.CLMTrainer, "train", spy)
    metrics = train.main(common(pipeline, out, *args, "--max_steps", "6", "--resume_from_checkpoint", "last"))
    said = capsys.readouterr().out
    assert "skipping" in said and "checkpoint-4" in said and "trainer_state.json" in said
    assert metrics["global_step"] == 6
    assert resumed_from == [str(out / "checkpoint-2")]  # the newest complete one
    assert [h["step"] for h in metrics["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "checkpoint-6/data_position.json").read_text())["global_step"] == 6


def test_continue_from_real_checkpoint(pipeline, tmp_path):
    ckpt = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(ckpt)
    metrics = train.main(common(pipeline, tmp_path / "out", "--model_name_or_path", str(ckpt), "--max_steps", "3",
                                "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--save_steps", "100"))
    # the initial held-out loss is the saved checkpoint's own loss: the weights really came from disk
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    valid = dataset.PackedDataset(pipeline["tokens"], "validation", max_blocks=32)
    with torch.no_grad():
        ids = torch.stack([valid[i]["input_ids"] for i in range(len(valid))])
        ref = model(input_ids=ids, labels=ids).loss.item()
    assert metrics["init_eval_loss"] == pytest.approx(ref, rel=1e-3)
    assert json.loads((tmp_path / "out/config.json").read_text())["model_type"] == "gpt2"


@pytest.mark.parametrize("extra, match", [
    (["--deepspeed", str(HERE / "ds_zero2.json")], "--deepspeed"),
    (["--bf16"], "--bf16"),
    (["--fp16", "true"], "--fp16"),
    (["--bf16=True"], "--bf16"),
    (["--model_type", "no-such-model"], "--model_type"),
    (["--block_size", "4096"], "--block_size"),
    (["--resume_from_checkpoint", "last"], "--resume_from_checkpoint"),
])
def test_bad_arguments_fail_early_with_one_line(pipeline, tmp_path, extra, match):
    if torch.cuda.is_available() and match in ("--deepspeed", "--bf16", "--fp16"):
        pytest.skip("GPU present: half precision and DeepSpeed are allowed")
    with pytest.raises(SystemExit, match=match):
        train.main(common(pipeline, tmp_path / "o", "--config_overrides", TINY, *extra))


def test_missing_data_and_mismatched_tokenizer(pipeline, tmp_path):
    with pytest.raises(SystemExit, match="--data_dir"):
        train.main(["--data_dir", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "o")])
    other = tmp_path / "tok2"
    import train_tokenizer
    train_tokenizer.main(["--input", str(pipeline["clean"]), "--output_dir", str(other), "--vocab_size", "512",
                          "--max_docs", "300"])
    with pytest.raises(SystemExit, match="--tokenizer_name_or_path"):
        train.main(common(pipeline, tmp_path / "o")[:2] + ["--tokenizer_name_or_path", str(other),
                                                           "--output_dir", str(tmp_path / "o")])


@pytest.mark.parametrize("name, stage, offload", [
    ("ds_zero2.json", 2, False), ("ds_zero2_offload.json", 2, True),
    ("ds_zero3.json", 3, False), ("ds_zero3_offload.json", 3, True),
])
def test_deepspeed_configs(name, stage, offload):
    cfg = json.loads((HERE / name).read_text())
    z = cfg["zero_optimization"]
    assert z["stage"] == stage
    # "auto" lets the Trainer fill batch sizes / precision / optimizer hyper-parameters from its own arguments
    assert cfg["train_micro_batch_size_per_gpu"] == cfg["gradient_accumulation_steps"] == "auto"
    assert cfg["optimizer"]["params"]["lr"] == "auto"
    assert (z.get("offload_optimizer", {}).get("device") == "cpu") == offload
    if stage == 3:
        assert (z.get("offload_param", {}).get("device") == "cpu") == offload
        assert z["stage3_gather_16bit_weights_on_model_save"] is True  # save_model writes full weights
    else:
        assert "offload_param" not in z  # ZeRO-2 cannot offload parameters
