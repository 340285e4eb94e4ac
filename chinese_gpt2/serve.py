"""Chat server for the trained GPT-2 chatbot: an OpenAI-compatible /v1/chat/completions that streams tokens as
server-sent events, and a minimal chat page at / (plain HTML + JavaScript, served by this file; no UI framework).

    python serve.py                                      # outputs/gpt2_chat of this folder, http://127.0.0.1:8000/
    python chinese_gpt2/serve.py --model_dir chinese_gpt2/outputs/gpt2_chat --port 8001

    curl -N http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \
      -d '{"model": "chinese_gpt2", "stream": true, "messages": [{"role": "user", "content": "今天是星期三。"}]}'

The prompt is dataset.chat_prompt_ids, the same code that built the training dialogues
([CLS] 用户：... [SEP] 助手：... [SEP] ... 助手：); system messages are not part of that format and are skipped.
Validation, before tokenising where it can: an empty user message, a prompt over --max_prompt_chars characters or
--max_prompt_tokens tokens, and max_tokens over --max_tokens_cap get a 400 with OpenAI's error body; bodies over
--max_body_bytes a 413; everything else (bad JSON, bad UTF-8, wrong types, unknown fields) as in chinese_bloom's
server, whose shared pieces are marked copies below. One generation thread behind a bounded queue (503 when
full); a client that disconnects stops its generation; SIGTERM exits within seconds.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads must not spin

import asyncio  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, ClassVar, Literal  # noqa: E402

import torch  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, ValidationError  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from transformers import HfArgumentParser, StoppingCriteria, StoppingCriteriaList  # noqa: E402

from dataset import chat_prompt_ids  # noqa: E402
from model import load_for_inference  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_MAX_TOKENS = 32
MIN_TEMPERATURE = 1e-5  # below this sampling is greedy (1e-300 would give inf/NaN probabilities)


@dataclass
class ServeArguments:
    model_dir: str = field(default=str(HERE / "outputs/gpt2_chat"), metadata={"help": "output_dir of train.py --task chat"})
    model_name: str = field(default="chinese_gpt2", metadata={"help": "the name /v1/models reports"})
    host: str = field(default="127.0.0.1", metadata={"help": "0.0.0.0 exposes the server to your network"})
    port: int = field(default=8000)
    max_tokens_cap: int = field(default=64, metadata={"help": "max_tokens above this get a 400"})
    max_prompt_tokens: int = field(default=192, metadata={
        "help": "longer prompts get a 400 (also bounded by the model's positions minus --max_tokens_cap)"})
    max_prompt_chars: int = field(default=1000, metadata={"help": "more characters get a 400 before tokenising"})
    max_body_bytes: int = field(default=64 * 1024, metadata={"help": "larger request bodies get a 413"})
    max_queue: int = field(default=8, metadata={"help": "requests waiting for the model; more get a 503"})

    def __post_init__(self):
        if not 1 <= self.port <= 65535:
            raise SystemExit(f"--port: {self.port} is not a TCP port. Fix: pass 1-65535, e.g. --port 8000")
        for name in ("max_tokens_cap", "max_prompt_tokens", "max_prompt_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be > 0. Fix: pass a positive number")
        if self.max_queue < 0:
            raise SystemExit(f"--max_queue: {self.max_queue} must be >= 0. Fix: pass 0 or more")
        path = Path(self.model_dir)
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model_dir: {path} has no config.json (does it exist?). Fix: train first "
                             f"(bash train.sh) or pass the output_dir of `python train.py --task chat`")


# ============================================================================= shared pieces (chinese_bloom/serve.py)
# Copied from chinese_bloom/serve.py:APIError
class APIError(Exception):
    """An error answered with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return JSONResponse(status_code=self.status, content=self.body(), headers=headers)


# Copied from chinese_bloom/serve.py:install_error_handlers
def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can produce (ours, FastAPI's, Starlette's 404/405, a bug) in OpenAI's format."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return APIError(400, f"invalid field '{where}': {first.get('msg')}", param=where or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message, code = f"Unknown request URL: {request.method} {request.url.path}", "unknown_url"
        elif exc.status_code == 405:
            message, code = f"Method {request.method} is not allowed on {request.url.path}", "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        return APIError(exc.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()


# Copied from chinese_bloom/serve.py:check_unicode
def check_unicode(data) -> None:
    """400 for strings that are not valid Unicode (a JSON escape like "\\ud800" gives a lone surrogate)."""
    stack = [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise APIError(400, f"'{where or 'body'}' is not valid Unicode ({e.reason} at character {e.start}). "
                                    f"Fix: send UTF-8 text without lone surrogates", param=where or None)
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((k, where))
                stack.append((v, f"{where}.{k}" if where else str(k)))
        elif isinstance(value, list):
            stack.extend((v, f"{where}.{i}") for i, v in enumerate(value))


# Copied from chinese_bloom/serve.py:read_json
async def read_json(request: Request, max_body_bytes: int) -> dict:
    """The body as a JSON object, bounded in size before anything is parsed or tokenised."""
    too_large = APIError(413, f"the request body is larger than the limit of {max_body_bytes} bytes "
                              f"(--max_body_bytes)", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > 16 * max_body_bytes:
        raise too_large  # not worth reading; the connection is closed after the answer
    body, seen = bytearray(), 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen <= max_body_bytes:
            body += chunk
        elif seen > 16 * max_body_bytes:
            break
    if seen > max_body_bytes:
        raise too_large
    if not body.strip():
        raise APIError(400, "the request body is empty. Fix: send a JSON object, e.g. "
                            '{"model": ..., "messages": [{"role": "user", "content": "..."}]}')
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start}: {e.reason}). "
                            f"Fix: encode the JSON as UTF-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}")
    except RecursionError:
        raise APIError(400, "the request body is not valid JSON: nested too deeply")
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    check_unicode(data)
    return data


# Copied from chinese_bloom/serve.py:parse_request
def parse_request(data: dict, cls):
    """Validate `data` into `cls` (strict types): unsupported fields that matter and unknown fields get a 400."""
    for key in cls.UNSUPPORTED:
        if data.get(key) not in (None, False, 0, "", [], {}):
            raise APIError(400, f"'{key}' is not supported by this server. Fix: remove it from the request",
                           param=key, code="unsupported_parameter")
    for key in data:
        if key not in cls.model_fields:
            raise APIError(400, f"unrecognized request argument supplied: '{key}'", param=key,
                           code="unknown_parameter")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise APIError(400, f"invalid field '{where}': {first.get('msg')}", param=where or None)


# Copied from chinese_bloom/serve.py:StreamOptions
class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    include_usage: bool = False


# Copied from chinese_bloom/serve.py:SamplingRequest
class SamplingRequest(BaseModel):
    """The fields every endpoint shares; subclasses add the prompt (messages or prompt)."""
    model_config = ConfigDict(strict=True, extra="forbid")
    UNSUPPORTED: ClassVar[tuple[str, ...]] = (
        "logprobs", "top_logprobs", "logit_bias", "presence_penalty", "frequency_penalty", "tools", "tool_choice",
        "functions", "function_call", "response_format", "parallel_tool_calls", "audio", "modalities",
        "prediction", "best_of", "echo", "suffix", "reasoning_effort", "web_search_options")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored, as it changes nothing in the answer
    # declared so that parse_request can name them; any value other than the neutral one is a 400
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    parallel_tool_calls: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    best_of: Any = None
    echo: Any = None
    suffix: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None


# Copied from chinese_bloom/serve.py:Sampling
@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool


# Copied from chinese_bloom/serve.py:sampling_of
def sampling_of(req: SamplingRequest, max_tokens: int | None, max_tokens_cap: int, model_name: str) -> Sampling:
    """Check the shared fields against the server and resolve them (404 for a model that is not ours)."""
    if req.model != model_name:
        raise APIError(404, f"The model '{req.model}' does not exist; this server serves '{model_name}'",
                       param="model", code="model_not_found")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "'stop' takes up to 4 non-empty strings", param="stop")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options")
    return Sampling(max_new_tokens=min(max_tokens or DEFAULT_MAX_TOKENS, max_tokens_cap),
                    temperature=req.temperature, top_p=req.top_p, n=req.n, stop=stop, seed=req.seed,
                    stream=req.stream, include_usage=bool(req.stream_options and req.stream_options.include_usage))


# Copied from chinese_bloom/serve.py:Job
class Job:
    """One request's generation: runs in the worker thread, reports to the request's event loop."""

    def __init__(self, run):
        self.run = run  # run(job) -> result, called in the worker thread; may call job.emit
        self.stop = threading.Event()  # set by a disconnect or shutdown: generate() ends at the next token
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()

    def emit(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (shutdown)
            self.stop.set()


# Copied from chinese_bloom/serve.py:GenerationWorker
class GenerationWorker:
    """ONE thread does every generation, in order; at most `max_queue` jobs wait behind the running one.

    A single thread means a single OpenMP team and no lock held across awaits; handlers await their job's
    events, so the event loop (and /v1/models) stays responsive however many requests wait.
    """

    def __init__(self, max_queue: int = 16):
        self.max_queue = max_queue
        self.jobs: queue.Queue = queue.Queue()
        self.pending: set[Job] = set()  # queued or running
        self.lock = threading.Lock()
        self.closed = False
        self.generated_jobs = 0
        self.thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        self.thread.start()

    def submit(self, run) -> Job:
        job = Job(run)
        with self.lock:
            if self.closed:
                raise APIError(503, "the server is shutting down", code="server_shutting_down")
            if len(self.pending) > self.max_queue:
                raise APIError(503, f"the server is busy: {len(self.pending)} requests are queued or running "
                                    f"(--max_queue {self.max_queue}). Retry in a moment", code="server_overloaded")
            self.pending.add(job)
        self.jobs.put(job)
        return job

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                if job.stop.is_set() or self.closed:
                    event = ("error", APIError(503, "the request was cancelled before it started"))
                else:
                    event = ("done", job.run(job))
            except Exception as e:  # a failed generation ends its request; the model is free at once
                event = ("error", APIError(500, f"generation failed: {type(e).__name__}: {e}"))
            with self.lock:  # free before answering: the next request finds the model idle
                self.pending.discard(job)
                self.generated_jobs += 1
            job.emit(*event)

    def shutdown(self) -> None:
        """Stop the running and queued generations and refuse new ones (SIGTERM)."""
        with self.lock:
            self.closed = True
            for job in self.pending:
                job.stop.set()
        self.jobs.put(None)


# Copied from chinese_bloom/serve.py:_Watch
class _Watch(StoppingCriteria):
    """Called by generate() after every token: incremental text, stop strings, the job's stop event."""

    def __init__(self, tokenizer, prompt_len: int, eos: set[int], stops: list[str], stop_event, on_text):
        self.tokenizer, self.prompt_len, self.eos, self.stops = tokenizer, prompt_len, eos, stops
        self.stop_event, self.on_text = stop_event, on_text
        self.sent, self.matched = 0, False

    def text_of(self, ids: list[int]) -> tuple[str, bool]:
        if ids and ids[-1] in self.eos:
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return (text[:min(cuts)], True) if cuts else (text, False)

    def flush(self, text: str, final: bool) -> None:
        safe = len(text)
        if not final:  # hold back a partial character and what could be the start of a stop string
            while safe and text[safe - 1] == "\ufffd":
                safe -= 1
            for s in self.stops:
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[safe - k:safe] == s[:k]:
                        safe -= k
                        break
        if safe > self.sent:
            self.on_text(text[self.sent:safe])
            self.sent = safe

    def __call__(self, input_ids, scores, **kwargs):
        text, self.matched = self.text_of(input_ids[0, self.prompt_len:].tolist())
        self.flush(text, final=self.matched)
        return torch.full((input_ids.shape[0],), self.matched or self.stop_event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


# Copied from chinese_bloom/serve.py:generate_one
@torch.no_grad()
def generate_one(model, tokenizer, prompt_ids: list[int], p: Sampling, stop_event, on_text=None) -> dict:
    """One continuation: {"text", "completion_tokens" (generated ids, EOS included), "finish_reason"}."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos))
    watch = _Watch(tokenizer, len(prompt_ids), eos, p.stop, stop_event, on_text or (lambda text: None))
    sample = p.temperature >= MIN_TEMPERATURE
    input_ids = torch.tensor([prompt_ids], device=model.device)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                         max_new_tokens=p.max_new_tokens, do_sample=sample,
                         temperature=p.temperature if sample else None, top_p=p.top_p if sample else None,
                         top_k=None, eos_token_id=sorted(eos), pad_token_id=pad,
                         stopping_criteria=StoppingCriteriaList([watch]))
    ids = out[0, len(prompt_ids):].tolist()
    text, matched = watch.text_of(ids)
    watch.flush(text, final=True)
    if matched or (ids and ids[-1] in eos):
        finish = "stop"
    elif len(ids) >= p.max_new_tokens:
        finish = "length"
    else:
        finish = "cancelled"  # the client went away or the server is stopping; nobody reads this
    return {"text": text, "completion_tokens": len(ids), "finish_reason": finish}


# Copied from chinese_bloom/serve.py:generate_choices
def generate_choices(model, tokenizer, prompt_ids: list[int], p: Sampling, job: Job) -> list[dict]:
    """The n choices of one request, one after another (seeded once, so they differ)."""
    if p.seed is not None:
        torch.manual_seed(p.seed)
    choices = []
    for i in range(p.n):
        if job.stop.is_set():
            break
        choices.append(generate_one(model, tokenizer, prompt_ids, p, job.stop,
                                    lambda text, i=i: job.emit("delta", i, text)))
    return choices


# Copied from chinese_bloom/serve.py:usage_of
def usage_of(n_prompt: int, choices: list[dict]) -> dict:
    n_out = sum(c["completion_tokens"] for c in choices)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}


# Copied from chinese_bloom/serve.py:respond
async def respond(request: Request, worker: GenerationWorker, run, p: Sampling, n_prompt: int, head: dict,
                  full_choice, chunk_choice, start_chunk=None):
    """Queue `run` on the worker and answer: one JSON body, or SSE chunks as the tokens come.

    head: {"id", "object", "created", "model"} of the non-streaming body; chunks use head["object"] + ".chunk"
    unless it is "text_completion". full_choice(i, choice) / chunk_choice(i, text, finish) build the choices.
    The job is stopped when the client disconnects, in every path (finally).
    """
    job = worker.submit(run)  # 503 here when the queue is full
    if not p.stream:
        try:
            checked = time.monotonic()
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    event = ("waiting",)
                if time.monotonic() - checked >= 0.5:  # deltas arrive all the time: check on a clock
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        job.stop.set()
                        return JSONResponse(status_code=499, content=APIError(
                            499, "client closed the request").body())
                if event[0] == "error":
                    raise event[1]
                if event[0] == "done":
                    choices = event[1]
                    return {**head, "choices": [full_choice(i, c) for i, c in enumerate(choices)],
                            "usage": usage_of(n_prompt, choices)}
        finally:
            job.stop.set()

    obj = head["object"] if head["object"] == "text_completion" else head["object"] + ".chunk"
    chunk_head = {**head, "object": obj}

    def sse(body: dict) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(choices: list[dict], usage=None) -> str:
        body = {**chunk_head, "choices": choices}
        if p.include_usage:
            body["usage"] = usage
        return sse(body)

    async def events():
        try:
            if start_chunk is not None:
                for i in range(p.n):
                    yield chunk([start_chunk(i)])
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    yield ": waiting for the model\n\n"  # a comment: lets a disconnect be noticed while queued
                    continue
                if event[0] == "delta":
                    yield chunk([chunk_choice(event[1], event[2], None)])
                elif event[0] == "error":
                    yield sse(event[1].body())
                    return
                else:
                    choices = event[1]
                    for i, c in enumerate(choices):
                        yield chunk([chunk_choice(i, "", c["finish_reason"])])
                    if p.include_usage:
                        yield chunk([], usage_of(n_prompt, choices))
                    yield "data: [DONE]\n\n"
                    return
        finally:  # also on disconnect (the task is cancelled) and on shutdown
            job.stop.set()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# Copied from chinese_bloom/serve.py:new_app
def new_app(title: str, model_name: str, worker: GenerationWorker) -> FastAPI:
    """The FastAPI app with OpenAI-style errors, /v1/models, and the worker stopped on shutdown."""
    app = FastAPI(title=title)
    app.state.worker = worker
    install_error_handlers(app)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "zero_nlp"}]}

    @app.get("/v1/models/{name}")
    async def one_model(name: str):
        if name != model_name:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "zero_nlp"}

    return app


# Copied from chinese_bloom/serve.py:run_server
def run_server(app: FastAPI, host: str, port: int) -> None:
    """uvicorn, with SIGTERM/Ctrl-C first stopping the generations so that shutdown takes seconds."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.worker.shutdown()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=3)).run()


# Copied from chinese_bloom/serve.py:ChatMessage
class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


# Copied from chinese_bloom/serve.py:ChatRequest
class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


# ============================================================================= this folder
PAGE = """<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>chinese_gpt2</title>
<style>
body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }
#log div { margin: .3em 0; white-space: pre-wrap; } .user { color: #1a4c9c; } .assistant { color: #1e6b2e; }
#err { color: #b00020; } form { display: flex; gap: .5em; } #q { flex: 1; }
</style></head>
<body>
<h3>chinese_gpt2 聊天</h3>
<div id="log"></div>
<form id="f"><input id="q" autocomplete="off" placeholder="例如：你好，我叫王明。"><button>发送</button>
<button type="button" id="reset">新对话</button></form>
<div id="err"></div>
<script>
const MODEL = "__MODEL__";
let history = [];
const log = document.getElementById("log"), q = document.getElementById("q"), err = document.getElementById("err");
function line(role, text) {
  const d = document.createElement("div"); d.className = role;
  d.textContent = (role === "user" ? "用户：" : "助手：") + text; log.appendChild(d); return d;
}
document.getElementById("reset").onclick = () => { history = []; log.innerHTML = ""; err.textContent = ""; };
document.getElementById("f").onsubmit = async (e) => {
  e.preventDefault();
  const text = q.value.trim(); if (!text) return;
  q.value = ""; err.textContent = "";
  history.push({role: "user", content: text}); line("user", text);
  const out = line("assistant", ""); let answer = "";
  const r = await fetch("/v1/chat/completions", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({model: MODEL, messages: history, stream: true})});
  if (!r.ok) { err.textContent = (await r.json()).error.message; history.pop(); out.remove(); return; }
  const reader = r.body.getReader(), dec = new TextDecoder(); let buf = "";
  while (true) {
    const {done, value} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf("\\n\\n")) >= 0) {
      const ev = buf.slice(0, i); buf = buf.slice(i + 2);
      if (!ev.startsWith("data: ") || ev === "data: [DONE]") continue;
      const msg = JSON.parse(ev.slice(6));
      if (msg.error) { err.textContent = msg.error.message; continue; }
      const delta = msg.choices[0].delta.content || ""; answer += delta; out.textContent = "助手：" + answer;
    }
  }
  history.push({role: "assistant", content: answer});
};
</script></body></html>
"""


def create_app(model, tokenizer, model_name: str = "chinese_gpt2", max_tokens_cap: int = 64,
               max_prompt_tokens: int = 192, max_prompt_chars: int = 1000, max_body_bytes: int = 64 * 1024,
               max_queue: int = 8) -> FastAPI:
    """/ (chat page), /v1/models, /v1/chat/completions; prompt + answer always fit the model's positions."""
    positions = model.config.n_positions
    max_tokens_cap = min(max_tokens_cap, positions // 2)
    max_prompt_tokens = min(max_prompt_tokens, positions - max_tokens_cap)
    app = new_app(f"{model_name} (OpenAI-compatible chat)", model_name, GenerationWorker(max_queue))
    page = PAGE.replace("__MODEL__", model_name)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_request(await read_json(request, max_body_bytes), ChatRequest)
        requested = req.max_completion_tokens or req.max_tokens
        if requested is not None and requested > max_tokens_cap:
            raise APIError(400, f"max_tokens {requested} is over this server's cap of {max_tokens_cap} "
                                f"(--max_tokens_cap)", param="max_tokens")
        p = sampling_of(req, requested, max_tokens_cap, model_name)
        messages = [{"role": m.role, "content": m.content} for m in req.messages if m.role != "system"]
        if not messages or messages[-1]["role"] != "user":
            raise APIError(400, "the last message must have role 'user'", param="messages")
        for a, b in zip(messages, messages[1:]):
            if a["role"] == b["role"]:
                raise APIError(400, "user and assistant messages must alternate", param="messages")
        if not messages[-1]["content"].strip():
            raise APIError(400, "the prompt is empty: the last user message has no text", param="messages")
        n_chars = sum(len(m["content"]) for m in messages)
        if n_chars > max_prompt_chars:  # before tokenising
            raise APIError(400, f"the messages have {n_chars} characters, more than the limit of {max_prompt_chars}",
                           param="messages")
        if messages[0]["role"] != "user":
            messages = messages[1:]
        prompt_ids = chat_prompt_ids(messages, tokenizer)
        if len(prompt_ids) > max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens, more than the limit of {max_prompt_tokens}",
                           param="messages")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name}
        return await respond(
            request, app.state.worker, lambda job: generate_choices(model, tokenizer, prompt_ids, p, job), p,
            len(prompt_ids), head,
            full_choice=lambda i, c: {"index": i, "message": {"role": "assistant", "content": c["text"]},
                                      "finish_reason": c["finish_reason"], "logprobs": None},
            chunk_choice=lambda i, text, finish: {"index": i, "delta": {"content": text} if text else {},
                                                  "finish_reason": finish, "logprobs": None},
            start_chunk=lambda i: {"index": i, "delta": {"role": "assistant", "content": ""},
                                   "finish_reason": None, "logprobs": None})

    return app


def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(ServeArguments).parse_args_into_dataclasses(args=argv)
    model, tokenizer = load_for_inference(args.model_dir)
    app = create_app(model, tokenizer, args.model_name, args.max_tokens_cap, args.max_prompt_tokens,
                     args.max_prompt_chars, args.max_body_bytes, args.max_queue)
    print(f"chat page: http://{args.host}:{args.port}/", flush=True)
    run_server(app, args.host, args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
