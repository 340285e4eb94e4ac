"""tokenization.py: the official ids (raw SentencePiece + the official special-token logic), Baichuan2-Chat's
build_chat_input and fine-tune.py labels, re-derived here from their definitions."""
import json

import pytest
import sentencepiece as spm

from model import load_tokenizer
from tokenization import build_tokenizer, chat_ids, conversation_labels, prompt_ids

VARIED = ["你好，世界！今天天气很好。", "我们一起学习自然语言处理，1+1=2，12345。", "Hello world, this is English text.",
          "问：中国的首都是哪里？\n\n答：北京。", "  两个空格\t制表符\n换行 😀 全角，。！？", " 前导空格", "末尾空格  ",
          "多个\n\n\n换行", "数字3.1415926和2024年12月", "<p>标签</p><br/>", "混合English和中文mixed", "𠀀生僻字𪚥", "a  b   c",
          "ＡＢＣ全角字母１２３", "def f(x):\n    return x ** 2\n", "~!@#$%^&*()_+`-=[]{}|;':\",./<>?"]


def official_encode(sp, text):
    """The official BaichuanTokenizer: <unk> <s> </s> in the text are those tokens, the rest sp.encode; no bos/eos."""
    import re
    ids = []
    for part in re.split(r"(<unk>|<s>|</s>)", text):
        ids += [{"<unk>": 0, "<s>": 1, "</s>": 2}[part]] if part in ("<unk>", "<s>", "</s>") else sp.encode(part) if part else []
    return ids


def check_ids(tok, model_file, texts):
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == official_encode(sp, text), text
        assert tok(text)["input_ids"] == official_encode(sp, text), text  # add_bos_token/add_eos_token false
        assert tok.decode(official_encode(sp, text)) == text, text


def test_small_tokenizer_official_ids(sp_model, tmp_path):
    tok = build_tokenizer(sp_model)
    check_ids(tok, sp_model, VARIED + ["你好</s>世界<s>", "<reserved_192><reserved_193>"])
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.padding_side) == (0, 1, 2, "left")
    assert tok.convert_ids_to_tokens([195, 196]) == ["<reserved_192>", "<reserved_193>"]  # reserved, as 195/196 in Baichuan2
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert [again(t)["input_ids"] for t in VARIED] == [tok(t)["input_ids"] for t in VARIED]
    assert chat_ids(sp_model.parent) == (195, 196)  # train_tokenizer wrote generation_config.json


def test_real_tokenizer_official_ids(real_dir):
    tok = build_tokenizer(real_dir / "tokenizer.model")
    assert len(tok) == 125696
    check_ids(tok, real_dir / "tokenizer.model", VARIED + ["你好</s>世界", "<reserved_106>是user"])
    assert chat_ids(real_dir) == (195, 196)
    official = json.loads((real_dir / "tokenizer_config.json").read_text())
    assert (official["add_bos_token"], official["add_eos_token"], official["pad_token"]["content"]) == (False, False, "<unk>")


def official_build_chat_input(encode, messages, user, assistant, max_new_tokens, model_max_length):
    """generation_utils.build_chat_input of Baichuan2-Chat, re-derived (rounds split at user messages)."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    rounds, cur = [], []
    for m in messages[1 if system else 0:]:
        if m["role"] == "user" and cur:
            rounds.append(cur)
            cur = []
        cur.append(m)
    rounds += [cur] if cur else []
    max_input = model_max_length - max_new_tokens
    max_history = max_input - len(encode(system))
    history = []
    for r in rounds[::-1]:
        tokens = [t for m in r for t in [user if m["role"] == "user" else assistant] + encode(m["content"])]
        if not history or len(history) + len(tokens) <= max_history:
            history = tokens + history
            if len(history) < max_history:
                continue
        break
    ids = encode(system) + history + ([] if messages[-1]["role"] == "assistant" else [assistant])
    return ids[-max_input:]


CHAT = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "你好，请介绍一下北京。"},
        {"role": "assistant", "content": "北京是中国的首都。"}, {"role": "user", "content": "那上海呢？"},
        {"role": "assistant", "content": "上海是中国最大的城市之一。"}, {"role": "user", "content": "谢谢"}]


@pytest.mark.parametrize("budget", [(2048, 4096), (0, 40), (0, 25), (0, 12), (0, 5), (10, 12)])
def test_prompt_ids_equal_build_chat_input(sp_model, budget):
    tok = build_tokenizer(sp_model)
    encode = lambda t: tok.encode(t, add_special_tokens=False)  # noqa: E731
    for messages in (CHAT, CHAT[1:], CHAT[1:2], CHAT[:5]):
        want = official_build_chat_input(encode, messages, 195, 196, *budget)
        assert prompt_ids(tok, messages, 195, 196, max_new_tokens=budget[0], model_max_length=budget[1]) == want


def test_training_labels_equal_fine_tune_py(sp_model):
    """fine-tune.py preprocessing: human -> user_tokens + ids, labels eos + ignore; gpt -> assistant_tokens + ids,
    labels ignore + ids; then eos / eos."""
    tok = build_tokenizer(sp_model)
    conv = CHAT[1:5]
    ids, labels = [], []
    for m in conv:
        value = tok.encode(m["content"], add_special_tokens=False)
        if m["role"] == "user":
            ids += [195] + value
            labels += [2] + [-100] * len(value)
        else:
            ids += [196] + value
            labels += [-100] + value
    ids, labels = ids + [2], labels + [2]
    assert conversation_labels(tok, conv, 195, 196) == (ids, labels)
    with pytest.raises(ValueError, match="end with an assistant"):
        conversation_labels(tok, CHAT, 195, 196)
