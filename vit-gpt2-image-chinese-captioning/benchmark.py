"""Speed of the two paths that matter on CPU, measured in one run:
1. images/s through the training data path: the lazy transform (load_rgb + image processor + tokenising) in a
   DataLoader with --num_workers worker processes vs in the main process (num_workers=0);
2. captions/s of a trained model: greedy vs beam search (--num_beams).

    python benchmark.py --model_dir outputs/captioner --data_dir data/cache/clean
    python benchmark.py --model_dir outputs/captioner --num_workers 2 --num_beams 4 --n_images 512
Prints a small table and writes benchmark.json to --model_dir. The numbers in README.md come from here.
"""
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import HfArgumentParser

from clean_data import load_rgb
from dataset import CaptionCollator, DataArguments, load_splits, with_transform
from model import caption_images, load_trained

HERE = Path(__file__).resolve().parent


@dataclass
class BenchmarkArguments:
    model_dir: str = field(default=str(HERE / "outputs/captioner"), metadata={"help": "train.py --output_dir"})
    data_dir: str = field(default=str(HERE / "data/cache/clean"))
    num_workers: int = field(default=2, metadata={"help": "DataLoader workers of the lazy path (vs 0)."})
    batch_size: int = 32
    n_images: int = field(default=1024, metadata={"help": "Train pairs pushed through the data path."})
    n_caption: int = field(default=64, metadata={"help": "Test images captioned per decoding method."})
    num_beams: int = 4

    def __post_init__(self):
        if not (Path(self.model_dir) / "config.json").is_file():
            raise SystemExit(f"--model_dir: no config.json in {self.model_dir}. Fix: run train.sh first")
        for name in ("batch_size", "n_images", "n_caption", "num_beams"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} < 1. Fix: pass a positive number")
        if self.num_workers < 1:
            raise SystemExit(f"--num_workers: {self.num_workers} < 1 (0 is the baseline, always run). Fix: e.g. 2")


def loader_images_per_second(ds, batch_size: int, num_workers: int) -> float:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=CaptionCollator())
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["pixel_values"])
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    model, tokenizer, processor = load_trained(args.model_dir)
    raw = load_splits(DataArguments(data_dir=args.data_dir, max_train_samples=args.n_images,
                                    max_eval_samples=args.n_caption))
    ds = with_transform(raw["train"], processor, tokenizer, int(model.generation_config.max_length or 33) - 1)
    result = {"cpu": os.cpu_count(), "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size}
    result["images_per_s_main_process"] = loader_images_per_second(ds, args.batch_size, 0)
    result[f"images_per_s_{args.num_workers}_workers"] = loader_images_per_second(ds, args.batch_size,
                                                                                args.num_workers)
    images = [load_rgb(p) for p in raw["test"]["image_path"]]
    caption_images(images[:4], model, tokenizer, processor)  # warm-up
    for name, kw in (("greedy", {}), (f"beam{args.num_beams}", {"num_beams": args.num_beams})):
        start = time.perf_counter()
        caption_images(images, model, tokenizer, processor, **kw)
        result[f"captions_per_s_{name}"] = len(images) / (time.perf_counter() - start)
    print(f"{'measure':34s} value")
    for k, v in result.items():
        print(f"{k:34s} {v:.1f}" if isinstance(v, float) else f"{k:34s} {v}")
    print(f"lazy loading: {args.num_workers} workers / main process = "
          f"{result[f'images_per_s_{args.num_workers}_workers'] / result['images_per_s_main_process']:.2f}x; "
          f"beam/greedy captions/s = "
          f"{result[f'captions_per_s_beam{args.num_beams}'] / result['captions_per_s_greedy']:.2f}x")
    (Path(args.model_dir) / "benchmark.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
