"""model.py: the real shapes (bloom-560m, llama-7b) count their published parameters, tiny models build tied or
untied and survive save -> from_pretrained, the tiny-model CLI writes a stock directory, bad arguments fail first."""
from unittest import mock

import pytest
import torch
from transformers import AutoModelForCausalLM

import model as model_py
from model import (BLOOM_560M, LLAMA_7B, ModelArguments, TinyModelArguments, build_tiny_model, count_parameters,
                   load_model_and_tokenizer, main, shape_parameters)

IDS = torch.tensor([[5, 17, 200, 3, 42, 99, 7]])


def test_real_shapes_have_the_published_parameter_counts():
    assert shape_parameters(BLOOM_560M) == 559_214_592  # bigscience/bloom-560m
    assert shape_parameters(LLAMA_7B) == 6_738_415_616  # huggyllama/llama-7b
    # the vocabulary share: bloom-560m's embedding is 250,880 x 1024 (tied), 46 % of the model
    assert shape_parameters(BLOOM_560M) - shape_parameters(BLOOM_560M, vocab_size=1) == (250_880 - 1) * 1024


@pytest.mark.parametrize("kind", ["bloom", "llama"])
@pytest.mark.parametrize("tied", [True, False])
def test_tiny_model_tied_or_untied_survives_save_and_load(kind, tied, tmp_path):
    m = build_tiny_model(kind, vocab_size=300, tie_word_embeddings=tied, seed=1)
    same = m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()
    assert same == tied
    extra = 0 if tied else 300 * m.config.hidden_size
    assert count_parameters(m) == count_parameters(build_tiny_model(kind, 300, True)) + extra == m.num_parameters()
    m.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(m(IDS).logits, back(IDS).logits)


def test_tiny_model_cli_writes_a_stock_directory(tmp_path):
    from train_tokenizer import train_bpe
    train_bpe(["你好，世界。", "hello world", "人民日报 1998 年"] * 20, 300, tmp_path / "tok")
    out = main(["--kind", "bloom", "--tokenizer_name_or_path", str(tmp_path / "tok"), "--output_dir",
                str(tmp_path / "m"), "--vocab_size", "320"])
    m, tok = load_model_and_tokenizer(out)
    assert m.config.vocab_size == 320 >= len(tok) and m.config.tie_word_embeddings
    assert (m.config.bos_token_id, m.config.eos_token_id, m.config.pad_token_id) == (1, 2, 3)
    assert m.generation_config.eos_token_id == tok.eos_token_id == 2


@pytest.mark.parametrize("cls, kwargs, arg", [
    (ModelArguments, {}, "--model_name_or_path"),
    (ModelArguments, {"model_name_or_path": "/no/such/dir"}, "--model_name_or_path"),
    (ModelArguments, {"model_name_or_path": "."}, "--model_name_or_path"),  # no config.json
    (TinyModelArguments, {"kind": "gpt2", "tokenizer_name_or_path": "tok"}, "--kind"),
    (TinyModelArguments, {"tokenizer_name_or_path": "/no/such/dir"}, "--tokenizer_name_or_path"),
    (TinyModelArguments, {"tokenizer_name_or_path": "."}, "--tokenizer_name_or_path"),  # no tokenizer files
    (TinyModelArguments, {"tokenizer_name_or_path": "tok", "vocab_size": 0}, "--vocab_size"),
])
def test_bad_model_arguments_fail_before_loading(cls, kwargs, arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text("{}")
    boom = mock.Mock(side_effect=AssertionError("loaded something"))
    with mock.patch.object(model_py.AutoTokenizer, "from_pretrained", boom), \
            mock.patch.object(model_py.AutoModelForCausalLM, "from_pretrained", boom):
        with pytest.raises(SystemExit, match=arg) as e:
            cls(**kwargs)
    assert "Fix:" in str(e.value) and "\n" not in str(e.value)
    boom.assert_not_called()


def test_bad_torch_dtype(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="--torch_dtype"):
        ModelArguments(model_name_or_path=str(tmp_path), torch_dtype="int8")
