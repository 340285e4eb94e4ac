"""Clean pair files -> model-ready data: one `datasets.Dataset` row per image (its captions in a list), images
loaded lazily in the dataset's transform (never all in memory), the collator, the retrieval and zero-shot metrics."""
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from clean_data import DEFAULT_MAX_PIXELS, load_rgb

HERE = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = str(HERE / "data/cache/clean")
EVAL_SPLITS = ("validation", "test", "test_unseen")


@dataclass
class DataArguments:
    data_dir: str | None = field(default=None, metadata={
        "help": "Output dir of clean_data.py (train/validation/test[/test_unseen].jsonl). Default: the directory of "
                "--train_file when given, else data/cache/clean (what train.sh cleans)."})
    train_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/train.jsonl."})
    validation_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/validation.jsonl."})
    test_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/test.jsonl."})
    test_unseen_file: str | None = field(default=None, metadata={
        "help": "A second held-out split (default <data_dir>/test_unseen.jsonl if it exists: colour-shape "
                "combinations never seen in training)."})
    max_length: int = field(default=32, metadata={"help": "Tokens per caption, [CLS]/[SEP] included."})
    max_train_samples: int | None = field(default=None, metadata={"help": "First N train images (quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "First N images of each held-out split."})
    zero_shot_tasks: str = field(default="colour,shape", metadata={
        "help": "Comma-separated attribute names (the rows' \"attributes\") to classify zero-shot on the held-out "
                "splits, with prompts such as 「一张{}的图片」. Empty = none."})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "load_rgb's bomb limit at load time."})
    min_side: int = field(default=16, metadata={"help": "load_rgb's smallest side at load time."})

    def __post_init__(self):
        if self.data_dir is None:  # late default: copied-out folders pass --train_file ... without --data_dir
            self.data_dir = str(Path(self.train_file).parent) if self.train_file else DEFAULT_DATA_DIR
        for split in ("train", "validation", "test"):
            path = self.split_file(split)
            if not Path(path).is_file():
                flag = f"--{split}_file" if getattr(self, f"{split}_file") else "--data_dir"
                raise SystemExit(f"{flag}: {path} not found. Fix: run `python make_data.py && python clean_data.py "
                                 f"--output_dir {Path(path).parent}` first, or pass an existing jsonl")
        if self.test_unseen_file and not Path(self.test_unseen_file).is_file():
            raise SystemExit(f"--test_unseen_file: {self.test_unseen_file} not found. Fix: drop it or pass a jsonl")
        if self.max_length < 3:
            raise SystemExit(f"--max_length: {self.max_length} < 3 leaves no room for a caption. Fix: e.g. 32")
        for name in ("max_train_samples", "max_eval_samples", "max_pixels", "min_side"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: drop it or pass e.g. 200")

    def split_file(self, split: str) -> str | None:
        given = getattr(self, f"{split}_file")
        if given:
            return given
        path = Path(self.data_dir) / f"{split}.jsonl"
        return str(path) if split != "test_unseen" or path.is_file() else None

    @property
    def tasks(self) -> list[str]:
        return [t.strip() for t in self.zero_shot_tasks.split(",") if t.strip()]


def load_images_table(path: str, max_images: int | None = None) -> Dataset:
    """A clean pair file (one row per caption) -> one row per image: image_path, captions (list), attributes
    (a JSON string: the first row's). Images keep their first-seen order; paths are what clean_data wrote."""
    order, captions, attributes = [], {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            key = row["image_path"]
            if key not in captions:
                if max_images is not None and len(order) >= max_images:
                    continue
                order.append(key)
                captions[key] = []
                attributes[key] = json.dumps(row.get("attributes") or {}, ensure_ascii=False)
            captions[key].append(row["text"])
    return Dataset.from_dict({"image_path": order, "captions": [captions[k] for k in order],
                              "attributes": [attributes[k] for k in order]})


class ImageTextTransform:
    """datasets `set_transform`: load each image when its row is read (lazily, in the DataLoader worker), run the
    image processor, pick the caption: a random one in training (torch RNG: seeded per worker by Trainer), the
    first one otherwise."""

    def __init__(self, image_processor, train: bool, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 16):
        self.image_processor, self.train = image_processor, train
        self.max_pixels, self.min_side = max_pixels, min_side

    def __call__(self, batch: dict) -> dict:
        images = [load_rgb(p, self.max_pixels, self.min_side) for p in batch["image_path"]]
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        if self.train:
            texts = [caps[int(torch.randint(len(caps), ()))] for caps in batch["captions"]]
        else:
            texts = [caps[0] for caps in batch["captions"]]
        return {"pixel_values": list(pixels), "text": texts}


def with_images(table: Dataset, image_processor, train: bool, data_args: DataArguments | None = None) -> Dataset:
    kw = {} if data_args is None else {"max_pixels": data_args.max_pixels, "min_side": data_args.min_side}
    ds = table.with_format(None)
    ds.set_transform(ImageTextTransform(image_processor, train, **kw))
    return ds


class CLIPCollator:
    """Stacks pixel_values and tokenises the captions with dynamic padding (truncated to max_length)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, examples: list[dict]) -> dict:
        enc = self.tokenizer([e["text"] for e in examples], padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
        batch.update({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
        return batch


def recall_at_k(sim: torch.Tensor, caption_image: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """sim: (captions, images) cosine similarities; caption_image[c] = index of caption c's image.

    text->image R@K: the caption's image is in its top K images. image->text R@K: at least one of the image's
    captions is in its top K captions (the COCO / Flickr30k protocol). Chance R@1 is 1/images for both."""
    n_txt, n_img = sim.shape
    out = {}
    # text -> image: rank of the true image = number of images scoring strictly higher
    true = sim[torch.arange(n_txt), caption_image]
    t2i_rank = (sim > true[:, None]).sum(1)
    # image -> text: the best rank among the image's captions
    sim_i = sim.T  # (images, captions)
    own = caption_image[None, :] == torch.arange(n_img)[:, None]  # (images, captions)
    best_own = sim_i.masked_fill(~own, float("-inf")).max(1).values
    i2t_rank = (sim_i > best_own[:, None]).sum(1)
    for k in ks:
        out[f"t2i_r{k}"] = float((t2i_rank < k).float().mean())
        out[f"i2t_r{k}"] = float((i2t_rank < k).float().mean())
    out["r_mean"] = float(np.mean([out[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in ks]))
    out["chance_r1"] = 1.0 / n_img
    return out


def zero_shot_accuracy(image_emb: torch.Tensor, labels: list[str], class_emb: torch.Tensor,
                       class_names: list[str]) -> dict:
    """Accuracy of argmax cosine over the class prompts' embeddings; the majority-class rate for comparison."""
    pred = (image_emb @ class_emb.T).argmax(1)
    idx = torch.tensor([class_names.index(lab) for lab in labels])
    majority = max(labels.count(c) for c in set(labels)) / len(labels)
    return {"accuracy": float((pred == idx).float().mean()), "majority": majority, "n_classes": len(class_names)}
