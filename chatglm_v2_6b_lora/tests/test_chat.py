"""chat / stream_chat: the official return shapes (response, history), growing history, stream ends where chat does."""
import pytest
import torch

from model import chat, convert_chatglm, load_model, load_tokenizer, stream_chat, write_tiny_official
from tokenization import prompt_ids, stop_ids


@pytest.fixture(scope="module", params=["chatglm2", "chatglm3"])
def model_and_tokenizer(request, tmp_path_factory, sp_model):
    root = tmp_path_factory.mktemp(request.param)
    src = write_tiny_official(root / "src", sp_model, template=request.param, seed=3, std=0.2, hidden_size=64,
                              num_layers=2, num_attention_heads=4, kv_channels=16, multi_query_group_num=2,
                              ffn_hidden_size=96)
    d = convert_chatglm(src, root / "dst")
    return load_model(d).eval(), load_tokenizer(d), request.param


def test_chat_returns_response_and_growing_history(model_and_tokenizer):
    model, tok, template = model_and_tokenizer
    response, history = chat(model, tok, "你好", max_new_tokens=8)
    assert isinstance(response, str) and response
    assert history == [{"role": "user", "content": "你好"}, {"role": "assistant", "content": response}]
    response2, history2 = chat(model, tok, "今天天气如何？", history=history, max_new_tokens=8)
    assert history2[:2] == history and len(history2) == 4 and history2[-1] == {"role": "assistant", "content": response2}
    assert len(history) == 2  # the caller's history is not modified
    official_style = [("你好", response)]  # the official ChatGLM2 history shape gives the same turn
    assert chat(model, tok, "今天天气如何？", history=official_style, max_new_tokens=8) == (response2, history2)


def test_chat_answers_are_the_greedy_continuation_of_the_prompt(model_and_tokenizer):
    model, tok, template = model_and_tokenizer
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    ids = torch.tensor([prompt_ids(tok, history + [{"role": "user", "content": "学习"}], template)])
    out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=stop_ids(tok, template),
                         pad_token_id=0)
    want = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert chat(model, tok, "学习", history=history, template=template, max_new_tokens=8)[0] == want


def test_stream_chat_grows_to_the_chat_answer(model_and_tokenizer):
    model, tok, template = model_and_tokenizer
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    want, want_history = chat(model, tok, "再见", history=history, max_new_tokens=12)
    steps = list(stream_chat(model, tok, "再见", history=history, max_new_tokens=12))
    assert len(steps) >= 2 and steps[-1] == (want, want_history)
    texts = [text for text, _ in steps]
    assert len(set(texts)) == len(texts)  # a yield per change
    assert not any(t.endswith("\ufffd") for t in texts[:-1])  # no half characters on the way (a random model
    # emits stray byte tokens; a real one's texts also grow as prefixes)
    assert all(h[:3] == want_history[:3] and h[-1] == {"role": "assistant", "content": t} for t, h in steps)


def test_stream_chat_raises_errors_of_the_generation_thread(model_and_tokenizer):
    model, tok, template = model_and_tokenizer
    with pytest.raises(Exception):
        list(stream_chat(model, tok, "你好", max_new_tokens=4, num_beams="two"))
