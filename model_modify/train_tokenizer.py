"""Offline stand-ins for the real tokenizers the vocabulary tools work on, saved as stock Hugging Face directories.

    python train_tokenizer.py                                      # all three, on the clean People's Daily corpus
    python train_tokenizer.py --kind llama --vocab_size 8000 --output_dir outputs/tokenizers   # -> outputs/tokenizers/llama

kind "llama":      an English-centric SentencePiece BPE model with byte fallback, trained with LLaMA's trainer settings
                   on English text available offline (the docstrings of the Python standard library) plus a small share
                   of Chinese: like LLaMA's tokenizer.model it splits most Chinese characters into byte pieces.
kind "chinese_sp": a Chinese SentencePiece (unigram) model trained on the corpus, standing in for Chinese-LLaMA's
                   chinese_sp.model (20,000 pieces) that expand_vocab.py merges into the base.
kind "bpe":        a byte-level BPE tokenizer.json (tokenizers library) standing in for BLOOM's: BLOOM's specials
                   (<unk> <s> </s> <pad> = ids 0-3), trained on a mix of English and Chinese, so that most of its
                   vocabulary is useless for a Chinese corpus and pruning removes a lot.
Each directory loads with `AutoTokenizer.from_pretrained(dir)` (LlamaTokenizer / PreTrainedTokenizerFast from
tokenizer.json); the SentencePiece ones also hold their `tokenizer.model`.
"""
import ast
import io
import json
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
KINDS = ("llama", "chinese_sp", "bpe")
DEFAULT_VOCAB = {"llama": 4000, "chinese_sp": 4000, "bpe": 8000}
ENGLISH_CHARS = 1_000_000  # of standard-library docstrings mixed into the llama / bpe stand-ins
BLOOM_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CHINESE_COVERAGE = 0.995  # of the chinese_sp stand-in: rare characters stay with the base's byte fallback
LLAMA_COVERAGE = 0.9995  # LLaMA's own was 0.99995 of a corpus with far less Chinese
CHINESE_SHARE_LLAMA = 0.01  # share of Chinese documents mixed into the English text of the "llama" stand-in


@dataclass
class TokenizerArguments:
    kind: str = field(default="all", metadata={"help": f"one of {', '.join(KINDS)}, or all"})
    train_file: str = field(default=str(HERE / "data/cache/clean/train.jsonl"), metadata={"help": "clean jsonl (clean_data.py)"})
    vocab_size: int | None = field(default=None, metadata={"help": f"default per kind: {DEFAULT_VOCAB}"})
    output_dir: str = field(default=str(HERE / "outputs/tokenizers"), metadata={"help": "one sub-directory per kind: <output_dir>/llama ..."})
    max_docs: int | None = field(default=None, metadata={"help": "train on the first N documents only"})

    def __post_init__(self):
        if self.kind not in (*KINDS, "all"):
            raise SystemExit(f"--kind: {self.kind!r} is not one of {', '.join(KINDS)}, all. Fix: e.g. --kind llama")
        if self.vocab_size is not None and self.vocab_size < 300:
            raise SystemExit(f"--vocab_size: {self.vocab_size} is too small (256 bytes + specials + learned pieces). "
                             f"Fix: e.g. --vocab_size 4000")
        if self.max_docs is not None and self.max_docs <= 0:
            raise SystemExit(f"--max_docs: {self.max_docs} must be > 0. Fix: drop it to use every document")
        if not Path(self.train_file).is_file():
            raise SystemExit(f"--train_file: {self.train_file} does not exist. Fix: run `python clean_data.py` first")


def english_texts(max_chars: int = ENGLISH_CHARS) -> list[str]:
    """Paragraphs of the Python standard library's docstrings: English text that is on every machine."""
    out, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text("utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for para in (ast.get_docstring(node) or "").split("\n\n"):
                    para = " ".join(para.split())
                    if len(para) > 20:
                        out.append(para)
                        total += len(para)
                        if total >= max_chars:
                            return out
    return out


def train_sentencepiece(texts, vocab_size: int, model_type: str = "bpe", byte_fallback: bool = True,
                        character_coverage: float = 0.9995) -> bytes:
    """A SentencePiece model (serialized proto) with LLaMA's trainer settings: <unk> <s> </s> = 0 1 2, no <pad>,
    digits split, identity normalization, dummy prefix, whitespace-only pieces allowed."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in texts if t.strip()]), model_writer=model, model_type=model_type,
        vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=byte_fallback, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=character_coverage, max_sentence_length=1 << 16,
        max_sentencepiece_length=16, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2, minloglevel=2,
        input_sentence_size=200_000, shuffle_input_sentence=False)
    return model.getvalue()


def save_sentencepiece(model_bytes: bytes, out_dir):
    """tokenizer.model -> a stock HF directory (LlamaTokenizer; tokenizer.json converted by transformers)."""
    from transformers import LlamaTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model_bytes)
    (out / "tokenizer.json").unlink(missing_ok=True)  # else from_pretrained would read a stale one
    tok = LlamaTokenizer.from_pretrained(out)  # reads tokenizer.model (no tokenizer.json yet) and converts it
    tok.save_pretrained(out)
    return tok


def train_bpe(texts, vocab_size: int, out_dir=None):
    """A BLOOM-like byte-level BPE: specials 0-3, all 256 byte tokens, no normalization, no prefix space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BLOOM_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([t for t in texts if t.strip()], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side="left", clean_up_tokenization_spaces=False)
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast


def train_tokenizer(kind: str, texts: list[str], vocab_size: int | None = None, out_dir=None,
                    english_chars: int = ENGLISH_CHARS):
    """One stand-in (see the module docstring), trained on the Chinese `texts` (+ English where the kind wants it),
    saved to `out_dir`; returns the loaded HF tokenizer."""
    vocab_size = vocab_size or DEFAULT_VOCAB[kind]
    if kind == "chinese_sp":
        model = train_sentencepiece(texts, vocab_size, model_type="unigram", byte_fallback=False,
                                    character_coverage=CHINESE_COVERAGE)
        return save_sentencepiece(model, out_dir)
    english = english_texts(english_chars)
    if kind == "llama":
        chinese = texts[:max(1, int(len(english) * CHINESE_SHARE_LLAMA))]
        model = train_sentencepiece(english + chinese, vocab_size, character_coverage=LLAMA_COVERAGE)
        return save_sentencepiece(model, out_dir)
    if kind == "bpe":
        return train_bpe(english + list(texts), vocab_size, out_dir)
    raise ValueError(f"kind {kind!r} is not one of {KINDS}")


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses(args=argv)
    with open(args.train_file, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()][:args.max_docs]
    kinds = KINDS if args.kind == "all" else (args.kind,)
    sizes = {}
    for kind in kinds:
        out = Path(args.output_dir) / kind
        tok = train_tokenizer(kind, texts, args.vocab_size, out)
        sizes[kind] = len(tok)
        print(f"{kind}: {len(tok)} tokens -> {out}")
    return sizes


if __name__ == "__main__":
    main(sys.argv[1:])
