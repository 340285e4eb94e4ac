"""Bad arguments stop with one line naming the argument, before any model, tokenizer or data is loaded."""
import pytest

import clean_data
import expand_vocab
import train
import train_tokenizer


@pytest.fixture
def no_loading(monkeypatch):
    """Every loader raises: a bad argument must be caught before any of them runs."""
    def boom(*args, **kwargs):
        raise AssertionError("loaded something before checking the arguments")
    for module in (expand_vocab, train):
        monkeypatch.setattr(module.AutoTokenizer, "from_pretrained", boom)
        monkeypatch.setattr(module.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(clean_data, "people_daily_docs", boom)
    monkeypatch.setattr(train, "read_texts", boom)
    monkeypatch.setattr(train_tokenizer, "train_tokenizer", boom)
    monkeypatch.setattr(expand_vocab, "read_corpus", boom)


CASES = [
    (clean_data, ["--validation_ratio", "1.5"], "--validation_ratio"),
    (clean_data, ["--validation_ratio", "0.6", "--test_ratio", "0.5"], "--test_ratio"),
    (clean_data, ["--min_chars", "0"], "--min_chars"),
    (clean_data, ["--max_docs", "0"], "--max_docs"),
    (clean_data, ["--encoding", "no-such-codec"], "--encoding"),
    (clean_data, ["--text_field", ""], "--text_field"),
    (clean_data, ["--input", "/no/such/dir"], "--input"),
    (train_tokenizer, ["--kind", "wordpiece"], "--kind"),
    (train_tokenizer, ["--vocab_size", "10"], "--vocab_size"),
    (train_tokenizer, ["--max_docs", "-1"], "--max_docs"),
    (train_tokenizer, ["--train_file", "/no/such.jsonl"], "--train_file"),
    (expand_vocab, ["--model_name_or_path", "/no/such/model"], "--model_name_or_path"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--base_sp_model", "{sp}"], "--base_sp_model"),
    (expand_vocab, ["--base_sp_model", "/no/such.model"], "--base_sp_model"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--chinese_sp_model", "/no/such.model"], "--chinese_sp_model"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--corpus", "/no/such/corpus"], "--corpus"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--held_out_file", "/no/such.jsonl"], "--held_out_file"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--new_vocab_size", "5"], "--new_vocab_size"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--max_new_tokens", "0"], "--max_new_tokens"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--new_piece_score", "high"], "--new_piece_score"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--pad_to_multiple_of", "0"], "--pad_to_multiple_of"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--init", "zeros"], "--init"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--head_init", "zeros"], "--head_init"),
    (expand_vocab, ["--model_name_or_path", "{model}", "--max_eval_texts", "0"], "--max_eval_texts"),
    (train, ["--model_name_or_path", "/no/such/model"], "--model_name_or_path"),
    (train, ["--model_name_or_path", "{model}", "--trainable", "head"], "--trainable"),
    (train, ["--model_name_or_path", "{model}", "--use_lora", "true", "--trainable", "all"], "--use_lora"),
    (train, ["--model_name_or_path", "{model}", "--lora_r", "0"], "--lora_r"),
    (train, ["--model_name_or_path", "{model}", "--train_file", "/no/such.jsonl"], "--train_file"),
    (train, ["--model_name_or_path", "{model}", "--block_size", "2"], "--block_size"),
    (train, ["--model_name_or_path", "{model}", "--max_train_samples", "0"], "--max_train_samples"),
    (train, ["--model_name_or_path", "{model}", "--learning_rate", "-1"], "--learning_rate"),
    (train, ["--model_name_or_path", "{model}", "--max_steps", "0"], "--max_steps"),
    (train, ["--model_name_or_path", "{model}", "--bf16", "true"], "--bf16"),
    (train, ["--model_name_or_path", "{model}", "--resume_from_checkpoint", "/no/such/checkpoint"], "--resume_from_checkpoint"),
]


@pytest.fixture
def fake_model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model/config.json").write_text("{}")
    (tmp_path / "tokenizer.model").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("module,argv,arg", CASES, ids=[f"{m.__name__}{a}" for m, _, a in CASES])
def test_bad_argument_stops_with_one_line_before_loading(module, argv, arg, no_loading, fake_model, corpus):
    argv = [a.format(model=fake_model / "model", sp=fake_model / "tokenizer.model") for a in argv]
    if module is train:  # real data files unless the case names its own
        argv = ["--train_file", str(corpus["train"]), "--validation_file", str(corpus["validation"]),
                "--test_file", str(corpus["test"]), "--output_dir", str(fake_model / "out"), *argv]
    if module is train_tokenizer and "--train_file" not in argv:
        argv = ["--train_file", str(corpus["train"]), *argv]
    if module is expand_vocab and "--corpus" not in argv and arg not in ("--base_sp_model", "--model_name_or_path"):
        argv = ["--corpus", str(corpus["train"]), *argv]  # a fresh clone has no data/cache/clean
    if module is expand_vocab and "--held_out_file" not in argv and arg not in ("--base_sp_model", "--model_name_or_path"):
        argv = ["--held_out_file", str(corpus["test"]), *argv]
    with pytest.raises(SystemExit, match=arg) as e:
        module.main(argv)
    assert isinstance(e.value.code, str) and "\n" not in e.value.code and "Fix:" in e.value.code, e.value.code
