"""Vocabulary expansion with proofs: new Chinese tokens for a causal LM, old ids and old outputs unchanged.

    python expand_vocab.py                                                      # offline default (bash train.sh)
    python expand_vocab.py --model_name_or_path outputs/base_llama --corpus data/cache/clean/train.jsonl
    python expand_vocab.py --model_name_or_path /models/llama-7b --chinese_sp_model chinese_sp.model --output_dir ...
    python expand_vocab.py --base_sp_model ../shared/reference/llama/tokenizer.model \\
        --chinese_sp_model ../shared/reference/chinese_llama/chinese_sp.model --output_dir outputs/chinese_llama_tokenizer

SentencePiece base (LLaMA-style tokenizer.model): the Chinese-LLaMA merge. A Chinese SentencePiece model (given, or
trained here on --corpus) contributes its pieces that the base lacks, appended to the base proto in their order: the
base pieces and their ids are unchanged. --new_piece_score zero gives the new pieces score 0 as Chinese-LLaMA's
merge script did; the default `rank` continues the base's scores below its lowest one, so that the fast tokenizer
(tokenizer.json, what AutoTokenizer loads) segments as SentencePiece does (same pieces and ids either way).
Byte-level BPE base (tokenizer.json, e.g. BLOOM): a BPE is trained on --corpus with the base's pre-tokenizer and its
merges are appended after the base's merges as proper vocabulary + merges (not added_tokens): every old merge still
has priority, so the new encoding of any text is the old one with some neighbours merged, and text none of whose
neighbours form a new merge (English, say) encodes exactly as before.
Model: embeddings and head grow to the new vocabulary; new ids start at the model's OLD number of rows (never on
an old padding row, where the original zero_nlp put ~150 new tokens), rows padded to --pad_to_multiple_of; each new
input row (and a tied head's) = the mean of the old rows of the pieces the OLD tokenizer splits it into; an untied
head's new rows = the mean of all old head rows (--head_init mean; measured in the README: the split's mean at the
head, --head_init split_mean, gives byte-split pieces high logits wherever the old model expects those bytes).
Verification (expand_report.json): old ids unchanged, old-id text gives the same logits at the old ids, tokens per
Chinese character before/after on held-out text, loss per character of the untrained expanded model (mean init vs
random init; on the old ids and on the new ids) against the original's.
"""
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE / "data/cache/clean/train.jsonl"
DEFAULT_HELD_OUT = HERE / "data/cache/clean/test.jsonl"


@dataclass
class ExpandArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "causal LM dir (model + tokenizer) to expand; default outputs/base_llama"})
    base_sp_model: str | None = field(default=None, metadata={"help": "tokenizer only: a base tokenizer.model to merge into (no model)"})
    chinese_sp_model: str | None = field(default=None, metadata={"help": "a Chinese SentencePiece .model to merge; default: trained on --corpus"})
    corpus: str | None = field(default=str(DEFAULT_CORPUS), metadata={"help": "clean .jsonl / .txt file or dir: trains the new tokens"})
    new_vocab_size: int = field(default=4000, metadata={"help": "size of the Chinese SP model / BPE trained on --corpus"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "BPE: add at most this many tokens"})
    new_piece_score: str = field(default="rank", metadata={"help": "SP: rank (fast == slow tokenizer) or zero (Chinese-LLaMA's script)"})
    pad_to_multiple_of: int | None = field(default=None, metadata={"help": "rows; default 64 if the model already had padding rows, else 1"})
    init: str = field(default="mean", metadata={"help": "new rows: mean (input: of the old split's rows) or random (N(0, initializer_range))"})
    head_init: str = field(default="mean", metadata={"help": "untied head rows: mean (of all old head rows) or split_mean (of the split's, like the input)"})
    held_out_file: str | None = field(default=str(DEFAULT_HELD_OUT), metadata={"help": "held-out Chinese text for the verification"})
    max_eval_texts: int = field(default=200)
    output_dir: str = field(default=str(HERE / "outputs/expanded_llama"))
    seed: int = 42

    def __post_init__(self):
        if self.model_name_or_path is not None and self.base_sp_model is not None:
            raise SystemExit("--base_sp_model: a tokenizer-only merge takes no --model_name_or_path. Fix: drop one")
        if self.model_name_or_path is None and self.base_sp_model is None:
            self.model_name_or_path = str(HERE / "outputs/base_llama")
        if self.model_name_or_path is not None and not (Path(self.model_name_or_path) / "config.json").is_file():
            raise SystemExit(f"--model_name_or_path: {self.model_name_or_path} has no config.json. Fix: a directory "
                             f"written by save_pretrained (bash train.sh builds outputs/base_llama)")
        for name in ("base_sp_model", "chinese_sp_model"):
            if getattr(self, name) is not None and not Path(getattr(self, name)).is_file():
                raise SystemExit(f"--{name}: {getattr(self, name)} is not a file. Fix: a SentencePiece .model file")
        if self.chinese_sp_model is None and (self.corpus is None or not Path(self.corpus).exists()):
            raise SystemExit(f"--corpus: {self.corpus} does not exist. Fix: run `python clean_data.py`, or pass "
                             f"--chinese_sp_model")
        if self.held_out_file is not None and not Path(self.held_out_file).is_file():
            raise SystemExit(f"--held_out_file: {self.held_out_file} is not a file. Fix: clean_data.py's test.jsonl")
        if self.new_vocab_size < 100:
            raise SystemExit(f"--new_vocab_size: {self.new_vocab_size} must be >= 100. Fix: e.g. --new_vocab_size 4000")
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise SystemExit(f"--max_new_tokens: {self.max_new_tokens} must be > 0. Fix: drop it for no cap")
        if self.new_piece_score not in ("rank", "zero"):
            raise SystemExit(f"--new_piece_score: {self.new_piece_score!r} is not rank or zero. Fix: --new_piece_score rank")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of <= 0:
            raise SystemExit(f"--pad_to_multiple_of: {self.pad_to_multiple_of} must be > 0. Fix: e.g. 64, or 1 for none")
        if self.head_init not in ("mean", "split_mean"):
            raise SystemExit(f"--head_init: {self.head_init!r} is not mean or split_mean. Fix: --head_init mean")
        if self.init not in ("mean", "random"):
            raise SystemExit(f"--init: {self.init!r} is not mean or random. Fix: --init mean")
        if self.max_eval_texts <= 0:
            raise SystemExit(f"--max_eval_texts: {self.max_eval_texts} must be > 0. Fix: e.g. 200")


def read_corpus(path) -> list[str]:
    """Texts of a clean .jsonl ({"text"}) or a .txt (one a line), or of every such file under a directory."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".txt"))
    texts = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            lines = [line.rstrip("\n") for line in fh if line.strip()]
        texts += [json.loads(line)["text"] for line in lines] if f.suffix == ".jsonl" else lines
    return texts


# ---------------------------------------------------------------- SentencePiece: the Chinese-LLaMA merge
def read_proto(model_bytes: bytes):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def merge_sentencepiece(base: bytes, chinese: bytes, score: str = "rank", first_new_id: int | None = None) -> tuple[bytes, list[str]]:
    """Append the pieces of `chinese` that `base` lacks to `base`, in order -> (merged model, new pieces).

    Base pieces keep their ids. `first_new_id` > len(base) (a model with padding rows) fills the gap with UNUSED
    pieces that no text ever encodes to, so the new pieces start after the model's old rows.
    """
    proto, extra = read_proto(base), read_proto(chinese)
    have = {p.piece for p in proto.pieces}
    low = min((p.score for p in proto.pieces), default=0.0)
    for k in range(len(proto.pieces), first_new_id or 0):
        gap = proto.pieces.add()
        gap.piece, gap.score, gap.type = f"<unused_{k}>", 0.0, gap.UNUSED
    new = []
    for p in extra.pieces:
        if p.type == p.NORMAL and p.piece not in have:
            piece = proto.pieces.add()
            piece.piece, piece.score = p.piece, (0.0 if score == "zero" else low - 1 - len(new))
            have.add(p.piece)
            new.append(p.piece)
    return proto.SerializeToString(), new


# ---------------------------------------------------------------- byte-level BPE: new vocabulary + merges
def expand_bpe(tokenizer, texts: list[str], new_vocab_size: int, max_new_tokens: int | None = None,
               first_new_id: int | None = None):
    """A BPE trained on `texts` with the base's pre-tokenizer; its merges whose parts exist are appended after the
    base's merges, new results get ids from `first_new_id` (default len(tokenizer)) -> (new tokenizer, new tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise SystemExit(f"tokenizer model is {spec['model']['type']}, not BPE. Fix: pass a BPE tokenizer.json or a SentencePiece model")
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
    learner.normalizer = tokenizer.backend_tokenizer.normalizer
    learner.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=new_vocab_size, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    learned = json.loads(learner.to_str())["model"]["merges"]
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    pairs = {tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges}
    next_id = max(first_new_id or 0, len(tokenizer), max(vocab.values()) + 1)
    new = []
    for m in learned:
        a, b = (m if isinstance(m, list) else m.split(" ", 1))
        if a not in vocab or b not in vocab or (a, b) in pairs:
            continue
        if a + b not in vocab:
            if max_new_tokens is not None and len(new) >= max_new_tokens:
                break
            vocab[a + b] = next_id
            next_id += 1
            new.append(a + b)
        merges.append([a, b])
        pairs.add((a, b))
    expanded = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                       **{k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)},
                                       padding_side=tokenizer.padding_side, clean_up_tokenization_spaces=False)
    return expanded, new


# ---------------------------------------------------------------- model resize with mean initialisation
def old_split(old_tokenizer, token: str) -> list[int]:
    """The old ids the OLD tokenizer's model splits a new token string into (BPE or converted SentencePiece)."""
    return [t.id for t in old_tokenizer.backend_tokenizer.model.tokenize(token)]


@torch.no_grad()
def resize_model(model, old_tokenizer, new_tokens: dict[str, int], pad_to_multiple_of: int = 1, init: str = "mean",
                 head_init: str = "mean", seed: int = 42) -> dict:
    """Grow embeddings + head to cover `new_tokens` ({token: new id}, all >= the old row count); init the new rows.

    init mean: input row = mean of the old input rows of old_split(token). The head row (untied) = the mean of ALL
    old head rows (head_init mean: new logits start at the average logit, so the new tokens take little probability
    from the old ones) or, head_init split_mean, the mean of the old head rows of the split as for the input (a tied
    head always gets the input's row). Rows that only pad = mean of all old rows.
    init random: N(0, initializer_range) for every new row, as a plain resize does.
    """
    old_rows = model.get_input_embeddings().weight.shape[0]
    assert min(new_tokens.values(), default=old_rows) >= old_rows, "a new token would land on an old row"
    rows = max(new_tokens.values(), default=old_rows - 1) + 1
    rows = -(-rows // pad_to_multiple_of) * pad_to_multiple_of
    head = model.get_output_embeddings()
    tied = head is None or head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.resize_token_embeddings(rows, mean_resizing=False)
    gen = torch.Generator().manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    split = {i: old_split(old_tokenizer, token) for token, i in new_tokens.items()}
    for w, by_split in [(model.get_input_embeddings().weight, True)] + \
            ([] if tied else [(model.get_output_embeddings().weight, head_init == "split_mean")]):
        if init == "random":
            w[old_rows:] = torch.randn(rows - old_rows, w.shape[1], generator=gen).to(w) * std
            continue
        w[old_rows:] = w[:old_rows].mean(0)
        for i, parts in split.items():
            if parts and by_split:
                w[i] = w[parts].mean(0)
    model.config.vocab_size = rows
    return {"old_rows": old_rows, "new_rows": rows, "tied": tied, "init": init,
            "head_init": "tied" if tied else head_init if init == "mean" else "random",
            "first_new_id": min(new_tokens.values(), default=None), "last_new_id": max(new_tokens.values(), default=None)}


# ---------------------------------------------------------------- verification
def tokens_per_char(tokenizer, texts: list[str]) -> float:
    return sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts) / max(1, sum(map(len, texts)))


@torch.no_grad()
def nll_per_char(model, tokenizer, texts: list[str], max_length: int = 256) -> float:
    """Summed next-token loss (nats) of each text / its characters: comparable across tokenizers."""
    model.eval()
    total, chars = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).input_ids
        if ids.shape[1] < 2:
            continue
        out = model(input_ids=ids, labels=ids)
        total += out.loss.item() * (ids.shape[1] - 1)
        chars += len(tokenizer.decode(ids[0], skip_special_tokens=True))
    return total / max(chars, 1)


@torch.no_grad()
def max_logit_diff_at_old_ids(old_model, new_model, old_tokenizer, texts: list[str], max_length: int = 128) -> float:
    """Old-vocabulary input (the OLD tokenizer's ids) -> max |logit difference| over the old ids."""
    n_old = old_model.get_output_embeddings().weight.shape[0]
    diff = 0.0
    for text in texts:
        ids = old_tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).input_ids
        a, b = old_model(input_ids=ids).logits, new_model(input_ids=ids).logits[..., :n_old]
        diff = max(diff, (a - b).abs().max().item())
    return diff


def old_ids_unchanged(old_tokenizer, new_tokenizer) -> bool:
    new_vocab = new_tokenizer.get_vocab()
    return all(new_vocab.get(tok) == i for tok, i in old_tokenizer.get_vocab().items())


def same_encodings(old_tokenizer, new_tokenizer, texts: list[str]) -> float:
    """Share of texts the new tokenizer encodes to exactly the old ids."""
    same = sum(old_tokenizer.encode(t) == new_tokenizer.encode(t) for t in texts)
    return same / max(1, len(texts))


def verify(old_model, new_model, old_tokenizer, new_tokenizer, held_out: list[str], english: list[str]) -> dict:
    """The checks of expand_report.json (old ids, old-id outputs, tokens per character, unchanged old text)."""
    report = {"old_ids_unchanged": old_ids_unchanged(old_tokenizer, new_tokenizer),
              "tokens_per_char_before": round(tokens_per_char(old_tokenizer, held_out), 4),
              "tokens_per_char_after": round(tokens_per_char(new_tokenizer, held_out), 4),
              "english_encodings_unchanged": same_encodings(old_tokenizer, new_tokenizer, english),
              "held_out_texts": len(held_out), "held_out_chars": sum(map(len, held_out))}
    if old_model is not None:
        report["max_abs_logit_diff_old_ids"] = max_logit_diff_at_old_ids(old_model, new_model, old_tokenizer,
                                                                         held_out[:20] + english[:20])
    return report


def compare_inits(args, original, model, old_tokenizer, new_tokenizer, new_ids: dict, pad: int, texts: list[str]) -> dict:
    """Loss per character (nats) on held-out text: the original; the expanded untrained model on the OLD ids (close to
    the original when the new rows take little probability) and on the NEW ids (where the second stage starts),
    for this run's init and for the contrast (random vs mean)."""
    out = {"nll_per_char_original": nll_per_char(original, old_tokenizer, texts)}
    contrast = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch.float32).eval()
    other = "random" if args.init == "mean" else "mean"
    resize_model(contrast, old_tokenizer, new_ids, pad, other, args.head_init, args.seed)
    for init, m in ((args.init, model), (other, contrast)):
        out[f"nll_per_char_old_ids_{init}_init"] = nll_per_char(m, old_tokenizer, texts)
        out[f"nll_per_char_new_ids_{init}_init"] = nll_per_char(m, new_tokenizer, texts)
    return {k: round(v, 4) for k, v in out.items()}


# ---------------------------------------------------------------- the tool
def is_sentencepiece(tokenizer_dir: Path) -> bool:
    return (tokenizer_dir / "tokenizer.model").is_file()


def expand_tokenizer(args: ExpandArguments, old_tokenizer, first_new_id: int, out: Path):
    """-> (new tokenizer saved in out, [new tokens]) for a SentencePiece or a byte-level BPE base."""
    from train_tokenizer import save_sentencepiece, train_sentencepiece

    base_sp = Path(args.base_sp_model) if args.base_sp_model else Path(args.model_name_or_path) / "tokenizer.model"
    if base_sp.is_file():
        if args.chinese_sp_model:
            chinese = Path(args.chinese_sp_model).read_bytes()
        else:  # the Chinese-LLaMA recipe trains a unigram model on Chinese text
            chinese = train_sentencepiece(read_corpus(args.corpus), args.new_vocab_size, model_type="unigram",
                                          byte_fallback=False, character_coverage=0.995)
            (out / "chinese_sp.model").parent.mkdir(parents=True, exist_ok=True)
            (out / "chinese_sp.model").write_bytes(chinese)
        merged, new = merge_sentencepiece(base_sp.read_bytes(), chinese, args.new_piece_score, first_new_id)
        new_tokenizer = save_sentencepiece(merged, out)
        return new_tokenizer, new
    new_tokenizer, new = expand_bpe(old_tokenizer, read_corpus(args.corpus), args.new_vocab_size, args.max_new_tokens,
                                    first_new_id)
    new_tokenizer.save_pretrained(out)
    return new_tokenizer, new


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(ExpandArguments).parse_args_into_dataclasses(args=argv)
    torch.manual_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source = args.model_name_or_path or str(Path(args.base_sp_model).parent)
    old_tokenizer = AutoTokenizer.from_pretrained(source) if args.model_name_or_path else None
    model = None
    if args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch.float32).eval()
        old_rows = model.get_input_embeddings().weight.shape[0]
    else:
        from train_tokenizer import save_sentencepiece
        old_tokenizer = save_sentencepiece(Path(args.base_sp_model).read_bytes(), out / "base_tokenizer")
        old_rows = len(old_tokenizer)
    padded_before = old_rows > len(old_tokenizer)
    new_tokenizer, new = expand_tokenizer(args, old_tokenizer, old_rows, out)
    new_ids = dict(zip(new, new_tokenizer.convert_tokens_to_ids(new)))
    report = {"base": source, "kind": "sentencepiece" if args.base_sp_model or is_sentencepiece(Path(source)) else "bpe",
              "old_vocab": len(old_tokenizer), "new_vocab": len(new_tokenizer), "added": len(new),
              "tokenizer_seconds": round(time.perf_counter() - start, 2)}
    held_out = read_corpus(args.held_out_file)[:args.max_eval_texts] if args.held_out_file else []
    from train_tokenizer import english_texts
    english = english_texts(20_000)[:50]
    if model is not None:
        original = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch.float32).eval()
        pad = args.pad_to_multiple_of or (64 if padded_before else 1)
        report.update(resize_model(model, old_tokenizer, new_ids, pad, args.init, args.head_init, args.seed))
        report["pad_to_multiple_of"] = pad
        report.update(compare_inits(args, original, model, old_tokenizer, new_tokenizer, new_ids, pad, held_out[:50]))
        model.save_pretrained(out)
        new_tokenizer.save_pretrained(out)
    report.update(verify(original if model is not None else None, model, old_tokenizer, new_tokenizer, held_out, english))
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["args"] = asdict(args)
    (out / "expand_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "args"}, ensure_ascii=False))
    if not report["old_ids_unchanged"]:
        raise SystemExit("verification failed: an old token changed its id (report: expand_report.json)")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
