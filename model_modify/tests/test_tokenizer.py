"""train_tokenizer.py's offline stand-ins load with stock AutoTokenizer and have the real tokenizers' traits."""
import sentencepiece as spm
from transformers import AutoTokenizer

import train_tokenizer as tt
from expand_vocab import tokens_per_char


def test_sentencepiece_stand_ins_load_with_autotokenizer_with_sentencepiece_ids(tokenizers):
    for kind in ("llama", "chinese_sp"):
        tok = AutoTokenizer.from_pretrained(tokenizers[kind])
        sp = spm.SentencePieceProcessor(model_file=str(tokenizers[kind] / "tokenizer.model"))
        vocab = tok.get_vocab()
        assert len(tok) == sp.get_piece_size() and all(vocab[sp.id_to_piece(i)] == i for i in range(len(tok)))
        assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]


def test_llama_stand_in_is_english_centric_with_byte_fallback(tokenizers, corpus):
    tok = AutoTokenizer.from_pretrained(tokenizers["llama"])
    proto = tok.convert_ids_to_tokens(list(range(3, 259)))
    assert proto == [f"<0x{b:02X}>" for b in range(256)]  # byte pieces, as LLaMA's tokenizer.model
    text = "龘靐齉 rare characters"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text and tok.unk_token_id not in ids  # encodable through the bytes
    english = tt.english_texts(20_000)
    assert tokens_per_char(tok, corpus["held_out"]) > 1.1 > 0.5 > tokens_per_char(tok, english)  # ~1.3 vs ~0.35


def test_bpe_stand_in_is_byte_level_with_bloom_specials_and_mostly_unused_by_chinese(tokenizers, corpus):
    tok = AutoTokenizer.from_pretrained(tokenizers["bpe"])
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == tt.BLOOM_SPECIALS
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == tuple(tt.BLOOM_SPECIALS)
    from tokenizers.pre_tokenizers import ByteLevel
    assert set(ByteLevel.alphabet()) <= set(tok.get_vocab())
    used = {i for t in corpus["texts"] for i in tok.encode(t, add_special_tokens=False)}
    assert len(used) < 0.7 * len(tok)  # pruning to the Chinese corpus removes a lot
    text = "混合 English テキスト 😀"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_cli_writes_one_directory_per_kind(corpus, tmp_path):
    sizes = tt.main(["--kind", "chinese_sp", "--train_file", str(corpus["train"]), "--vocab_size", "3000",
                     "--output_dir", str(tmp_path)])
    assert sizes == {"chinese_sp": 3000} and len(AutoTokenizer.from_pretrained(tmp_path / "chinese_sp")) == 3000
