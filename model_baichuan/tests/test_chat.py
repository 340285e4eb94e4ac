"""chat() / stream_chat(): the official chat()'s prompt (prompt_ids), greedy answers equal a plain generate, the stream
ends with chat()'s answer, history as messages (tuples accepted), for both model kinds."""
import pytest
import torch

from model import chat, load_baichuan, load_model, load_tokenizer, stream_chat
from tokenization import prompt_ids


@pytest.mark.parametrize("variant", ["baichuan2-13b", "baichuan2-7b"])
def test_chat_and_stream(variant, tiny_variants, tmp_path):
    path = load_baichuan(tiny_variants[variant], tmp_path / "cache")
    model, tok = load_model(path).eval(), load_tokenizer(path)
    history = [("你好", "你好！")]
    response, messages = chat(model, tok, "今天天气很好", history=history, max_new_tokens=8)
    ids = prompt_ids(tok, [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                           {"role": "user", "content": "今天天气很好"}], 195, 196, max_new_tokens=8, model_max_length=64)
    assert ids[0] == 195 and ids[-1] == 196
    out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=2, pad_token_id=0)
    assert response == tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert messages[-1] == {"role": "assistant", "content": response} and len(messages) == 4
    steps = list(stream_chat(model, tok, "今天天气很好", history=history, max_new_tokens=8))
    assert steps[-1] == (response, messages)
    assert all(not text.endswith("\ufffd") for text, _ in steps[:-1])
