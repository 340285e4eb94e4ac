"""HTTP service for a trained Chinese CLIP: embeddings, text -> image search over an index built at startup,
zero-shot classification (bound to 127.0.0.1 unless you say otherwise).

    python serve.py --model_dir outputs/clip --index_file data/cache/clean/test.jsonl --port 8000
    curl -s 127.0.0.1:8000/health
    curl -s 127.0.0.1:8000/search -H 'content-type: application/json' -d '{"text": "白色背景上有两个红色的圆形", "top_k": 3}'
    curl -s 127.0.0.1:8000/embed -H 'content-type: application/json' -d '{"texts": ["红色的圆形"]}'
    curl -s 127.0.0.1:8000/embed -F image=@data/cache/shapes/images/test/000000.png
    curl -s 127.0.0.1:8000/zero_shot -F image=@data/cache/shapes/images/test/000000.png -F labels=红色,绿色,蓝色

POST /embed   JSON {"texts": [str, ...]} -> {"embeddings": [[float]]} (L2-normalised); or multipart files
              `image` (one or more) -> {"embeddings": [...]} for the images.
POST /search  JSON {"text": str, "top_k": int (default 5)} -> {"results": [{"rank", "image_path", "score"}]}.
POST /zero_shot multipart: `image` file + `labels` ("a,b,c" or a JSON list) [+ `templates`, JSON list with {}]
              -> {"label", "probs": {label: p}} (prompts 「一张{}的图片」... averaged, CLIP's prompt ensemble).
GET  /health  -> {"status": "ok", "index_size", "model"}.

Every error is {"error": {"message", "type", "param", "code"}}: 400 a bad image (code = clean_data's reason:
unreadable, truncated, zero_byte, decompression_bomb, too_small) or bad field; 413 a body / upload over
--max_upload_bytes (refused from content-length before it is read), too many texts/labels/files, a text too long;
415 a JSON endpoint sent a non-JSON body, or an image endpoint no multipart form; 422 malformed JSON or wrong types;
404 / 405 unknown path or method. Uploads are checked with load_rgb (the cleaner's checks) before the model sees them.
"""
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import HfArgumentParser

from clean_data import DEFAULT_MAX_PIXELS, BadImage, load_rgb, normalize_text
from model import MAX_LOGIT_SCALE, PROMPT_TEMPLATES, embed_images, embed_texts, load_trained, zero_shot_classifier

HERE = Path(__file__).resolve().parent


@dataclass
class ServeArguments:
    model_dir: str = field(default=str(HERE / "outputs/clip"), metadata={"help": "train.py --output_dir"})
    index_file: str = field(default=str(HERE / "data/cache/clean/test.jsonl"), metadata={
        "help": "jsonl/csv with an image_path column (clean_data.py output): the images /search searches. "
                "Embedded once at startup."})
    index_root: str | None = field(default=None, metadata={
        "help": "Folder relative image paths of --index_file start from (default: the file's folder)."})
    max_index_images: int | None = field(default=None, metadata={"help": "Index only the first N images."})
    host: str = field(default="127.0.0.1", metadata={"help": "0.0.0.0 exposes the service to the network."})
    port: int = field(default=8000, metadata={"help": "0-65535 (0 = any free port)."})
    max_upload_bytes: int = field(default=5 << 20, metadata={
        "help": "Largest request body / uploaded image; bigger ones get 413 before they are read."})
    max_files: int = field(default=8, metadata={"help": "Most images per /embed request."})
    max_texts: int = field(default=64, metadata={"help": "Most texts (or labels) per request."})
    max_chars: int = field(default=200, metadata={"help": "Longest accepted text, in characters."})
    max_top_k: int = field(default=100, metadata={"help": "Largest /search top_k."})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "Uploads with more pixels: 400."})
    min_side: int = field(default=16, metadata={"help": "Uploads with a shorter side: 400 too_small."})

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise SystemExit(f"--port: {self.port} is not in 0-65535. Fix: e.g. --port 8000")
        for name in ("max_upload_bytes", "max_files", "max_texts", "max_chars", "max_top_k", "max_pixels",
                     "min_side"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} < 1. Fix: pass a positive number")
        if self.max_index_images is not None and self.max_index_images < 1:
            raise SystemExit(f"--max_index_images: {self.max_index_images} < 1. Fix: drop it (all) or e.g. 1000")
        if not self.host:
            raise SystemExit("--host: empty. Fix: --host 127.0.0.1")
        if not (Path(self.model_dir) / "config.json").is_file():
            raise SystemExit(f"--model_dir: no config.json in {self.model_dir}. "
                             "Fix: run train.sh or pass its --output_dir")
        if not Path(self.index_file).is_file():
            raise SystemExit(f"--index_file: {self.index_file} not found. Fix: run clean_data.py, or pass a jsonl/csv "
                             "with an image_path column")


class EmbedRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    texts: list[StrictStr]


class SearchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    text: StrictStr
    top_k: StrictInt = Field(default=5, ge=1)


# Copied from chinese_classifier/serve.py:ApiError
class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


# Copied from chinese_classifier/serve.py:error_response
def error_response(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _validation_message(errors, expected: str) -> tuple[str, str | None]:
    parts, param = [], None
    for e in errors:
        loc = ".".join(map(str, e.get("loc", ())))
        param = param or loc or None
        parts.append(f"{loc}: {e.get('msg')}" if e.get("type") != "extra_forbidden" else f"{loc}: unknown field")
    return "; ".join(parts) + f" (expected {expected})", param


def check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body is {int(declared)} bytes; at most {limit}", "body_too_large")


async def read_json(request: Request, limit: int, expected: str):
    """The body as JSON: bounded size (refused from content-length before reading), strict UTF-8, depth-safe."""
    check_length(request, limit)
    if request.headers.get("content-type", "").startswith("multipart/"):
        raise ApiError(415, f"this endpoint takes JSON {expected}, not a multipart form", "unsupported_media_type")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body is over {limit} bytes", "body_too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise ApiError(422, f"empty body; send {expected}", "empty_body")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(422, f"body is not valid UTF-8 (byte {e.start}); send UTF-8 JSON", "invalid_utf8") from None
    except json.JSONDecodeError as e:
        raise ApiError(422, f"malformed JSON body ({e.msg} at line {e.lineno} column {e.colno}); send {expected}",
                       "invalid_json") from None
    except RecursionError:
        raise ApiError(422, "malformed JSON body: nested too deeply", "invalid_json") from None


def check_text(text: str, param: str, args: ServeArguments) -> str:
    if len(text) > args.max_chars:
        raise ApiError(413, f"{param} has {len(text)} characters; at most {args.max_chars}", "text_too_long", param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"{param} is not valid Unicode (lone surrogate U+{ord(text[e.start]):04X})",
                       "invalid_unicode", param) from None
    clean = normalize_text(text)
    if not clean:
        raise ApiError(400, f"{param} is empty (after normalising)", "empty_text", param)
    return clean


async def read_form(request: Request, args: ServeArguments):
    check_length(request, args.max_upload_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "send the image as a multipart form: -F image=@photo.jpg", "unsupported_media_type",
                       "image")
    try:
        return await request.form(max_files=args.max_files, max_fields=16)
    except Exception as e:  # malformed multipart, too many files/fields
        status = 413 if "Too many" in str(e) else 400
        raise ApiError(status, f"bad multipart form: {e}", "bad_form") from None


async def read_images(form, args: ServeArguments) -> list:
    """Every `image` file of the form -> upright RGB PIL images (load_rgb's checks: 400 with its reason)."""
    files = [v for k, v in form.multi_items() if k == "image"]
    if not files or any(isinstance(f, str) for f in files):
        raise ApiError(400, "no image file in the form (field name `image`)", "missing_image", "image")
    images = []
    for i, f in enumerate(files):
        data = await f.read(args.max_upload_bytes + 1)
        if len(data) > args.max_upload_bytes:
            raise ApiError(413, f"image {i} is over {args.max_upload_bytes} bytes", "image_too_large", "image")
        with tempfile.NamedTemporaryFile(suffix=Path(f.filename or "").suffix[:8]) as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                images.append(load_rgb(tmp.name, args.max_pixels, args.min_side))
            except BadImage as e:
                raise ApiError(400, f"image {i} ({f.filename}): {e.reason}: {e.detail.replace(tmp.name, 'upload')}",
                               e.reason, "image") from None
    return images


def read_index(path: str, root: str | None, limit: int | None) -> list[str]:
    """Distinct image paths of a jsonl/csv index file, in order."""
    import csv
    base = Path(root) if root else Path(path).resolve().parent
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f) if path.endswith(".csv") else (json.loads(line) for line in f if line.strip())
        seen = dict.fromkeys(str(base / r["image_path"]) if not Path(r["image_path"]).is_absolute()
                             else r["image_path"] for r in rows)
    paths = list(seen)
    return paths[:limit] if limit else paths


def build_index(paths: list[str], model, processor, args: ServeArguments, batch_size: int = 256):
    """Embed the index images (loaded lazily, batch by batch); unreadable ones are skipped and counted."""
    kept, embs, skipped = [], [], 0
    for i in range(0, len(paths), batch_size):
        images, names = [], []
        for p in paths[i:i + batch_size]:
            try:
                images.append(load_rgb(p, args.max_pixels, args.min_side))
                names.append(p)
            except BadImage:
                skipped += 1
        if images:
            embs.append(embed_images(images, model, processor, batch_size))
            kept += names
    if not kept:
        raise SystemExit(f"--index_file: none of the {len(paths)} images of {args.index_file} could be loaded. "
                         "Fix: check --index_root")
    return kept, torch.cat(embs), skipped


def create_app(args: ServeArguments, index=None) -> FastAPI:
    """`index` = (paths, embeddings) to reuse one already built (benchmark.py, tests)."""
    model, processor = load_trained(args.model_dir)
    model.eval()
    if index is None:
        paths, index_emb, skipped = build_index(read_index(args.index_file, args.index_root, args.max_index_images),
                                                model, processor, args)
        if skipped:
            print(f"index: skipped {skipped} unreadable images")
    else:
        paths, index_emb = index
    print(f"index: {len(paths)} images from {args.index_file}")
    app = FastAPI(title="chinese_clip")
    app.state.index = (paths, index_emb)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        msg, param = _validation_message(exc.errors(), "JSON")
        return error_response(422, msg, "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}", "internal_error")

    def validate(cls, payload, expected):
        try:
            return cls.model_validate(payload)
        except ValidationError as e:
            msg, param = _validation_message(e.errors(), expected)
            raise ApiError(422, msg, "invalid_request", param) from None

    @app.get("/health")
    def health():
        return {"status": "ok", "index_size": len(paths), "model": type(model).__name__}

    @app.post("/embed")
    async def embed(request: Request):
        if request.headers.get("content-type", "").startswith("multipart/"):
            images = await read_images(await read_form(request, args), args)
            emb = await run_in_threadpool(embed_images, images, model, processor)
            return {"embeddings": emb.tolist()}
        expected = '{"texts": ["..."]} or a multipart form with image files'
        req = validate(EmbedRequest, await read_json(request, args.max_upload_bytes, expected), expected)
        if not req.texts:
            raise ApiError(400, "texts is empty; send at least one text", "empty_texts", "texts")
        if len(req.texts) > args.max_texts:
            raise ApiError(413, f"{len(req.texts)} texts; at most {args.max_texts}", "too_many_texts", "texts")
        texts = [check_text(t, f"texts[{i}]", args) for i, t in enumerate(req.texts)]
        emb = await run_in_threadpool(embed_texts, texts, model, processor)
        return {"embeddings": emb.tolist()}

    @app.post("/search")
    async def search(request: Request):
        expected = '{"text": "...", "top_k": 5}'
        req = validate(SearchRequest, await read_json(request, args.max_upload_bytes, expected), expected)
        if req.top_k > args.max_top_k:
            raise ApiError(413, f"top_k {req.top_k}; at most {args.max_top_k}", "top_k_too_large", "top_k")
        text = check_text(req.text, "text", args)
        query = await run_in_threadpool(embed_texts, [text], model, processor)
        scores, idx = (index_emb @ query[0]).topk(min(req.top_k, len(paths)))
        return {"results": [{"rank": r + 1, "image_path": paths[int(i)], "score": round(float(s), 6)}
                            for r, (s, i) in enumerate(zip(scores, idx))]}

    @app.post("/zero_shot")
    async def zero_shot(request: Request):
        form = await read_form(request, args)
        raw = form.get("labels")
        if not isinstance(raw, str) or not raw.strip():
            raise ApiError(400, "no labels: send -F labels=红色,绿色 (or a JSON list)", "missing_labels", "labels")
        try:
            labels = json.loads(raw) if raw.lstrip().startswith("[") else raw.split(",")
        except json.JSONDecodeError:
            raise ApiError(422, "labels: malformed JSON list", "invalid_json", "labels") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ApiError(422, "labels: a list of strings", "invalid_request", "labels")
        labels = [check_text(x, f"labels[{i}]", args) for i, x in enumerate(labels)]
        if not 2 <= len(labels) <= args.max_texts or len(set(labels)) != len(labels):
            raise ApiError(400 if len(labels) < 2 or len(set(labels)) != len(labels) else 413,
                           f"{len(labels)} labels; send 2 to {args.max_texts} different ones", "bad_labels", "labels")
        templates = PROMPT_TEMPLATES
        if form.get("templates"):
            try:
                templates = json.loads(form["templates"])
            except (json.JSONDecodeError, TypeError):
                raise ApiError(422, "templates: malformed JSON list", "invalid_json", "templates") from None
            if not isinstance(templates, list) or not templates or not all(
                    isinstance(t, str) and t.count("{}") == 1 for t in templates) or len(templates) > 8:
                raise ApiError(422, 'templates: 1-8 strings with one {} each, e.g. ["一张{}的图片"]',
                               "invalid_request", "templates")
        (image,) = (await read_images(form, args))[:1]

        def classify():
            classes = zero_shot_classifier(labels, model, processor, templates)
            img = embed_images([image], model, processor)
            scale = model.logit_scale.detach().clamp(0, MAX_LOGIT_SCALE).exp()
            return (scale * img @ classes.T).softmax(-1)[0]
        probs = await run_in_threadpool(classify)
        return {"label": labels[int(probs.argmax())], "probs": {lab: round(float(p), 6) for lab, p in zip(labels, probs)}}

    return app


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(ServeArguments).parse_args_into_dataclasses(args=argv)  # checks before loading
    import uvicorn
    app = create_app(args)
    uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, timeout_graceful_shutdown=3)).run()


if __name__ == "__main__":
    main()
