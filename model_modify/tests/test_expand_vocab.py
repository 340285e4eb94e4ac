"""Vocabulary expansion: old ids unchanged, old-vocabulary outputs unchanged, the mean-init rule row by row, no new
token on an old padding row, fewer tokens per Chinese character, BPE expansion as vocabulary + merges."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import expand_vocab as ev
REFERENCE = Path(__file__).resolve().parents[2].parent / "shared/reference"  # optional real files


def weights(path) -> dict:
    return load_file(str(Path(path) / "model.safetensors"))


def rows(model):
    head = model.get_output_embeddings()
    return model.get_input_embeddings().weight.detach(), (None if head is None else head.weight.detach())


def test_sentencepiece_merge_appends_new_pieces_in_order_with_base_ids_unchanged(tokenizers):
    base = (tokenizers["llama"] / "tokenizer.model").read_bytes()
    chinese = (tokenizers["chinese_sp"] / "tokenizer.model").read_bytes()
    merged, new = ev.merge_sentencepiece(base, chinese)
    b, c, m = ev.read_proto(base), ev.read_proto(chinese), ev.read_proto(merged)
    assert [(p.piece, p.score, p.type) for p in m.pieces[:len(b.pieces)]] == [(p.piece, p.score, p.type) for p in b.pieces]
    have = {p.piece for p in b.pieces}
    assert new == [p.piece for p in c.pieces if p.type == p.NORMAL and p.piece not in have]  # in order
    assert [p.piece for p in m.pieces[len(b.pieces):]] == new and len(new) > 500
    assert m.trainer_spec.byte_fallback and m.normalizer_spec == b.normalizer_spec
    zero, _ = ev.merge_sentencepiece(base, chinese, score="zero")  # Chinese-LLaMA's script: score 0
    assert {p.score for p in ev.read_proto(zero).pieces[len(b.pieces):]} == {0.0}


def test_expanded_sentencepiece_tokenizer_keeps_old_ids_and_agrees_with_sentencepiece(expanded, tiny_dirs, corpus):
    import sentencepiece as spm
    out, report = expanded["llama"]
    old, new = AutoTokenizer.from_pretrained(tiny_dirs["llama"]), AutoTokenizer.from_pretrained(out)
    assert report["old_ids_unchanged"] and ev.old_ids_unchanged(old, new)
    assert len(new) == report["new_vocab"] == report["old_vocab"] + report["added"]
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    vocab = new.get_vocab()
    assert all(vocab[sp.id_to_piece(i)] == i for i in range(sp.get_piece_size()))  # HF ids == SentencePiece ids
    texts = corpus["held_out"][:40]
    agree = sum(new.encode(t, add_special_tokens=False) == sp.encode(t) for t in texts) / len(texts)
    assert agree >= 0.9, agree  # rank scores: the fast tokenizer segments as SentencePiece does


def test_tokens_per_chinese_character_fall(expanded, tiny_dirs, corpus):
    for name in ("llama", "bloom_english"):
        out, report = expanded[name]
        old, new = AutoTokenizer.from_pretrained(tiny_dirs[name]), AutoTokenizer.from_pretrained(out)
        before, after = ev.tokens_per_char(old, corpus["held_out"]), ev.tokens_per_char(new, corpus["held_out"])
        assert after < 0.8 * before, (name, before, after)
        assert report["tokens_per_char_after"] < report["tokens_per_char_before"]


@pytest.mark.parametrize("name", ["llama", "llama_padded", "bloom_english"])
def test_resized_model_gives_the_same_logits_at_old_ids_for_old_vocabulary_text(expanded, tiny_dirs, corpus, name):
    out, report = expanded[name]
    old_tok = AutoTokenizer.from_pretrained(tiny_dirs[name])
    old = AutoModelForCausalLM.from_pretrained(tiny_dirs[name]).eval()
    new = AutoModelForCausalLM.from_pretrained(out).eval()  # stock from_pretrained loads the result
    n_old = old.get_input_embeddings().weight.shape[0]
    assert report["max_abs_logit_diff_old_ids"] < 1e-5
    with torch.no_grad():
        for text in corpus["held_out"][:5] + ["Return the value of the attribute, or the default."]:
            ids = old_tok(text, return_tensors="pt").input_ids
            diff = (old(input_ids=ids).logits - new(input_ids=ids).logits[..., :n_old]).abs().max().item()
            assert diff < 1e-5, (name, diff)
    for a, b in zip(rows(old), rows(new)):
        if a is not None:
            assert torch.equal(a, b[:n_old])  # every old row (padding rows too) untouched


@pytest.mark.parametrize("name", ["llama", "bloom_english"])
def test_every_new_row_is_the_mean_of_the_old_rows_of_its_old_split(expanded, tiny_dirs, name):
    out, report = expanded[name]
    old_tok = AutoTokenizer.from_pretrained(tiny_dirs[name])
    old = AutoModelForCausalLM.from_pretrained(tiny_dirs[name])
    new = AutoModelForCausalLM.from_pretrained(out)
    new_tok = AutoTokenizer.from_pretrained(out)
    n_old = old.get_input_embeddings().weight.shape[0]
    tied = report["tied"]
    assert tied == (name == "bloom_english")
    (old_in, old_head), (new_in, new_head) = rows(old), rows(new)
    vocab = new_tok.get_vocab()
    added = [(t, i) for t, i in vocab.items() if i >= n_old]
    assert len(added) == report["added"] > 100
    for token, i in added:
        parts = ev.old_split(old_tok, token)
        assert parts and max(parts) < len(old_tok), token  # split into OLD tokens
        torch.testing.assert_close(new_in[i], old_in[parts].mean(0), rtol=0, atol=1e-6)
        if not tied:  # --head_init mean (default): the mean of all old head rows
            torch.testing.assert_close(new_head[i], old_head.mean(0), rtol=0, atol=1e-6)
    if tied:
        assert new.get_output_embeddings().weight.data_ptr() == new.get_input_embeddings().weight.data_ptr()


def test_no_new_token_lands_on_an_old_padding_row(expanded, tiny_dirs, corpus):
    """The original zero_nlp bug: add_tokens on a model whose config.vocab_size > len(tokenizer) put the new
    tokens on the existing padding rows. Here the new ids start after the model's old rows."""
    out, report = expanded["llama_padded"]
    old_tok = AutoTokenizer.from_pretrained(tiny_dirs["llama_padded"])
    old_rows = json.loads((tiny_dirs["llama_padded"] / "config.json").read_text())["vocab_size"]
    assert old_rows == len(old_tok) + 37 and report["old_rows"] == old_rows
    new_tok = AutoTokenizer.from_pretrained(out)
    new_ids = [i for t, i in new_tok.get_vocab().items() if t not in old_tok.get_vocab()]
    gap = set(range(len(old_tok), old_rows))
    assert report["first_new_id"] == old_rows and min(i for i in new_ids if i not in gap) == old_rows
    # the ids of the old padding rows hold placeholder pieces that no text encodes to
    assert {new_tok.convert_ids_to_tokens(i) for i in gap} == {f"<unused_{i}>" for i in gap}
    used = {i for t in corpus["held_out"] for i in new_tok.encode(t)}
    assert not used & gap
    assert json.loads((out / "config.json").read_text())["vocab_size"] == report["new_rows"] >= report["last_new_id"] + 1


def test_bpe_expansion_adds_vocabulary_and_merges_and_only_coarsens_old_encodings(expanded, tiny_dirs, corpus):
    out, report = expanded["bloom_english"]
    old_tok = AutoTokenizer.from_pretrained(tiny_dirs["bloom_english"])
    new_tok = AutoTokenizer.from_pretrained(out)
    old_spec = json.loads((tiny_dirs["bloom_english"] / "tokenizer.json").read_text())
    new_spec = json.loads((out / "tokenizer.json").read_text())
    assert len(new_spec["model"]["vocab"]) == len(old_spec["model"]["vocab"]) + report["added"]  # proper vocabulary
    assert [t["content"] for t in new_spec["added_tokens"]] == [t["content"] for t in old_spec["added_tokens"]]
    old_merges = old_spec["model"]["merges"]
    assert new_spec["model"]["merges"][:len(old_merges)] == old_merges and len(new_spec["model"]["merges"]) > len(old_merges)
    # padded model (50 padding rows): new ids after the old rows, rows rounded up to a multiple of 64
    assert report["first_new_id"] == report["old_rows"] == len(old_tok) + 50 and report["new_rows"] % 64 == 0
    english = ["Return a new list containing all items from the iterable in ascending order.",
               "If the key is not found, the default value is returned instead."]
    for text in english:  # no new merge applies: exactly the old ids
        assert new_tok.encode(text) == old_tok.encode(text)
    for text in corpus["held_out"][:30]:  # every new token boundary is an old one (old merges keep priority)
        def boundaries(tok):
            ends, pos = set(), 0
            for t in tok.convert_ids_to_tokens(tok.encode(text)):
                pos += len(t)
                ends.add(pos)
            return ends
        assert boundaries(new_tok) <= boundaries(old_tok)


def test_mean_init_keeps_the_untrained_loss_close_to_the_original_and_beats_random(expanded_pretrained):
    """Loss per character (nats) on held-out text of the untrained expanded model, fed the OLD ids of the text: the
    new rows must take little probability from the old tokens. Mean init stays close to the original's loss,
    random init (N(0, initializer_range) rows, what a plain resize gives) does not."""
    r = expanded_pretrained[1]
    original, mean, rand = r["nll_per_char_original"], r["nll_per_char_old_ids_mean_init"], r["nll_per_char_old_ids_random_init"]
    assert mean - original < 0.03 * original, r  # measured: +1.0% (seed 42), +1.2% (seed 7)
    assert rand - original > 2 * (mean - original) + 0.02 * original, r  # measured: +13.6%, +15.0%
    for key in ("nll_per_char_new_ids_mean_init", "nll_per_char_new_ids_random_init"):
        assert r[key] < 1.2 * original, r  # the new ids start near the original too (the second stage lowers it)


def test_split_mean_head_init_follows_the_rule_row_by_row(tiny_dirs, tokenizers):
    """--head_init split_mean: the untied head's new rows are the mean of the split's head rows (as the input)."""
    old_tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    old_in, old_head = (w.clone() for w in rows(model))
    merged, new = ev.merge_sentencepiece((tokenizers["llama"] / "tokenizer.model").read_bytes(),
                                         (tokenizers["chinese_sp"] / "tokenizer.model").read_bytes())
    new_ids = {t: len(old_tok) + k for k, t in enumerate(new[:200])}
    info = ev.resize_model(model, old_tok, new_ids, 64, "mean", "split_mean")
    assert info["new_rows"] % 64 == 0 and info["head_init"] == "split_mean"
    new_in, new_head = rows(model)
    for token, i in new_ids.items():
        parts = ev.old_split(old_tok, token)
        torch.testing.assert_close(new_in[i], old_in[parts].mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(new_head[i], old_head[parts].mean(0), rtol=0, atol=1e-6)


def test_tokenizer_only_merge_cli(tokenizers, corpus, tmp_path):
    report = ev.main(["--base_sp_model", str(tokenizers["llama"] / "tokenizer.model"),
                      "--chinese_sp_model", str(tokenizers["chinese_sp"] / "tokenizer.model"),
                      "--held_out_file", str(corpus["test"]), "--output_dir", str(tmp_path)])
    assert report["old_ids_unchanged"] and report["tokens_per_char_after"] < report["tokens_per_char_before"]
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == AutoTokenizer.from_pretrained(tmp_path).get_vocab()
    assert len(AutoTokenizer.from_pretrained(tmp_path)) == report["new_vocab"] and (tmp_path / "tokenizer.model").is_file()


@pytest.mark.skipif(not (REFERENCE / "llama/tokenizer.model").is_file()
                    or not (REFERENCE / "chinese_llama/chinese_sp.model").is_file(),
                    reason="../shared/reference/{llama/tokenizer.model,chinese_llama/chinese_sp.model} not present")
def test_merge_reproduces_the_published_chinese_llama_tokenizer(corpus):
    import sentencepiece as spm
    base = (REFERENCE / "llama/tokenizer.model").read_bytes()
    for score in ("zero", "rank"):
        merged, new = ev.merge_sentencepiece(base, (REFERENCE / "chinese_llama/chinese_sp.model").read_bytes(), score)
        assert len(ev.read_proto(merged).pieces) == 49953 and len(new) == 49953 - 32000
        llama, chinese = spm.SentencePieceProcessor(model_proto=base), spm.SentencePieceProcessor(model_proto=merged)
        texts = corpus["held_out"]
        before = sum(len(llama.encode(t)) for t in texts) / sum(map(len, texts))
        after = sum(len(chinese.encode(t)) for t in texts) / sum(map(len, texts))
        assert 1.35 < before < 1.7 and 0.6 < after < 0.8, (before, after)  # published: ~1.54 -> ~0.70
