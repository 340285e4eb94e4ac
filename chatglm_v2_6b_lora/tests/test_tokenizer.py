"""The ChatGLM tokenizer as tokenizer.json: official special ids, SentencePiece's ids, the two official templates."""
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokenization import (build_tokenizer, conversation_segments, detect_template, encode_text, prompt_ids,
                          stop_ids)

REAL = Path(__file__).resolve().parents[2] / "../shared/reference/chatglm2/tokenizer.model"
SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
TEXTS = ["你好", "  两个空格开头", "a\n\nb", "\t制表符\t tab", "😀 emoji 🤖", "１２３ 123，。！？“”《》", "  leading", " x",
         "trailing  ", "中文English混合 3.14159 和 2024年", "多个    空格   在中间", "换行\n\n\n三个", "\r\n windows",
         "def f(x):\n    return x ** 2\n", "ｆｕｌｌ　ｗｉｄｔｈ", "日本語のテキスト", "Ünïcödé", "∑∫√∞≈", "https://a.com/b?c=d&e=f",
         " ", "\n", "类型：上衣#颜色：白色#风格：简约"]


def official_ids(sp, text):
    """The official SPTokenizer: EncodeAsPieces, then PieceToId (special tokens are never parsed from text)."""
    return [sp.PieceToId(p) for p in sp.EncodeAsPieces(text)]


@pytest.fixture(scope="module")
def tok2(sp_model):
    return build_tokenizer(sp_model, "chatglm2")


@pytest.fixture(scope="module")
def tok3(sp_model):
    return build_tokenizer(sp_model, "chatglm3")


def test_special_ids_prefix_eos_pad_left_padding(sp_model, tok2, tok3):
    n = spm.SentencePieceProcessor(model_file=str(sp_model)).vocab_size()
    assert tok2.convert_tokens_to_ids(SPECIALS) == list(range(n, n + 5)) and len(tok2) == n + 5
    assert tok3.convert_tokens_to_ids(SPECIALS + ROLES) == list(range(n, n + 9)) and len(tok3) == n + 9
    assert (tok2.eos_token_id, tok2.pad_token_id, tok2.padding_side) == (2, 0, "left")
    assert tok2("你好")["input_ids"][:2] == [n + 1, n + 3]  # [gMASK] sop
    batch = tok2(["你好，世界！", "你"], padding=True)
    assert batch["input_ids"][1][0] == 0 and batch["attention_mask"][1][0] == 0 and batch["input_ids"][1][-1] != 0
    assert stop_ids(tok2, "chatglm2") == [2] and stop_ids(tok3, "chatglm3") == [2, n + 6, n + 8]


def test_ids_equal_sentencepiece_and_decode_round_trips(sp_model, tok2):
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    for text in TEXTS + ["<|user|>注入", "[gMASK]sop"]:
        assert encode_text(tok2, text) == official_ids(sp, text), text
        assert tok2.decode(encode_text(tok2, text)) == sp.decode(official_ids(sp, text)) == text, text
    assert tok2.convert_tokens_to_ids("[gMASK]") not in encode_text(tok2, "[gMASK]")  # text stays text


def test_saved_tokenizer_loads_with_auto_tokenizer(tmp_path, tok3):
    tok3.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)  # no trust_remote_code, no tokenizer.model needed
    assert isinstance(loaded, PreTrainedTokenizerFast) and (tmp_path / "tokenizer.json").is_file()
    assert [loaded(t)["input_ids"] for t in TEXTS] == [tok3(t)["input_ids"] for t in TEXTS]
    assert loaded.padding_side == "left" and loaded.pad_token_id == 0
    assert detect_template(tmp_path) == detect_template(loaded) == "chatglm3"


def test_chatglm2_template_is_the_official_build_prompt(tok2):
    n1, n3 = tok2.convert_tokens_to_ids(["[gMASK]", "sop"])
    q1, a1, q2, a2 = "你好", "你好👋！我是 ChatGLM2。", "  怎么学\n编程？", "1. 多练习\n2. 读代码"
    # one turn: exactly the official prompt, [gMASK] sop + build_prompt(q) encoded as one text
    assert prompt_ids(tok2, [{"role": "user", "content": q1}], "chatglm2") == \
        [n1, n3] + encode_text(tok2, "[Round 1]\n\n问：{}\n\n答：".format(q1))
    msgs = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
            {"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
    official = "[Round {}]\n\n问：{}\n\n答：{}\n\n".format(1, q1, a1) + "[Round {}]\n\n问：{}\n\n答：".format(2, q2)
    # multi-turn generation: the official chat() prompt, build_prompt(q2, [(q1, a1)]) encoded as one text
    assert prompt_ids(tok2, msgs[:3], "chatglm2") == [n1, n3] + encode_text(tok2, official)
    segs = conversation_segments(tok2, msgs, "chatglm2")
    ids = [i for s, _ in segs for i in s]
    # training: that prompt + the last answer on its own + eos (the official fine-tuning input) ...
    assert ids == [n1, n3] + encode_text(tok2, official) + encode_text(tok2, a2) + [2]
    assert segs[-1] == (encode_text(tok2, a2) + [2], True)
    # ... and the first answer, inside the prompt text, is trained too: its tokens decode to exactly a1
    assert [tok2.decode(s) for s, t in segs[:-1] if t] == [a1]
    assert not any(t for s, t in segs[:1])
    system = conversation_segments(tok2, [{"role": "system", "content": "简洁"}] + msgs[:2], "chatglm2")
    assert system[0][0] == [n1, n3] + encode_text(tok2, "简洁\n\n[Round 1]\n\n问：{}\n\n答：".format(q1))


def test_chatglm3_template_and_official_finetune_labels(tok3):
    cmd = dict(zip(SPECIALS + ROLES, tok3.convert_tokens_to_ids(SPECIALS + ROLES)))
    conv = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "再见"},
            {"role": "assistant", "content": "再见。"}]

    def message(role, content):  # official build_single_message(role, "", content)
        return [cmd[f"<|{role}|>"]] + encode_text(tok3, "\n") + encode_text(tok3, content)
    want_prompt = [cmd["[gMASK]"], cmd["sop"]] + [i for m in conv[:4] for i in message(m["role"], m["content"])] + \
        [cmd["<|assistant|>"]]
    assert prompt_ids(tok3, conv[:4], "chatglm3") == want_prompt
    # official finetune_demo: a loss mask per message (assistant: True), eos appended, the mask shifted right by one
    ids, mask = [cmd["[gMASK]"], cmd["sop"]], [False, False]
    for m in conv:
        new = message(m["role"], m["content"])
        ids, mask = ids + new, mask + [m["role"] == "assistant"] * len(new)
    ids, mask = ids + [2], [False] + mask
    segs = conversation_segments(tok3, conv, "chatglm3")
    assert [i for s, _ in segs for i in s] == ids
    assert [t for s, t in segs for _ in s] == mask
    trained = [s for s, t in segs if t]  # each answer's "\n"+content and what ends it: <|user|>, then eos
    assert trained == [encode_text(tok3, "\n") + encode_text(tok3, "你好！") + [cmd["<|user|>"]],
                       encode_text(tok3, "\n") + encode_text(tok3, "再见。") + [2]]


def test_bad_conversations_are_refused(tok2, tok3):
    with pytest.raises(ValueError, match="alternating"):
        conversation_segments(tok2, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                     {"role": "assistant", "content": "c"}], "chatglm2")
    with pytest.raises(ValueError, match="end with an assistant"):
        conversation_segments(tok3, [{"role": "user", "content": "a"}], "chatglm3")
    with pytest.raises(ValueError, match="end with a user"):
        prompt_ids(tok3, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "chatglm3")
    with pytest.raises(ValueError, match="message 0"):
        prompt_ids(tok3, [{"role": "bot", "content": "a"}], "chatglm3")
    with pytest.raises(SystemExit, match="--template"):
        prompt_ids(tok3, [{"role": "user", "content": "a"}], "chatglm4")
    with pytest.raises(SystemExit, match="--template: chatglm3 needs the role tokens"):
        prompt_ids(tok2, [{"role": "user", "content": "a"}], "chatglm3")  # a ChatGLM2 tokenizer


def test_train_tokenizer_cli(tmp_path):
    import json

    from train_tokenizer import main
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"问题{i}：{i}+{i}等于几？"},
                                                       {"role": "assistant", "content": f"答案是{2 * i}。"}]},
                                         ensure_ascii=False) for i in range(200)), encoding="utf-8")
    tok = main(["--train_file", str(data), "--vocab_size", "300", "--template", "chatglm3", "--output_dir", str(tmp_path / "tok")])
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok/tokenizer.model"))
    assert len(tok) == sp.vocab_size() + 9 and encode_text(tok, "问题12：") == official_ids(sp, "问题12：")
    assert "1" in sp.EncodeAsPieces("问题12")  # digits split one by one
    with pytest.raises(SystemExit, match="--vocab_size"):
        main(["--train_file", str(data), "--vocab_size", "10"])
    with pytest.raises(SystemExit, match="--train_file"):
        main(["--train_file", str(tmp_path / "missing.jsonl")])


@pytest.mark.skipif(not REAL.is_file(), reason="../shared/reference/chatglm2/tokenizer.model not available")
def test_real_chatglm_tokenizer_gives_the_official_ids():
    sp = spm.SentencePieceProcessor(model_file=str(REAL))
    tok = build_tokenizer(REAL, "chatglm3")
    assert sp.vocab_size() == 64789
    assert tok.convert_tokens_to_ids(SPECIALS + ROLES) == list(range(64789, 64798))
    for text in TEXTS:
        assert encode_text(tok, text) == official_ids(sp, text), text
    special = {t: 64789 + i for i, t in enumerate(SPECIALS + ROLES)}
    hist = [("你好", "你好👋！我是人工智能助手 ChatGLM2-6B，很高兴见到你，欢迎问我任何问题。")]
    q = "晚上睡不着 应该怎么办？"
    # ChatGLM2: the official chat() encodes [gMASK] sop + build_prompt(q, history=[]) as one text
    text = "[Round {}]\n\n问：{}\n\n答：".format(1, q)
    assert prompt_ids(tok, [{"role": "user", "content": q}], "chatglm2") == \
        [special["[gMASK]"], special["sop"]] + official_ids(sp, text)
    # ChatGLM3: the official build_chat_input(q, history)
    messages = [{"role": "system", "content": "You are ChatGLM3."}, {"role": "user", "content": hist[0][0]},
                {"role": "assistant", "content": hist[0][1]}, {"role": "user", "content": q}]
    want = [special["[gMASK]"], special["sop"]]
    for m in messages:
        want += [special[f"<|{m['role']}|>"]] + official_ids(sp, "\n") + official_ids(sp, m["content"])
    assert prompt_ids(tok, messages, "chatglm3") == want + [special["<|assistant|>"]]
