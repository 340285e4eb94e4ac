"""HTTP service for a trained classifier (bound to 127.0.0.1 unless you say otherwise).

    python serve.py --model_dir outputs/classifier --port 8000
    curl -s 127.0.0.1:8000/health
    curl -s 127.0.0.1:8000/predict -H 'content-type: application/json' -d '{"texts": ["房间干净，服务很好"]}'

POST /predict {"texts": [str, ...]} -> {"predictions": [{"label": ..., "probs": {label: p}}, ...]}
(multi-label models: "labels": [...] above the 0.5 threshold instead of "label").
"""
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from transformers import HfArgumentParser

from model import load_trained, predict_proba

FOLDER = Path(__file__).resolve().parent


@dataclass
class ServeArguments:
    model_dir: str = field(default=str(FOLDER / "outputs/classifier"), metadata={"help": "train.py --output_dir"})
    host: str = field(default="127.0.0.1", metadata={"help": "0.0.0.0 exposes the service to the network."})
    port: int = 8000
    max_texts: int = field(default=64, metadata={"help": "Most texts per request."})
    max_chars: int = field(default=2000, metadata={"help": "Longest accepted text, in characters."})


class PredictRequest(BaseModel):
    texts: list[str]


def create_app(args: ServeArguments) -> FastAPI:
    model, tokenizer = load_trained(args.model_dir)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    multi = model.config.problem_type == "multi_label_classification"
    app = FastAPI(title="chinese_classifier")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            msg = "malformed JSON body; send {\"texts\": [\"...\"]}"
        else:
            msg = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in errors)
            msg += " (expected {\"texts\": [\"...\"]})"
        return JSONResponse(status_code=422, content={"error": msg})

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": msg})

    @app.get("/health")
    def health():
        return {"status": "ok", "labels": labels, "multi_label": multi}

    @app.post("/predict")
    def predict(req: PredictRequest):
        if not req.texts:
            return error(400, "texts is empty; send at least one text")
        if len(req.texts) > args.max_texts:
            return error(413, f"{len(req.texts)} texts; at most {args.max_texts} per request")
        for i, t in enumerate(req.texts):
            if not t.strip():
                return error(400, f"texts[{i}] is empty")
            if len(t) > args.max_chars:
                return error(413, f"texts[{i}] has {len(t)} characters; at most {args.max_chars}")
        probs = predict_proba(req.texts, model, tokenizer)
        out = []
        for p in probs:
            item = {"probs": {lab: round(float(x), 6) for lab, x in zip(labels, p)}}
            if multi:
                item["labels"] = [lab for lab, x in zip(labels, p) if x > 0.5]
            else:
                item["label"] = labels[int(p.argmax())]
            out.append(item)
        return {"predictions": out}

    return app


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(ServeArguments).parse_args_into_dataclasses(args=argv)
    import uvicorn
    uvicorn.run(create_app(args), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
