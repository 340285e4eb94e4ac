"""The ChatGLM2/ChatGLM3 tokenizer as a standard fast tokenizer, and the two prompt templates.

Why a fast tokenizer (`tokenizer.json`, loaded by `AutoTokenizer` / `PreTrainedTokenizerFast`, no remote code):
the official `tokenizer.model` is a SentencePiece BPE model with byte fallback, an identity normalizer, a dummy
prefix and no extra-whitespace removal. transformers' `SpmConverter.build_tokenizer_from_spm_proto` follows exactly
those settings (BPE merges ranked by piece score, byte fallback, dummy prefix), and the result gives the same ids
as `SentencePieceProcessor.encode` (what the official `SPTokenizer` does). Checked on the real file: varied
Chinese text (spaces, runs of spaces, newlines, tabs, digits, English, emoji, full-width punctuation, leading
spaces) and built prompts, id for id (tests/test_tokenizer.py). Any tool can load `tokenizer.json`.

Special tokens, as in the official tokenizer: ids 0..n-1 are the SentencePiece pieces (n = 64789 for the real
file), then `[MASK] [gMASK] [sMASK] sop eop` (ChatGLM2), then `<|system|> <|user|> <|assistant|> <|observation|>`
(ChatGLM3). Inputs start with `[gMASK] sop`; eos = 2 (`</s>`), pad = 0 (`<unk>`), left padding.
Like the official tokenizer, a special token's *text* inside a message (e.g. "<|user|>") is encoded as plain
text (`split_special_tokens=True`), so user content cannot inject role tokens.

Templates (`TEMPLATES`), built by the same code for training (`conversation_segments`) and generation (`prompt_ids`):
  chatglm2: [gMASK] sop encode("[Round 1]\n\n问：{q1}\n\n答：{a1}\n\n[Round 2]\n\n问：{q2}\n\n答：") {a2} </s>
            The prompt is the official chat()'s exactly: build_prompt(query, history) encoded as one text, history
            included. Training appends the last answer encoded on its own + eos (the official fine-tuning), and
            also trains the earlier answers inside the prompt text (their tokens found by character offsets), so
            every turn is learned while the ids stay the official ones.
            ChatGLM2 has no system role: a system message's text goes before "[Round 1]", followed by "\n\n".
  chatglm3: [gMASK] sop <|role|> encode("\n") encode(content) ... <|assistant|>   (official build_single_message)
            Trained, as in the official finetune_demo (its loss mask shifted by one): each answer's "\n" + content
            and the token after it (the next role token, or eos at the end). Generation stops at eos, <|user|> or
            <|observation|>.
"""
import json
from pathlib import Path

CHATGLM2_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
CHATGLM3_ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
TEMPLATES = ("chatglm2", "chatglm3")
EOS_ID, PAD_ID = 2, 0
ROLES = ("system", "user", "assistant")


# ----------------------------------------------------------------------------- building the tokenizer
def build_tokenizer(sp_model_file: str, template: str = "chatglm3"):
    """A PreTrainedTokenizerFast from a ChatGLM SentencePiece `tokenizer.model` with the official special ids.

    template chatglm2 adds the 5 ChatGLM2 specials, chatglm3 also the 4 role tokens.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    check_template(template)
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(sp_model_file).read_bytes())
    except Exception:  # GLM-4's tokenizer.model is a tiktoken file
        proto.trainer_spec.model_type = 0
    if proto.trainer_spec.model_type != 2 or not proto.trainer_spec.byte_fallback:
        raise SystemExit(f"{sp_model_file}: not a ChatGLM tokenizer.model (expected a SentencePiece BPE model with "
                         f"byte fallback; GLM-4 has a tiktoken one: use transformers' THUDM/glm-4-9b-chat-hf). Fix: pass the "
                         f"tokenizer.model of THUDM/chatglm2-6b or chatglm3-6b")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    specials = CHATGLM2_SPECIALS + (CHATGLM3_ROLES if template == "chatglm3" else [])
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    n = len(proto.pieces)
    assert tok.token_to_id("[MASK]") == n and tok.get_vocab_size() == n + len(specials)
    prefix = [("[gMASK]", n + 1), ("sop", n + 3)]
    tok.post_processor = processors.TemplateProcessing(  # official build_inputs_with_special_tokens
        single="[gMASK] sop $A", pair="[gMASK] sop $A $B </s>", special_tokens=prefix + [("</s>", EOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>", eos_token="</s>", bos_token="<s>",
        padding_side="left", split_special_tokens=True, clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"], extra_special_tokens=specials)


def check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise SystemExit(f"--template: unknown template {template!r}. Fix: one of {', '.join(TEMPLATES)}")


def detect_template(tokenizer_or_dir) -> str:
    """chatglm3 when the tokenizer has the role tokens, else chatglm2."""
    if isinstance(tokenizer_or_dir, (str, Path)):
        path = Path(tokenizer_or_dir)
        if not (path / "tokenizer.json").is_file():
            raise SystemExit(f"{path}: no tokenizer.json. Fix: pass a converted directory (model.resolve_model_dir)")
        vocab = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
        names = {t["content"] for t in vocab.get("added_tokens", [])}
    else:
        names = set(tokenizer_or_dir.get_vocab())
    return "chatglm3" if "<|user|>" in names else "chatglm2"


# ----------------------------------------------------------------------------- templates
def encode_text(tokenizer, text: str) -> list[int]:
    """SentencePiece ids of plain text (the official SPTokenizer.encode): no prefix, specials as text."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def prefix_ids(tokenizer) -> list[int]:
    return tokenizer.convert_tokens_to_ids(["[gMASK]", "sop"])


def stop_ids(tokenizer, template: str) -> list[int]:
    """Token ids that end an answer in generation (official chat's eos_token_id)."""
    if template == "chatglm3":
        return [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(["<|user|>", "<|observation|>"])]
    return [tokenizer.eos_token_id]


def check_messages(messages: list[dict], template: str) -> None:
    check_template(template)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: expected {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i}: a system message can only come first")
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if template == "chatglm2" and any(r != ("user", "assistant")[i % 2] for i, r in enumerate(turns)):
        raise ValueError(f"chatglm2 needs user/assistant turns alternating from user, got {turns}")


def _chatglm2_segments(tokenizer, messages: list[dict]) -> list[tuple[list[int], bool]]:
    """[gMASK] sop + the official build_prompt(query, history) text encoded as ONE text (the official chat()'s
    ids, history included); for training, then the last answer encoded on its own + eos (the official fine-tuning).
    Earlier answers are inside that text: their tokens are found by character offsets and trained too."""
    system = messages[0]["content"] + "\n\n" if messages[0]["role"] == "system" else ""
    turns = [m["content"] for m in messages if m["role"] != "system"]
    last_answer = turns.pop() if len(turns) % 2 == 0 else None
    text, answers = system, []
    for i in range(0, len(turns) - 1, 2):
        text += f"[Round {i // 2 + 1}]\n\n问：{turns[i]}\n\n答："
        answers.append((len(text), len(text) + len(turns[i + 1])))
        text += turns[i + 1] + "\n\n"
    text += f"[Round {len(turns) // 2 + 1}]\n\n问：{turns[-1]}\n\n答："
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    segs = [(prefix_ids(tokenizer), False)]
    for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        segs.append(([token], end > start and any(a <= start and end <= b for a, b in answers)))
    if last_answer is not None:
        segs.append((encode_text(tokenizer, last_answer) + [tokenizer.eos_token_id], True))
    return segs


def _segments(tokenizer, messages: list[dict], template: str) -> list[tuple[list[int], bool]]:
    if template == "chatglm2":
        return _chatglm2_segments(tokenizer, messages)
    segs = [(prefix_ids(tokenizer), False)]
    if tokenizer.convert_tokens_to_ids("<|user|>") in (None, tokenizer.unk_token_id):
        raise SystemExit("--template: chatglm3 needs the role tokens <|system|> <|user|> ..., which this tokenizer "
                         "lacks (a ChatGLM2 one). Fix: --template chatglm2, or leave --template out to detect it")
    previous = None
    for m in messages:
        role_id = tokenizer.convert_tokens_to_ids(f"<|{m['role']}|>")
        body = encode_text(tokenizer, "\n") + encode_text(tokenizer, m["content"])
        segs.append(([role_id], previous == "assistant"))  # the token after an answer ends it: trained
        segs.append((body, m["role"] == "assistant"))
        previous = m["role"]
    if previous == "assistant":
        segs.append(([tokenizer.eos_token_id], True))
    return segs


def _merge(segs):
    out = []
    for ids, trained in segs:
        if not ids:
            continue
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + ids, trained)
        else:
            out.append((list(ids), trained))
    return out


def conversation_segments(tokenizer, messages: list[dict], template: str) -> list[tuple[list[int], bool]]:
    """The ids of a whole conversation as (ids, trained) runs; trained = every answer and its terminator.

    The conversation must end with an assistant answer. Concatenated, the ids are the training input.
    """
    check_messages(messages, template)
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training conversation must end with an assistant message")
    return _merge(_segments(tokenizer, messages, template))


def prompt_ids(tokenizer, messages: list[dict], template: str) -> list[int]:
    """The generation prompt: the conversation so far (ending with a user message) and the assistant prompt."""
    check_messages(messages, template)
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a generation prompt must end with a user message")
    ids = [i for seg, _ in _segments(tokenizer, messages, template) for i in seg]
    if template == "chatglm3":
        ids.append(tokenizer.convert_tokens_to_ids("<|assistant|>"))
    return ids
