"""Tokeniser (one token per Han character), packing with exact token accounting, the chat format and its labels."""
import json

import numpy as np
import pytest

from dataset import (IGNORE_INDEX, ChatCollator, build_chat_dataset, build_lm_dataset, chat_prompt_ids, chat_tokens,
                     pack_blocks, token_accounting, unigram_perplexity)
from model import clean_text, spaceless
from train_tokenizer import train_tokenizer

TEXTS = ["中国人民今天很高兴。", "北京", "1998年经济发展很快，GDP增长了8%。", "短", "人民日报的新闻报道很长很长很长。"]


@pytest.fixture(scope="module")
def tok():
    return spaceless(train_tokenizer(TEXTS * 2 + ["用户助手：你我叫什么名字？"], min_frequency=1))


def test_one_token_per_character(tok):
    text = "1998年经济发展，GDP增长了8%。"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids  # digits and letters too (1 ##9 ##9 ##8)
    assert tok.decode(ids) == text  # BERT decode's spaces between characters are removed
    assert tok.convert_ids_to_tokens(tok("中国", add_special_tokens=False)["input_ids"]) == ["中", "国"]
    assert tok("火星", add_special_tokens=False)["input_ids"] == [tok.unk_token_id] * 2  # not in the vocabulary
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert clean_text("你 好 ， new york 1998 年") == "你好，new york 1998年"


def test_packing_keeps_every_document_and_tail(tok):
    """Tokens in blocks = document tokens + separators - final remainder: short documents and tails are kept
    (the original recipe dropped every chunk shorter than 512 tokens, i.e. here: everything)."""
    texts = TEXTS * 7
    for block_size in (4, 7, 16, 64):
        blocks, acc = build_lm_dataset(texts, tok, block_size)
        lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        assert acc == token_accounting(lengths, block_size)
        assert acc["block_tokens"] == sum(lengths) + 2 * len(texts) - acc["remainder"] and acc["remainder"] < block_size
        assert len(blocks) * block_size == acc["block_tokens"]
        stream = []
        for t in texts:
            stream += [tok.cls_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
        got = [i for row in blocks["input_ids"] for i in row]
        assert got == stream[:len(got)]  # exactly the stream, in order: nothing skipped, nothing repeated
        assert len(stream) - len(got) == acc["remainder"]
    # what the original recipe did: drop every chunk (per document) shorter than the block size
    original = sum(n // 16 * 16 for n in lengths)
    assert original < build_lm_dataset(texts, tok, 16)[1]["block_tokens"]


def test_pack_drops_only_the_final_remainder():
    out = pack_blocks({"input_ids": [[5, 6, 7], [8], [9, 10]]}, block_size=4, cls_id=2, sep_id=3)
    assert out["input_ids"] == [[2, 5, 6, 7], [3, 2, 8, 3], [2, 9, 10, 3]]
    out = pack_blocks({"input_ids": [[5, 6, 7], [8], [9]]}, block_size=4, cls_id=2, sep_id=3)
    assert out["input_ids"] == [[2, 5, 6, 7], [3, 2, 8, 3]]  # remainder [2, 9, 3] (3 < 4 tokens) dropped


def test_chat_format_and_labels(tok):
    msgs = [{"role": "user", "content": "我叫什么"}, {"role": "assistant", "content": "你叫"},
            {"role": "user", "content": "名字"}, {"role": "assistant", "content": "我"}]
    ids, labels = chat_tokens(msgs, tok)
    assert tok.decode(ids) == "[CLS]用户：我叫什么[SEP]助手：你叫[SEP]用户：名字[SEP]助手：我[SEP]"
    learned = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tok.decode(learned) == "你叫[SEP]我[SEP]"  # only the answers and the [SEP] ending each
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels))
    # inference builds the prompt with the same function: a prefix of the training ids, up to 助手：
    prompt = chat_prompt_ids(msgs[:3], tok)
    assert ids[:len(prompt)] == prompt and tok.decode(prompt).endswith("[SEP]助手：")
    with pytest.raises(ValueError):
        chat_prompt_ids(msgs, tok)


def test_chat_dataset_drops_turns_that_do_not_fit_and_collates(tok):
    long = [{"role": "user", "content": "我" * 5}, {"role": "assistant", "content": "你" * 5},
            {"role": "user", "content": "我" * 40}, {"role": "assistant", "content": "你" * 40}]
    ds, dropped = build_chat_dataset([{"messages": long}, {"messages": [{"role": "user", "content": "我" * 90},
                                                                         {"role": "assistant", "content": "你"}]}],
                                     tok, max_tokens=40)
    assert dropped == 1 and len(ds) == 1  # the first turn of the long one fits; the other one does not at all
    assert tok.decode(ds[0]["input_ids"]).endswith("你你你你你[SEP]")
    batch = ChatCollator(tok.pad_token_id)([ds[0], {"input_ids": [2, 5], "labels": [-100, 5]}])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["labels"][1, 2:].eq(IGNORE_INDEX).all() and batch["attention_mask"][1].sum() == 2


def test_unigram_perplexity_is_add_one_over_the_vocabulary():
    train = {"input_ids": [[1, 1, 2, 2]]}
    valid = {"input_ids": [[3, 1, 2]]}  # the first token of a block is not scored
    # counts+1 over a vocabulary of 4: [1, 3, 3, 1] / 8
    assert unigram_perplexity(train, valid, 4) == pytest.approx(np.exp(-np.log(3 / 8)))


def test_real_corpus_accounting(clean_dir, tok):
    texts = [json.loads(x)["text"] for x in (clean_dir / "validation.jsonl").read_text(encoding="utf-8").splitlines()]
    full = spaceless(train_tokenizer(texts, min_frequency=1))
    blocks, acc = build_lm_dataset(texts, full, 64)
    assert acc["doc_tokens"] == sum(len(t.replace(" ", "")) for t in texts)  # one token a character
    assert len(blocks) == acc["blocks"] and acc["remainder"] < 64
