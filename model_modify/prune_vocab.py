"""Prune the vocabulary of a causal LM to what a corpus uses, and prove nothing changed on that corpus.

    python model_modify/prune_vocab.py --model_name_or_path DIR --corpus FILES_OR_DIR --output_dir OUT

Two tokenizer kinds:
- bpe: a `tokenizer.json` with a BPE model (BLOOM's byte-level BPE, any fast BPE tokenizer). The vocab is renumbered,
  merges are kept only when both parts AND the result are kept, added tokens and post-processor ids are remapped.
- sentencepiece: a `tokenizer.model` (LLaMA-style, BPE or unigram, byte fallback). The pruned model proto is written
  with the HF tokenizer files next to it.

What is kept: every token the original tokenizer produces on the corpus (count >= --min_freq), every token its
merges pass through on the way (BPE builds "abc" from "ab" + "c": drop "ab" and "abc" can no longer be built), all
special/added tokens, and the alphabet (byte-level BPE: the 256 byte tokens; SentencePiece: <0x00>..<0xFF> byte
fallback pieces): any text stays encodable. Then a fixed point removes what the kept merges cannot reach. Because
the kept tokens and merges are a subset of the original's that contains every merge used on the corpus, BPE's
choice at every step is unchanged (the best candidate of a superset that lies in the subset is the subset's best),
so the corpus tokenizes to the same token strings; for unigram the Viterbi best path on the corpus survives.

The embedding rows and the head rows (tied or untied) of the kept ids are copied in the new order; config.vocab_size,
the special ids of config and generation_config follow. Written: the model dir, id_map.json (old id -> new id),
prune_report.json (vocab and parameters before/after, file sizes, verification).
"""
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, LogitsProcessorList

from model import ModelArguments, count_parameters

HERE = Path(__file__).resolve().parent
KINDS = ("auto", "bpe", "sentencepiece")
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")
# text the corpus has never seen: it must still encode, and decode back
PROBE_TEXTS = ["Hello, world! The quick brown fox jumps over the lazy dog.", "数字 1234567890 和 3.14159",
               "生僻字：龘靐齉爩 emoji 😀🚀👍🏽", "混合 mixed テキスト 텍스트 текст\t\n  spaces"]


@dataclass
class PruneArguments:
    corpus: list[str] = field(default_factory=list, metadata={"help": "text files (.txt one text a line, .jsonl "
                              "with --text_field) or directories of them: the vocabulary to keep"})
    output_dir: str = field(default=str(HERE / "outputs/pruned"), metadata={"help": "the pruned model directory"})
    tokenizer_kind: str = field(default="auto", metadata={"help": "auto (tokenizer.model -> sentencepiece, else "
                                "tokenizer.json -> bpe), bpe, sentencepiece"})
    min_freq: int = field(default=1, metadata={"help": "keep corpus tokens seen at least this often (>= 1); with > 1 "
                          "rare corpus text is re-split into kept pieces"})
    keep_special_tokens: bool = field(default=True, metadata={"help": "keep every special/added token"})
    keep_bytes: bool = field(default=True, metadata={"help": "keep the alphabet (256 byte tokens / byte-fallback "
                             "pieces) so any text stays encodable"})
    held_out: list[str] = field(default_factory=list, metadata={"help": "held-out text files checked by the "
                                "verification (same format as --corpus)"})
    text_field: str = field(default="text", metadata={"help": "field of .jsonl/.json records"})
    no_verify: bool = field(default=False, metadata={"help": "skip the verification (tokens, logits, generations)"})

    def __post_init__(self):
        if not self.corpus:
            raise SystemExit("--corpus: required. Fix: --corpus data/cache/clean/train.jsonl (files or directories)")
        for name in ("corpus", "held_out"):
            for p in getattr(self, name):
                if not Path(p).exists():
                    raise SystemExit(f"--{name}: {p} does not exist. Fix: pass existing files or directories")
        if self.tokenizer_kind not in KINDS:
            raise SystemExit(f"--tokenizer_kind: {self.tokenizer_kind!r} is not one of {', '.join(KINDS)}. "
                             f"Fix: --tokenizer_kind auto")
        if self.min_freq < 1:
            raise SystemExit(f"--min_freq: must be >= 1, got {self.min_freq}. Fix: --min_freq 1 (keep every token "
                             f"the corpus uses)")


def check_args(model_args: ModelArguments, args: PruneArguments) -> str:
    """Cross-argument checks (before anything is loaded); returns the resolved tokenizer kind."""
    src = Path(model_args.model_name_or_path)
    if Path(args.output_dir).resolve() == src.resolve():
        raise SystemExit("--output_dir: is the input model directory. Fix: write the pruned copy elsewhere")
    has_sp, has_json = (src / "tokenizer.model").is_file(), (src / "tokenizer.json").is_file()
    kind = args.tokenizer_kind
    if kind == "auto":
        kind = "sentencepiece" if has_sp else "bpe" if has_json else None
    if kind is None or (kind == "sentencepiece" and not has_sp) or (kind == "bpe" and not has_json):
        want = {"sentencepiece": "tokenizer.model", "bpe": "tokenizer.json"}.get(kind, "tokenizer.json or tokenizer.model")
        raise SystemExit(f"--tokenizer_kind: {src} has no {want}. Fix: pass a directory with the tokenizer files "
                         f"(save_pretrained writes them), or the other --tokenizer_kind")
    return kind


# ----------------------------------------------------------------------------- corpus
def read_texts(paths, text_field: str = "text") -> list[str]:
    """Texts of .txt (one a line) / .jsonl / .json files, or of every such file under a directory."""
    files = []
    for p in map(Path, paths):
        files += sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl", ".json")) if p.is_dir() else [p]
    texts = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            if f.suffix == ".json" and fh.read(1) == "[":
                fh.seek(0)
                texts += [r[text_field] for r in json.load(fh)]
                continue
            fh.seek(0)
            for line in fh:
                if f.suffix == ".txt":
                    texts.append(line.rstrip("\n"))
                elif line.strip():
                    texts.append(json.loads(line)[text_field])
    return [t for t in texts if t.strip()]


# ----------------------------------------------------------------------------- BPE (tokenizer.json)
def bpe_trace(symbols: list[str], rank: dict) -> list[tuple[str, str]]:
    """The merges BPE applies to `symbols` (lowest rank first, leftmost on ties), as tokenizers' BPE does."""
    symbols, used = list(symbols), []
    while len(symbols) > 1:
        best = min(((rank.get((a, b), 1 << 62), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))))
        if best[0] == 1 << 62:
            break
        i = best[1]
        used.append((symbols[i], symbols[i + 1]))
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return used


def is_alphabet_token(token: str, byte_fallback: bool) -> bool:
    """What keeps any text encodable: with byte fallback the <0xXX> tokens, else the single characters
    (byte-level BPE's 256 byte characters; a character BPE's characters)."""
    if byte_fallback:
        return len(token) == 6 and token.startswith("<0x") and token.endswith(">")
    return len(token) == 1


def bpe_fixed_point(keep: set, merges: list, base: set) -> tuple[set, list, list]:
    """(tokens, merges, dropped tokens): a merge stays only when its two parts AND its result are kept; a token that
    is not a base token (no merge produces it) and that no remaining merge produces is dropped; repeat until
    nothing changes (dropping a token can remove the merges that built longer tokens)."""
    keep, dropped = set(keep), []
    while True:
        kept_merges = [m for m in merges if m[0] in keep and m[1] in keep and m[0] + m[1] in keep]
        results = {a + b for a, b in kept_merges}
        unreachable = {t for t in keep if t not in base and t not in results}
        if not unreachable:
            return keep, kept_merges, dropped
        dropped += sorted(unreachable)
        keep -= unreachable


def post_processor_ids(node) -> set[int]:
    """The special-token ids a post-processor inserts."""
    if isinstance(node, dict):
        ids = set()
        for k, v in node.items():
            if k == "ids" and isinstance(v, list):
                ids |= set(v)
            elif k in ("sep", "cls") and isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                ids.add(v[1])
            else:
                ids |= post_processor_ids(v)
        return ids
    return set().union(*map(post_processor_ids, node)) if isinstance(node, list) else set()


def remap_ids(node, id_map: dict):
    """Post-processor JSON with every special-token id mapped (TemplateProcessing, Bert/Roberta, Sequence)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "ids" and isinstance(v, list):
                out[k] = [id_map[i] for i in v]
            elif k in ("sep", "cls") and isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                out[k] = [v[0], id_map[v[1]]]
            else:
                out[k] = remap_ids(v, id_map)
        return out
    return [remap_ids(v, id_map) for v in node] if isinstance(node, list) else node


def prune_bpe_tokenizer(tokenizer_json: dict, texts: list[str], min_freq: int = 1, keep_special_tokens: bool = True,
                        keep_bytes: bool = True, extra_ids=()) -> tuple[dict, list[int], dict]:
    """(pruned tokenizer.json dict, kept old ids in new order, stats). Needs no weights."""
    from tokenizers import Tokenizer
    model = tokenizer_json["model"]
    if model.get("type") != "BPE":
        raise SystemExit(f"--tokenizer_kind: tokenizer.json has a {model.get('type')} model, only BPE is pruned here. "
                         f"Fix: a SentencePiece model goes with --tokenizer_kind sentencepiece")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise SystemExit("--tokenizer_kind: BPE with continuing_subword_prefix/end_of_word_suffix is not supported")
    vocab, added = model["vocab"], tokenizer_json.get("added_tokens", [])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    rank = {m: i for i, m in enumerate(merges)}
    produced = {a + b for a, b in merges}
    id_to_token = {i: t for t, i in vocab.items()} | {a["id"]: a["content"] for a in added}

    backend = Tokenizer.from_str(json.dumps(tokenizer_json))
    counts = Counter(i for enc in backend.encode_batch(texts, add_special_tokens=False) for i in enc.ids)
    corpus = {id_to_token[i] for i, c in counts.items() if c >= min_freq}
    keep = set(corpus) & set(vocab)
    alphabet = ({t for t in vocab if t not in produced and is_alphabet_token(t, model.get("byte_fallback", False))}
                if keep_bytes else set())
    specials = {a["content"] for a in added} if keep_special_tokens else set()
    specials |= {id_to_token[i] for i in post_processor_ids(tokenizer_json.get("post_processor"))}  # always needed
    extra = {id_to_token[i] for i in extra_ids if i in id_to_token}
    keep |= (alphabet | extra) & set(vocab)
    # closure: the merges that build each kept token (a function of the token alone: BPE never merges across
    # the boundaries of a final token), their parts and results
    n_before = len(keep)
    added_contents = {a["content"] for a in added}  # matched whole before BPE runs: nothing to trace
    for t in sorted(keep - added_contents):
        for a, b in bpe_trace(list(t), rank):
            keep |= {a, b, a + b}
    n_closure = len(keep) - n_before
    # fixed point: a kept merge needs its parts and result kept; a kept token must be a base token or the result
    # of a kept merge (anything else the encoder can no longer produce)
    keep, kept_merges, dropped_unreachable = bpe_fixed_point(keep, merges, base={t for t in vocab if t not in produced})
    kept_ids = sorted({vocab[t] for t in keep} | {a["id"] for a in added if a["content"] in specials or
                                                  a["content"] in keep or a["content"] in corpus})
    id_map = {old: new for new, old in enumerate(kept_ids)}

    out = json.loads(json.dumps(tokenizer_json))  # a deep copy
    out["model"]["vocab"] = {t: id_map[i] for t, i in sorted(vocab.items(), key=lambda x: x[1]) if i in id_map}
    as_str = model["merges"] and isinstance(model["merges"][0], str)
    out["model"]["merges"] = [f"{a} {b}" if as_str else [a, b] for a, b in kept_merges]
    out["added_tokens"] = [{**a, "id": id_map[a["id"]]} for a in added if a["id"] in id_map]
    if out.get("post_processor"):
        out["post_processor"] = remap_ids(out["post_processor"], id_map)
    stats = dict(corpus_tokens=len(corpus), closure_tokens=n_closure, alphabet_tokens=len(alphabet),
                 special_tokens=len(specials), dropped_unreachable=len(dropped_unreachable),
                 merges_before=len(merges), merges_after=len(kept_merges))
    return out, kept_ids, stats


# ----------------------------------------------------------------------------- SentencePiece (tokenizer.model)
def sp_bpe_trace(piece: str, score: dict) -> list[str]:
    """The intermediate pieces SentencePiece's BPE builds for `piece` (merge the adjacent pair whose concatenation
    is a piece with the highest score; leftmost on ties), as bpe_model.cc does."""
    symbols, built = list(piece), []
    while len(symbols) > 1:
        best = max(((score[a + b], -i) for i, (a, b) in enumerate(zip(symbols, symbols[1:])) if a + b in score),
                   default=None)
        if best is None:
            break
        i = -best[1]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        built.append(symbols[i])
    return built


def prune_sp_model(model_bytes: bytes, texts: list[str], min_freq: int = 1, keep_special_tokens: bool = True,
                   keep_bytes: bool = True, extra_ids=()) -> tuple[bytes, list[int], dict]:
    """(pruned tokenizer.model bytes, kept old ids in new order, stats). Needs no weights."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6  # 5 = UNUSED: never produced, dropped
    proto = sp_pb2.ModelProto.FromString(model_bytes)
    pieces = proto.pieces
    is_bpe = proto.trainer_spec.model_type == sp_pb2.TrainerSpec.BPE
    byte_fallback = proto.trainer_spec.byte_fallback
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    counts = Counter(i for ids in sp.encode(texts) for i in ids)
    keep = {i for i, c in counts.items() if c >= min_freq}
    n_corpus = len(keep)
    for i, p in enumerate(pieces):
        if (keep_special_tokens and p.type in (UNKNOWN, CONTROL, USER_DEFINED)) or p.type == UNKNOWN:
            keep.add(i)
        if keep_bytes and (p.type == BYTE or (not byte_fallback and p.type == NORMAL and len(p.piece) == 1)):
            keep.add(i)  # without byte fallback the single characters keep every character encodable
    keep |= {i for i in extra_ids if i < len(pieces)}
    keep |= {getattr(proto.trainer_spec, k) for k in ("unk_id", "bos_id", "eos_id", "pad_id")} - {-1}  # the spec names them
    if not is_bpe:  # unigram scores an unknown character min(score) - 10: keep the piece that sets the minimum
        keep.add(min((p.score, i) for i, p in enumerate(pieces) if p.type == NORMAL)[1])
    index = {p.piece: i for i, p in enumerate(pieces) if p.type in (NORMAL, USER_DEFINED)}
    n_closure = 0
    if is_bpe:  # closure: the pieces BPE passes through while building each kept piece
        score = {p.piece: p.score for p in pieces if p.type in (NORMAL, USER_DEFINED)}
        for i in sorted(keep):
            if pieces[i].type == NORMAL:
                for piece in [c for c in pieces[i].piece if c in index] + sp_bpe_trace(pieces[i].piece, score):
                    n_closure += index[piece] not in keep
                    keep.add(index[piece])
    dropped_unreachable = []
    while is_bpe:  # fixed point: a kept multi-character piece must be the concatenation of two kept pieces
        kept_strings = {pieces[i].piece for i in keep if pieces[i].type in (NORMAL, USER_DEFINED)}
        unreachable = {i for i in keep if pieces[i].type == NORMAL and len(pieces[i].piece) > 1
                       and not any(pieces[i].piece[:k] in kept_strings and pieces[i].piece[k:] in kept_strings
                                   for k in range(1, len(pieces[i].piece)))}
        if not unreachable:
            break
        dropped_unreachable += sorted(unreachable)
        keep -= unreachable
    kept_ids = sorted(keep)
    id_map = {old: new for new, old in enumerate(kept_ids)}
    out = sp_pb2.ModelProto()
    out.CopyFrom(proto)
    del out.pieces[:]
    out.pieces.extend(pieces[i] for i in kept_ids)
    spec = out.trainer_spec
    for name in ("unk_id", "bos_id", "eos_id", "pad_id"):
        if getattr(spec, name) >= 0:
            setattr(spec, name, id_map[getattr(spec, name)])
    spec.vocab_size = len(kept_ids)
    stats = dict(model_type="bpe" if is_bpe else sp_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower(),
                 byte_fallback=byte_fallback, corpus_tokens=n_corpus, closure_tokens=n_closure,
                 byte_pieces=sum(p.type == BYTE for p in pieces), dropped_unreachable=len(dropped_unreachable))
    return out.SerializeToString(), kept_ids, stats


# ----------------------------------------------------------------------------- the model
def slice_model(model, kept_ids: list[int]):
    """Keep the embedding rows and head rows of `kept_ids` (in this order), tied or untied; vocab_size follows."""
    idx = torch.tensor(kept_ids, dtype=torch.long)
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    old_in, old_out = model.get_input_embeddings(), model.get_output_embeddings()
    new_in = torch.nn.Embedding(len(kept_ids), old_in.embedding_dim, dtype=old_in.weight.dtype)
    new_in.weight.data = old_in.weight.data[idx].clone()
    model.set_input_embeddings(new_in)
    if old_out is not None:
        if tied:
            old_out.weight = new_in.weight
        else:
            old_out.weight = torch.nn.Parameter(old_out.weight.data[idx].clone())
        if getattr(old_out, "bias", None) is not None:
            old_out.bias = torch.nn.Parameter(old_out.bias.data[idx].clone())
        old_out.out_features = len(kept_ids)
    model.config.vocab_size = len(kept_ids)
    return model


def remap_special_ids(obj, id_map: dict) -> dict:
    """bos/eos/pad/unk/decoder_start ids of a config or generation config mapped; returns {name: (old, new)}."""
    changed = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id"):
        old = getattr(obj, name, None)
        if old is None:
            continue
        new = [id_map[i] for i in old] if isinstance(old, list) else id_map[old]
        setattr(obj, name, new)
        changed[name] = (old, new)
    return changed


def config_special_ids(src: Path) -> set[int]:
    """Special ids named by config.json / generation_config.json: kept even where the tokenizer lacks them."""
    ids = set()
    for name in ("config.json", "generation_config.json"):
        if (src / name).is_file():
            cfg = json.loads((src / name).read_text())
            for k in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id"):
                v = cfg.get(k)
                ids |= set(v) if isinstance(v, list) else {v} if isinstance(v, int) else set()
    return ids


def file_sizes(d: Path) -> dict:
    return {f.name: f.stat().st_size for f in sorted(Path(d).iterdir()) if f.is_file()}


# ----------------------------------------------------------------------------- prune: tokenizer + model
def write_tokenizer(src: Path, out: Path, kind: str, texts, min_freq, keep_special_tokens, keep_bytes, extra_ids):
    """Write the pruned tokenizer files into `out`; returns (kept old ids, stats)."""
    kwargs = dict(min_freq=min_freq, keep_special_tokens=keep_special_tokens, keep_bytes=keep_bytes,
                  extra_ids=extra_ids)
    if kind == "bpe":
        tj = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
        new, kept_ids, stats = prune_bpe_tokenizer(tj, texts, **kwargs)
        (out / "tokenizer.json").write_text(json.dumps(new, ensure_ascii=False, indent=1), encoding="utf-8")
    else:  # the HF tokenizer is converted from the proto (same ids): keep what its BPE merges pass through too
        backend = json.loads(AutoTokenizer.from_pretrained(src).backend_tokenizer.to_str())
        if backend["model"].get("type") == "BPE":
            kwargs["extra_ids"] = set(extra_ids) | set(prune_bpe_tokenizer(backend, texts, **kwargs)[1])
        new, kept_ids, stats = prune_sp_model((src / "tokenizer.model").read_bytes(), texts, **kwargs)
        (out / "tokenizer.model").write_bytes(new)
    id_map = {old: new for new, old in enumerate(kept_ids)}
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    cfg_file = out / "tokenizer_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in cfg:
            cfg["added_tokens_decoder"] = {str(id_map[int(i)]): v for i, v in cfg["added_tokens_decoder"].items()
                                           if int(i) in id_map}
        cfg_file.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    if kind == "sentencepiece":  # let transformers convert the pruned proto, and save its tokenizer.json too
        AutoTokenizer.from_pretrained(out).save_pretrained(out)
    return kept_ids, stats


def prune(model_dir, corpus: list[str], out_dir, kind: str = "auto", min_freq: int = 1,
          keep_special_tokens: bool = True, keep_bytes: bool = True, torch_dtype: str = "float32") -> dict:
    """Prune `model_dir` (a save_pretrained dir) to the vocabulary of the texts `corpus`; write `out_dir`
    (model + tokenizer + id_map.json + prune_report.json). Returns the report."""
    src, out = Path(model_dir), Path(out_dir)
    if kind == "auto":
        kind = "sentencepiece" if (src / "tokenizer.model").is_file() else "bpe"
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer.model"):  # a stale file of the other kind would win at load time
        (out / f).unlink(missing_ok=True)
    kept_ids, stats = write_tokenizer(src, out, kind, corpus, min_freq, keep_special_tokens, keep_bytes,
                                      config_special_ids(src))
    t_tokenizer = time.perf_counter() - t0
    id_map = {old: new for new, old in enumerate(kept_ids)}
    model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, torch_dtype)).eval()
    vocab_before, params_before = model.config.vocab_size, count_parameters(model)
    if kept_ids[-1] >= vocab_before:
        raise SystemExit(f"--model_name_or_path: the tokenizer has id {kept_ids[-1]} but the model only "
                         f"{vocab_before} rows. Fix: pass a model whose embeddings cover its tokenizer")
    slice_model(model, kept_ids)
    specials = remap_special_ids(model.config, id_map)
    if model.generation_config is not None:
        remap_special_ids(model.generation_config, id_map)
    model.save_pretrained(out)
    (out / "id_map.json").write_text(json.dumps({str(k): v for k, v in id_map.items()}))
    report = dict(kind=kind, tokenizer_stats=stats, min_freq=min_freq, corpus_texts=len(corpus),
                  vocab_before=vocab_before, vocab_after=len(kept_ids),
                  tokenizer_size_before=len(AutoTokenizer.from_pretrained(src)),
                  tokenizer_size_after=len(AutoTokenizer.from_pretrained(out)),
                  params_before=params_before, params_after=count_parameters(model),
                  special_ids={k: list(v) for k, v in specials.items()},
                  seconds_tokenizer=round(t_tokenizer, 3), seconds_total=round(time.perf_counter() - t0, 3))
    report["params_ratio"] = round(report["params_after"] / report["params_before"], 4)
    report["files_before"], report["files_after"] = file_sizes(src), file_sizes(out)
    report["bytes_before"], report["bytes_after"] = (sum(report[k].values()) for k in ("files_before", "files_after"))
    (out / "prune_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    return report


# ----------------------------------------------------------------------------- verification
def compare_tokens(orig_tok, new_tok, texts: list[str], id_map: dict, sp_pair=None) -> dict:
    """Token strings of the original and the pruned tokenizer on `texts`. A text is `covered` when every token the
    original produces is kept: it must give the same token strings, and ids mapped by id_map. Every text must
    decode to what the original decodes to (still encodable)."""
    a_ids = orig_tok(texts, add_special_tokens=False)["input_ids"]
    b_ids = new_tok(texts, add_special_tokens=False)["input_ids"]
    covered = identical = roundtrip = 0
    failures = []
    for text, a, b in zip(texts, a_ids, b_ids):
        same = orig_tok.convert_ids_to_tokens(a) == new_tok.convert_ids_to_tokens(b)
        if sp_pair is not None:  # the SentencePiece processors themselves
            same &= sp_pair[0].encode(text, out_type=str) == sp_pair[1].encode(text, out_type=str)
        cov = all(i in id_map for i in a)
        if sp_pair is not None:
            cov &= all(i in id_map for i in sp_pair[0].encode(text))
        covered += cov
        identical += same
        ok_rt = new_tok.decode(b) == orig_tok.decode(a)
        roundtrip += ok_rt
        if (cov and not (same and [id_map[i] for i in a] == b)) or not ok_rt:
            failures.append(text[:80])
    return dict(texts=len(texts), covered=covered, identical=identical, decode_same=roundtrip,
                failures=failures[:5], n_failures=len(failures))


@torch.no_grad()
def compare_models(orig, new, tok, texts: list[str], id_map: dict, max_tokens=24, max_new_tokens=8) -> dict:
    """Logits of the pruned model vs the original's at the kept ids; greedy generations (the original limited to
    the kept ids, the vocabulary the pruned model has) mapped through id_map."""
    kept = torch.tensor(sorted(id_map, key=id_map.get))
    dropped = torch.ones(orig.config.vocab_size, dtype=torch.bool)
    dropped[kept] = False
    only_kept = LogitsProcessorList([lambda input_ids, scores: scores.masked_fill(dropped, float("-inf"))])
    max_diff, same_gen, orig_in_vocab = 0.0, 0, 0
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"][:, :max_tokens]
        if not all(int(i) in id_map for i in ids[0]):
            continue
        new_ids = torch.tensor([[id_map[int(i)] for i in ids[0]]])
        max_diff = max(max_diff, (orig(ids).logits[..., kept] - new(new_ids).logits).abs().max().item())
        prompt, new_prompt = ids[:, :8], new_ids[:, :8]
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
        g_orig = orig.generate(prompt, attention_mask=torch.ones_like(prompt), logits_processor=only_kept,
                               **kw)[0, prompt.shape[1]:]
        g_free = orig.generate(prompt, attention_mask=torch.ones_like(prompt), **kw)[0, prompt.shape[1]:]
        g_new = new.generate(new_prompt, attention_mask=torch.ones_like(new_prompt),
                             **{**kw, "pad_token_id": id_map.get(0, 0)})[0, prompt.shape[1]:]
        same_gen += [id_map[int(i)] for i in g_orig] == g_new.tolist()
        orig_in_vocab += all(int(i) in id_map for i in g_free)
    n = sum(all(int(i) in id_map for i in tok(t)["input_ids"][:max_tokens]) for t in texts)
    return dict(logit_texts=n, max_abs_logit_diff=max_diff, generations_identical=same_gen,
                original_free_generations_in_kept_vocab=orig_in_vocab)


def verify(orig_dir, pruned_dir, texts: list[str], held_out: list[str] = (), n_model_texts: int = 4) -> dict:
    """The proofs: same token strings on the corpus (`texts`) and held-out text (covered ones), probe texts outside
    the corpus still encodable, logits equal at kept ids (< 1e-5), greedy generations identical. `ok` says all."""
    orig_dir, pruned_dir = Path(orig_dir), Path(pruned_dir)
    id_map = {int(k): v for k, v in json.loads((pruned_dir / "id_map.json").read_text()).items()}
    orig_tok, new_tok = AutoTokenizer.from_pretrained(orig_dir), AutoTokenizer.from_pretrained(pruned_dir)
    sp_pair = None
    if (pruned_dir / "tokenizer.model").is_file() and (orig_dir / "tokenizer.model").is_file():
        import sentencepiece as spm
        sp_pair = [spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model")) for d in (orig_dir, pruned_dir)]
    result = {name: compare_tokens(orig_tok, new_tok, list(t), id_map, sp_pair)
              for name, t in (("corpus", texts), ("held_out", held_out), ("probe", PROBE_TEXTS)) if t}
    special = {k: (getattr(orig_tok, k), getattr(new_tok, k)) for k in ("bos_token", "eos_token", "pad_token",
                                                                         "unk_token")}
    result["special_tokens_same"] = all(a == b for a, b in special.values()) and all(
        id_map.get(getattr(orig_tok, k + "_id")) == getattr(new_tok, k + "_id")
        for k in ("bos_token", "eos_token", "pad_token", "unk_token") if getattr(orig_tok, k) is not None)
    orig = AutoModelForCausalLM.from_pretrained(orig_dir, dtype=torch.float32).eval()
    new = AutoModelForCausalLM.from_pretrained(pruned_dir, dtype=torch.float32).eval()
    result["model"] = compare_models(orig, new, orig_tok, list(texts)[:n_model_texts], id_map)
    m = result["model"]
    result["ok"] = bool(all(r["n_failures"] == 0 for r in result.values() if isinstance(r, dict) and "n_failures" in r)
                        and result["corpus"]["covered"] == result["corpus"]["identical"] and
                        result["special_tokens_same"] and m["logit_texts"] > 0 and m["max_abs_logit_diff"] < 1e-5
                        and m["generations_identical"] == m["logit_texts"])
    return result


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> dict:
    model_args, args = HfArgumentParser((ModelArguments, PruneArguments)).parse_args_into_dataclasses(argv)
    kind = check_args(model_args, args)
    texts = read_texts(args.corpus, args.text_field)
    if not texts:
        raise SystemExit(f"--corpus: no text in {args.corpus}. Fix: .txt one text a line, or .jsonl with the field "
                         f"--text_field {args.text_field}")
    report = prune(model_args.model_name_or_path, texts, args.output_dir, kind, args.min_freq,
                   args.keep_special_tokens, args.keep_bytes, model_args.torch_dtype)
    print(f"{kind}: vocab {report['vocab_before']:,} -> {report['vocab_after']:,}, parameters "
          f"{report['params_before']:,} -> {report['params_after']:,} ({report['params_ratio']:.3f}x), files "
          f"{report['bytes_before'] / 2**20:.1f} MiB -> {report['bytes_after'] / 2**20:.1f} MiB, "
          f"{report['seconds_total']:.1f} s")
    if not args.no_verify:
        held_out = read_texts(args.held_out, args.text_field) if args.held_out else []
        report["verify"] = v = verify(model_args.model_name_or_path, args.output_dir, texts, held_out)
        (Path(args.output_dir) / "prune_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
        for name in ("corpus", "held_out", "probe"):
            if name in v:
                r = v[name]
                print(f"verify {name}: {r['identical']}/{r['texts']} same token strings ({r['covered']} fully in the "
                      f"kept vocabulary), {r['decode_same']}/{r['texts']} decode the same")
        print(f"verify model: max |logit diff| at kept ids {v['model']['max_abs_logit_diff']:.2e} on "
              f"{v['model']['logit_texts']} texts, greedy generations identical "
              f"{v['model']['generations_identical']}/{v['model']['logit_texts']}")
        if not v["ok"]:
            raise SystemExit(f"verification failed: {json.dumps(v, ensure_ascii=False)[:2000]}")
    return report


if __name__ == "__main__":
    main()
