"""HTTP service for a trained classifier (bound to 127.0.0.1 unless you say otherwise).

    python serve.py --model_dir outputs/classifier --port 8000
    curl -s 127.0.0.1:8000/health
    curl -s 127.0.0.1:8000/predict -H 'content-type: application/json' -d '{"texts": ["房间干净，服务很好"]}'

POST /predict {"texts": [str, ...], "top_k": int (optional)} -> {"predictions": [{"label": ..., "probs": {label: p}}]}
(multi-label models: "labels": [...] above the 0.5 threshold instead of "label"; top_k keeps the k largest probs).

Every error is {"error": {"message", "type", "param", "code"}}:
  400  well-formed JSON whose content cannot be classified: empty list, a text empty after cleaning (blank,
       zero-width, control or HTML only), invalid Unicode (a lone surrogate such as "\\ud800");
  413  body over --max_body_bytes (refused before it is read), more than --max_texts texts, a text over --max_chars;
  422  not the expected JSON: malformed, not UTF-8, empty body, nested too deeply, wrong types (strict: true is
       not 1, 1 is not "1"), unknown fields;
  404 / 405 unknown path or method.
The body is read with a size bound, decoded as strict UTF-8 and parsed here, and characters are counted before any
tokenisation; inference runs in a worker thread so the server keeps answering.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import HfArgumentParser

from clean_data import normalize
from model import load_trained, predict_proba

HERE = Path(__file__).resolve().parent


@dataclass
class ServeArguments:
    model_dir: str = field(default=str(HERE / "outputs/classifier"), metadata={"help": "train.py --output_dir"})
    host: str = field(default="127.0.0.1", metadata={"help": "0.0.0.0 exposes the service to the network."})
    port: int = field(default=8000, metadata={"help": "0-65535 (0 = any free port)."})
    max_texts: int = field(default=64, metadata={"help": "Most texts per request."})
    max_chars: int = field(default=2000, metadata={"help": "Longest accepted text, in characters."})
    max_body_bytes: int = field(default=1 << 20, metadata={
        "help": "Largest request body; bigger bodies get 413 before they are read."})

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise SystemExit(f"--port: {self.port} is not in 0-65535. Fix: e.g. --port 8000")
        for name in ("max_texts", "max_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} < 1. Fix: pass a positive number")
        if not self.host:
            raise SystemExit("--host: empty. Fix: --host 127.0.0.1")
        if not (Path(self.model_dir) / "config.json").is_file():
            raise SystemExit(f"--model_dir: no config.json in {self.model_dir}. "
                             "Fix: run train.sh or pass its --output_dir")


class PredictRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    texts: list[StrictStr]
    top_k: StrictInt | None = Field(default=None, ge=1)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_response(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _validation_message(errors) -> tuple[str, str | None]:
    parts, param = [], None
    for e in errors:
        loc = ".".join(map(str, e.get("loc", ())))
        param = param or loc or None
        parts.append(f"{loc}: {e.get('msg')}" if e.get("type") != "extra_forbidden" else f"{loc}: unknown field")
    return "; ".join(parts) + ' (expected {"texts": ["..."]})', param


async def read_json(request: Request, limit: int):
    """The body as JSON: bounded size, strict UTF-8, depth-safe; raises ApiError."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body is {int(declared)} bytes; at most {limit}", "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body is over {limit} bytes", "body_too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise ApiError(422, 'empty body; send {"texts": ["..."]}', "empty_body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(422, f"body is not valid UTF-8 (byte {e.start}); send UTF-8 JSON", "invalid_utf8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(422, f'malformed JSON body ({e.msg} at line {e.lineno} column {e.colno}); '
                            'send {"texts": ["..."]}', "invalid_json") from None
    except RecursionError:
        raise ApiError(422, "malformed JSON body: nested too deeply", "invalid_json") from None


def check_texts(texts: list[str], args: ServeArguments) -> None:
    """Counts and characters are checked before any tokenisation."""
    if not texts:
        raise ApiError(400, "texts is empty; send at least one text", "empty_texts", "texts")
    if len(texts) > args.max_texts:
        raise ApiError(413, f"{len(texts)} texts; at most {args.max_texts} per request", "too_many_texts", "texts")
    for i, t in enumerate(texts):
        if len(t) > args.max_chars:
            raise ApiError(413, f"texts[{i}] has {len(t)} characters; at most {args.max_chars}", "text_too_long",
                           f"texts[{i}]")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ApiError(400, f"texts[{i}] is not valid Unicode (lone surrogate U+{ord(t[e.start]):04X} at "
                                f"{e.start})", "invalid_unicode", f"texts[{i}]") from None
        if not t.strip():
            raise ApiError(400, f"texts[{i}] is empty", "empty_text", f"texts[{i}]")
        if not normalize(t):
            raise ApiError(400, f"texts[{i}] is empty after cleaning (only spaces, zero-width or control "
                                "characters, HTML tags or URLs)", "empty_text", f"texts[{i}]")


def create_app(args: ServeArguments) -> FastAPI:
    model, tokenizer = load_trained(args.model_dir)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    multi = model.config.problem_type == "multi_label_classification"
    app = FastAPI(title="chinese_classifier")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        msg, param = _validation_message(exc.errors())
        return error_response(422, msg, "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}", "internal_error")

    @app.get("/health")
    def health():
        return {"status": "ok", "labels": labels, "multi_label": multi}

    @app.post("/predict")
    async def predict(request: Request):
        payload = await read_json(request, args.max_body_bytes)
        try:
            req = PredictRequest.model_validate(payload)
        except ValidationError as e:
            msg, param = _validation_message(e.errors())
            raise ApiError(422, msg, "invalid_request", param) from None
        check_texts(req.texts, args)
        probs = await run_in_threadpool(predict_proba, req.texts, model, tokenizer)
        out = []
        for p in probs:
            ranked = sorted(zip(labels, p), key=lambda x: -x[1])[:req.top_k] if req.top_k else zip(labels, p)
            item = {"probs": {lab: round(float(x), 6) for lab, x in ranked}}
            if multi:
                item["labels"] = [lab for lab, x in zip(labels, p) if x > 0.5]
            else:
                item["label"] = labels[int(p.argmax())]
            out.append(item)
        return {"predictions": out}

    return app


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(ServeArguments).parse_args_into_dataclasses(args=argv)  # checks before loading
    import uvicorn
    uvicorn.run(create_app(args), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
