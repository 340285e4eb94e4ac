"""OpenAI-compatible chat server: /v1/chat/completions (streaming SSE or not) and /v1/models.

    python serve.py --model_dir outputs/bloom_lora            # 127.0.0.1:8000
    python serve.py --model_dir outputs/bloom_merged --num_gpus 2   # naive model parallelism

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="chinese_bloom", messages=[{"role": "user", "content": "3千米等于多少米？"}])

The prompt is built by dataset.build_prompt, the same code that built the training data.
Requests are validated (400 with an OpenAI-style error body), max_tokens is capped, prompts are
bounded, and generations run one at a time behind a lock, so concurrent requests queue up
instead of fighting over the model.
"""
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from transformers import HfArgumentParser, TextIteratorStreamer

from dataset import build_prompt, get_template
from model import generate, load_for_inference

DEFAULT_MAX_TOKENS = 256


@dataclass
class ServeArguments:
    model_dir: str = field(default="outputs/bloom_lora", metadata={"help": "full/merged checkpoint or LoRA adapter dir"})
    template: str = field(default="belle")
    model_name: str = field(default="chinese_bloom", metadata={"help": "the name /v1/models reports"})
    host: str = field(default="127.0.0.1", metadata={"help": "0.0.0.0 exposes the server to your network"})
    port: int = field(default=8000)
    max_tokens_cap: int = field(default=512, metadata={"help": "larger max_tokens are lowered to this"})
    max_prompt_tokens: int = field(default=2048, metadata={"help": "longer prompts get a 400"})
    num_gpus: int = field(default=0, metadata={"help": ">1: split the model over GPUs with device_map.py"})


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False


def error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": None}})


def create_app(model, tokenizer, template, model_name: str = "zero_nlp", max_tokens_cap: int = 512,
               max_prompt_tokens: int = 2048) -> FastAPI:
    app = FastAPI(title=f"{model_name} (OpenAI-compatible)")
    lock = threading.Lock()  # one generation at a time; other requests wait in the thread pool

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if first.get("type") == "json_invalid":
            return error(400, f"request body is not valid JSON: {first.get('msg')}")
        return error(400, f"invalid field '{where}': {first.get('msg')}", param=where or None)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "zero_nlp"}]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        messages = [m.model_dump() for m in req.messages]
        if messages[-1]["role"] != "user":
            return error(400, "the last message must have role 'user'", param="messages")
        if not any(m["content"].strip() for m in messages if m["role"] == "user"):
            return error(400, "the user messages are empty", param="messages")
        prompt = build_prompt(messages, template, tokenizer.eos_token)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if n_prompt > max_prompt_tokens:
            return error(400, f"the prompt has {n_prompt} tokens, more than the limit of {max_prompt_tokens}",
                         param="messages")
        max_tokens = min(req.max_tokens or DEFAULT_MAX_TOKENS, max_tokens_cap)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        kwargs = dict(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p)

        if not req.stream:
            with lock:
                text = generate(model, tokenizer, [prompt], **kwargs)[0]
            n_out = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            return {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "length" if n_out >= max_tokens else "stop"}],
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out,
                              "total_tokens": n_prompt + n_out}}

        def chunk(delta, finish=None):
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def events():
            with lock:
                streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
                worker = threading.Thread(target=generate, args=(model, tokenizer, [prompt]),
                                          kwargs={**kwargs, "streamer": streamer})
                worker.start()
                yield chunk({"role": "assistant", "content": ""})
                pieces = []
                for piece in streamer:
                    if piece:
                        pieces.append(piece)
                        yield chunk({"content": piece})
                worker.join()
            n_out = len(tokenizer("".join(pieces), add_special_tokens=False)["input_ids"])
            yield chunk({}, "length" if n_out >= max_tokens else "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(ServeArguments).parse_args_into_dataclasses(argv)
    template = get_template(args.template)
    device_map = None
    if args.num_gpus > 1:
        import torch
        from transformers import AutoConfig

        from device_map import balanced_device_map
        if (Path(args.model_dir) / "adapter_config.json").exists():
            raise SystemExit("--num_gpus: splitting over GPUs needs a full checkpoint, not a LoRA adapter. "
                             "Fix: python merge.py --adapter_dir ... first and serve the merged dir")
        if torch.cuda.device_count() < args.num_gpus:
            raise SystemExit(f"--num_gpus: {args.num_gpus} requested but {torch.cuda.device_count()} visible. "
                             f"Fix: lower --num_gpus")
        device_map = balanced_device_map(AutoConfig.from_pretrained(args.model_dir), args.num_gpus)
    model, tokenizer = load_for_inference(args.model_dir, device_map=device_map)
    app = create_app(model, tokenizer, template, args.model_name, args.max_tokens_cap, args.max_prompt_tokens)
    import uvicorn
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
