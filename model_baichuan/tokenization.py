"""The Baichuan / Baichuan2 tokenizer as a standard fast tokenizer, and Baichuan2-Chat's prompt format.

Why a fast tokenizer (`tokenizer.json`, loaded by `AutoTokenizer` / `PreTrainedTokenizerFast`, no remote code):
the official `tokenizer.model` is a SentencePiece BPE model with byte fallback, an identity normalizer, NO dummy
prefix, whitespace kept, digits split, and user-defined pieces (`<SEP>`, "\\n", `<reserved_106>`, ...) that
SentencePiece always emits whole. transformers' `SpmConverter.build_tokenizer_from_spm_proto` follows exactly
those settings, and the result gives the same ids as `SentencePieceProcessor.encode`, which is all the official
`BaichuanTokenizer._tokenize` does. Checked on the real Baichuan2 file (125,696 pieces) on varied Chinese text
(tests/test_tokenizer.py). The official tokenizer adds no bos/eos (`add_bos_token` / `add_eos_token` false in
its tokenizer_config.json), and so does this one. Like the official (slow) tokenizer, the texts `<unk>`, `<s>`,
`</s>` inside a message are read as those special tokens.

ids: pad 0 (`<unk>`), bos 1 (`<s>`), eos 2 (`</s>`), left padding (generation), as the official tokenizer_config.

Chat format of Baichuan2-Chat (the official `generation_utils.build_chat_input` and `fine-tune/fine-tune.py`):
`user_token_id` (195, `<reserved_106>`) and `assistant_token_id` (196, `<reserved_107>`) from
generation_config.json open the turns, the contents are `tokenizer.encode(content)`:

    [system ids] 195 q1 196 a1 195 q2 196          <- prompt_ids (generation), history left-truncated as official
    195 q1 196 a1 195 q2 196 a2 </s>               <- training input (conversation_labels)

Official labels (fine-tune.py): every answer's ids, the final </s>, and at each later user token the label
</s> (the input there is 195: "an answer ends here"). `conversation_labels` reproduces them exactly (a label
that differs from its input, so they are kept as (input_ids, labels), not as trained/untrained runs).
"""
import json
from pathlib import Path

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
USER_ID, ASSISTANT_ID = 195, 196  # Baichuan2-Chat's generation_config.json
MAX_NEW_TOKENS, MODEL_MAX_LENGTH = 2048, 4096  # Baichuan2-Chat's generation_config / config
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- building the tokenizer
def read_sp_proto(sp_model_file):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(sp_model_file).read_bytes())
    except Exception:
        proto.trainer_spec.model_type = 0
    if proto.trainer_spec.model_type != 2 or not proto.trainer_spec.byte_fallback:
        raise SystemExit(f"{sp_model_file}: not a Baichuan tokenizer.model (expected a SentencePiece BPE model with "
                         f"byte fallback). Fix: pass the tokenizer.model of a baichuan-inc checkpoint")
    return proto


def build_tokenizer(sp_model_file, model_max_length: int = MODEL_MAX_LENGTH):
    """A PreTrainedTokenizerFast from a Baichuan SentencePiece `tokenizer.model` with the official ids."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = read_sp_proto(sp_model_file)
    pieces = [p.piece for p in proto.pieces[:3]]
    if pieces != ["<unk>", "<s>", "</s>"]:
        raise SystemExit(f"{sp_model_file}: ids 0-2 are {pieces}, Baichuan's are <unk> <s> </s>. Fix: pass the "
                         f"tokenizer.model of a baichuan-inc checkpoint (or one from train_tokenizer.py)")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in pieces])  # ids 0-2, as text too
    assert tok.get_vocab_size() == len(proto.pieces)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>", bos_token="<s>", eos_token="</s>",
        padding_side="left", clean_up_tokenization_spaces=False, model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"])


def chat_ids(generation_config_or_dir) -> tuple[int, int]:
    """(user_token_id, assistant_token_id) from generation_config.json (a dir) or a GenerationConfig."""
    if isinstance(generation_config_or_dir, (str, Path)):
        path = Path(generation_config_or_dir) / "generation_config.json"
        if not path.is_file():
            raise SystemExit(f"{path.parent}: no generation_config.json with user_token_id / assistant_token_id. "
                             f"Fix: copy Baichuan2-Chat's generation_config.json there")
        cfg = json.loads(path.read_text())
    else:
        cfg = generation_config_or_dir.to_dict()
    if not isinstance(cfg.get("user_token_id"), int) or not isinstance(cfg.get("assistant_token_id"), int):
        raise SystemExit(f"generation_config has no user_token_id / assistant_token_id (a Baichuan base or "
                         f"Baichuan-13B-Chat one?). Fix: add \"user_token_id\": {USER_ID}, \"assistant_token_id\": "
                         f"{ASSISTANT_ID} (Baichuan2-Chat's) to generation_config.json")
    return cfg["user_token_id"], cfg["assistant_token_id"]


def stop_ids(tokenizer, user_id: int | None = None, assistant_id: int | None = None) -> list[int]:
    """Ids that end an answer in generation: eos, as the official generation_config.json."""
    return [tokenizer.eos_token_id]


# ----------------------------------------------------------------------------- the chat format
def encode_text(tokenizer, text: str) -> list[int]:
    """The official `tokenizer.encode(content)`: SentencePiece ids, no bos/eos."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def check_messages(messages: list[dict]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: expected {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i}: a system message can only come first (as the official build_chat_input)")


def _turns(tokenizer, messages, user_id, assistant_id):
    """(system ids, [(role, [role id] + content ids), ...])."""
    check_messages(messages)
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    turns = [(m["role"], [user_id if m["role"] == "user" else assistant_id] + encode_text(tokenizer, m["content"]))
             for m in messages if m["role"] != "system"]
    return encode_text(tokenizer, system), turns


def conversation_labels(tokenizer, messages: list[dict], user_id: int, assistant_id: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a training conversation, the official fine-tune.py labels (unshifted, as HF models
    take them): answers and the final eos trained, the label at each user token is eos, a system message's ids
    (first, untrained) as in the official chat prompt. The conversation must end with an assistant message."""
    system, turns = _turns(tokenizer, messages, user_id, assistant_id)
    if not turns or turns[-1][0] != "assistant":
        raise ValueError("a training conversation must end with an assistant message")
    eos = tokenizer.eos_token_id
    ids, labels = list(system), [IGNORE_INDEX] * len(system)
    for role, turn in turns:
        ids += turn
        labels += [eos] + [IGNORE_INDEX] * (len(turn) - 1) if role == "user" else [IGNORE_INDEX] + turn[1:]
    return ids + [eos], labels + [eos]


def prompt_ids(tokenizer, messages: list[dict], user_id: int, assistant_id: int,
               max_new_tokens: int = MAX_NEW_TOKENS, model_max_length: int = MODEL_MAX_LENGTH) -> list[int]:
    """The official chat()'s input (generation_utils.build_chat_input): system ids, then whole rounds (a user message
    and what follows it) from the newest back while they fit in model_max_length - max_new_tokens, the assistant id
    (unless the last message is an assistant one), then cut from the left to that budget."""
    system, turns = _turns(tokenizer, messages, user_id, assistant_id)
    max_input = model_max_length - max_new_tokens
    max_history = max_input - len(system)
    rounds = []
    for role, turn in turns:
        if role == "user" or not rounds:
            rounds.append([])
        rounds[-1] += turn
    history = []
    for r in reversed(rounds):
        if not history or len(history) + len(r) <= max_history:
            history = r + history
            if len(history) < max_history:
                continue
        break
    ids = system + history
    if not messages or messages[-1]["role"] != "assistant":
        ids.append(assistant_id)
    return ids[-max_input:]  # as official, also for a budget <= 0
