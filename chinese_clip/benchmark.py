"""Speed, measured in one run (numbers in README.md, with the machine):

1. images/s through the training data path (lazy load_rgb + image processor in the dataset transform, the
   collator): DataLoader with --num_workers workers vs loading in the main process (num_workers=0);
2. /search latency on an index of --index_images images (make_data.py draws them, serve.py embeds them at startup),
   through the FastAPI app in-process (no network).

    python benchmark.py --model_dir outputs/clip
    python benchmark.py --model_dir outputs/clip --index_images 2000 --batches 10   # quicker
"""
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent


@dataclass
class BenchmarkArguments:
    model_dir: str = field(default=str(HERE / "outputs/clip"), metadata={"help": "train.py --output_dir"})
    train_file: str = field(default=str(HERE / "data/cache/clean/train.jsonl"))
    batch_size: int = 64
    batches: int = field(default=20, metadata={"help": "Batches timed per setting (after one warm-up batch)."})
    num_workers: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Settings to compare."})
    index_images: int = field(default=10_000, metadata={"help": "Size of the /search index."})
    queries: int = field(default=50)
    seed: int = 0

    def __post_init__(self):
        if not (Path(self.model_dir) / "config.json").is_file():
            raise SystemExit(f"--model_dir: no config.json in {self.model_dir}. Fix: bash train.sh first")
        if not Path(self.train_file).is_file():
            raise SystemExit(f"--train_file: {self.train_file} not found. Fix: bash train.sh (or clean_data.py) first")
        for name in ("batch_size", "batches", "index_images", "queries"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} < 1. Fix: pass a positive number")
        if any(n < 0 for n in self.num_workers):
            raise SystemExit("--num_workers: must be >= 0. Fix: e.g. --num_workers 0 2")


def data_path_images_per_second(args, processor) -> dict:
    from dataset import CLIPCollator, load_images_table, with_images
    table = load_images_table(args.train_file, args.batch_size * (args.batches + 1))
    ds = with_images(table, processor.image_processor, train=True)
    collate = CLIPCollator(processor.tokenizer, processor.tokenizer.model_max_length)
    out = {}
    for workers in args.num_workers:
        loader = DataLoader(ds, batch_size=args.batch_size, num_workers=workers, collate_fn=collate, shuffle=False)
        it = iter(loader)
        next(it)  # warm-up: worker start, first decode
        start, n = time.perf_counter(), 0
        for batch in it:
            n += len(batch["pixel_values"])
        out[workers] = n / (time.perf_counter() - start)
        print(f"data path, num_workers={workers}: {out[workers]:.0f} images/s ({n} images)")
    return out


def search_latency(args) -> dict:
    from fastapi.testclient import TestClient

    import make_data
    from serve import ServeArguments, create_app
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        make_data.main(["--output_dir", tmp, "--n_train", str(args.index_images), "--n_validation", "1", "--n_test", "1",
                        "--n_test_unseen", "0", "--captions_per_image", "1", "--seed", str(args.seed)])
        made = time.perf_counter() - start
        start = time.perf_counter()
        app = create_app(ServeArguments(model_dir=args.model_dir, index_file=str(Path(tmp) / "train.jsonl")))
        built = time.perf_counter() - start
        client = TestClient(app)
        queries = [f"{bg}背景上有两个{c}的圆形" for bg in ("白色", "黑色", "灰色") for c in ("红色", "蓝色", "绿色")]
        client.post("/search", json={"text": queries[0], "top_k": 10})  # warm-up
        times = []
        for i in range(args.queries):
            t = time.perf_counter()
            r = client.post("/search", json={"text": queries[i % len(queries)], "top_k": 10})
            times.append(time.perf_counter() - t)
            assert r.status_code == 200 and len(r.json()["results"]) == 10
    times.sort()
    res = {"index_images": len(app.state.index[0]), "make_data_s": made, "index_build_s": built,
           "p50_ms": 1000 * statistics.median(times), "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))]}
    print(f"/search on {res['index_images']} images: p50 {res['p50_ms']:.1f} ms, p95 {res['p95_ms']:.1f} ms "
          f"(index embedded at startup in {built:.0f} s; images drawn in {made:.0f} s)")
    return res


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    from model import load_trained
    torch.manual_seed(args.seed)
    _, processor = load_trained(args.model_dir)
    speeds = data_path_images_per_second(args, processor)
    base = speeds.get(0)
    if base:
        for workers, v in speeds.items():
            if workers:
                print(f"num_workers={workers} / main process: {v / base:.2f}x")
    latency = search_latency(args)
    return {"images_per_second": speeds, "search": latency}


if __name__ == "__main__":
    main()
