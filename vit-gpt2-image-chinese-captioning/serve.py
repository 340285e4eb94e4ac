"""HTTP captioning service (bound to 127.0.0.1 unless you say otherwise).

    python serve.py --model_dir outputs/captioner --port 8000
    curl -s 127.0.0.1:8000/health
    curl -s 127.0.0.1:8000/caption -F image=@data/cache/synthetic/images/test_00000.png
    curl -s '127.0.0.1:8000/caption?num_beams=4' --data-binary @photo.jpg -H 'content-type: image/jpeg'

POST /caption: the image as a multipart form field `image`, or as the raw body (content-type image/* or
application/octet-stream). Query parameters (strict: integers are digits, booleans true/false):
num_beams (1-8; >1 = beam search), do_sample (true = sampling), top_k (>= 0), temperature (> 0),
max_new_tokens (1..model limit), seed (sampling).
-> {"caption": str, "width": int, "height": int}

Errors are {"error": {"message", "type", "param", "code"}}, never a 500 for a bad request:
  400  empty upload, bad query parameter;  413  body over --max_body_bytes (refused before it is read), an image
  over --max_pixels (decompression bomb);  415  not an image (unreadable, truncated, zero bytes), or a
  content-type that is neither multipart nor an image;  422  an image smaller than --min_side;  404 / 405.
Captioning runs in a worker thread (one at a time, a lock), so /health keeps answering; SIGTERM exits in seconds.
"""
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads must not spin

import torch  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from clean_data import BadImage, load_rgb  # noqa: E402
from model import caption_images, load_trained  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclass
class ServeArguments:
    model_dir: str = field(default=str(HERE / "outputs/captioner"), metadata={"help": "train.py --output_dir"})
    host: str = field(default="127.0.0.1", metadata={"help": "0.0.0.0 exposes the service to the network."})
    port: int = field(default=8000, metadata={"help": "0-65535 (0 = any free port)."})
    max_body_bytes: int = field(default=5 << 20, metadata={"help": "Larger uploads get 413 before they are read."})
    max_pixels: int = field(default=4096 * 4096, metadata={"help": "Larger images get 413 (decompression bombs)."})
    min_side: int = field(default=8, metadata={"help": "Images with a smaller side get 422."})
    max_beams: int = field(default=8, metadata={"help": "Largest accepted num_beams."})

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise SystemExit(f"--port: {self.port} is not in 0-65535. Fix: e.g. --port 8000")
        for name in ("max_body_bytes", "max_pixels", "min_side", "max_beams"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} < 1. Fix: pass a positive number")
        if not self.host:
            raise SystemExit("--host: empty. Fix: --host 127.0.0.1")
        if not (Path(self.model_dir) / "config.json").is_file():
            raise SystemExit(f"--model_dir: no config.json in {self.model_dir}. "
                             "Fix: run train.sh or pass its --output_dir")


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_response(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body is {int(declared)} bytes; at most {limit}", "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body is over {limit} bytes", "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int) -> bytes:
    body = await read_body(request, limit)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        request._body = body  # starlette's form parser reads the cached body, which is already bounded
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as e:  # malformed multipart
            raise ApiError(400, f"malformed multipart body ({type(e).__name__})", "bad_multipart") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "multipart form has no file field 'image'; send -F image=@photo.jpg", "no_image",
                           "image")
        data = await upload.read()
    elif ctype.startswith(("image/", "application/octet-stream")) or not ctype:
        data = body
    else:
        raise ApiError(415, f"content-type {ctype!r}: send an image (image/*, application/octet-stream) or a "
                            "multipart form with a field 'image'", "unsupported_media_type")
    if not data:
        raise ApiError(400, "empty upload; send an image", "empty_image", "image")
    return data


def decode_image(data: bytes, args: ServeArguments):
    """Bytes -> RGB PIL image with the cleaner's checks (load_rgb reads a path: a temp file)."""
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(data)
        f.flush()
        try:
            return load_rgb(f.name, args.max_pixels, args.min_side)
        except BadImage as e:
            status = {"decompression_bomb": 413, "too_small": 422}.get(e.reason, 415)
            msg = "not a readable image" if status == 415 else "image rejected"
            raise ApiError(status, f"{msg} ({e.reason}: {e.detail.replace(f.name, '<upload>')})", e.reason,
                           "image") from None


def generation_kwargs(query, args: ServeArguments, limit: int) -> dict:
    def integer(name, lo, hi, default):
        raw = query.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise ApiError(400, f"{name}={raw!r}: expected an integer in {lo}..{hi}", "bad_parameter", name)
        return int(raw)
    unknown = sorted(set(query) - {"num_beams", "do_sample", "top_k", "temperature", "max_new_tokens", "seed"})
    if unknown:
        raise ApiError(400, f"unknown query parameter {unknown[0]!r}", "bad_parameter", unknown[0])
    sample = query.get("do_sample", "false")
    if sample not in ("true", "false"):
        raise ApiError(400, f"do_sample={sample!r}: expected true or false", "bad_parameter", "do_sample")
    kw = {"num_beams": integer("num_beams", 1, args.max_beams, 1), "do_sample": sample == "true",
          "max_new_tokens": integer("max_new_tokens", 1, limit, limit)}
    if kw["do_sample"]:
        kw["top_k"] = integer("top_k", 0, 10_000, 50)
        try:
            kw["temperature"] = float(query.get("temperature", "1.0"))
        except ValueError:
            kw["temperature"] = -1.0
        if not 0 < kw["temperature"] <= 10:
            raise ApiError(400, f"temperature={query.get('temperature')!r}: expected a number in (0, 10]",
                           "bad_parameter", "temperature")
    kw["seed"] = integer("seed", 0, 2**31 - 1, None)
    return kw


def create_app(args: ServeArguments) -> FastAPI:
    model, tokenizer, image_processor = load_trained(args.model_dir)
    limit = int(model.generation_config.max_length or 32)
    lock = threading.Lock()
    app = FastAPI(title="vit-gpt2-image-chinese-captioning")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}", "internal_error")

    @app.get("/health")
    def health():
        return {"status": "ok", "model_dir": str(args.model_dir)}

    def run(image, kw):
        seed = kw.pop("seed")
        with lock:
            if seed is not None:
                torch.manual_seed(seed)
            return caption_images([image], model, tokenizer, image_processor, **kw)[0]

    @app.post("/caption")
    async def caption(request: Request):
        kw = generation_kwargs(request.query_params, args, limit)
        image = decode_image(await image_bytes(request, args.max_body_bytes), args)
        text = await run_in_threadpool(run, image, kw)
        return {"caption": text, "width": image.width, "height": image.height}

    return app


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(ServeArguments).parse_args_into_dataclasses(args=argv)  # checks before loading
    import uvicorn
    uvicorn.run(create_app(args), host=args.host, port=args.port, timeout_graceful_shutdown=3)


if __name__ == "__main__":
    main()
