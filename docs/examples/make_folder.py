"""Write an in-memory data set (MNIST, Fashion-MNIST, CIFAR-10) as an image folder in
torchvision's ImageFolder layout, for trying --dataset imagefolder on real images offline:

    python docs/examples/make_folder.py --dataset fashion-mnist --out /tmp/fmnist-folder [--format png|jpg] \
        [--limit-train N] [--limit-val N]

DIR/train/<class>/<index>.<ext> and DIR/val/<class>/<index>.<ext>; class folders are the
class numbers zero-padded ("00".."09"), so their sorted order is the label order, and files are
the sample index zero-padded. --limit-train N / --limit-val N write only the first N samples of
the training / test split (N >= 1; all of them without the flag, or where the split has fewer).
Existing files are kept (delete DIR to write it anew).
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from PIL import Image

from kd_accel.data import load_split
from kd_accel.errors import KDError, run_cli


def encode(img: torch.Tensor, fmt: str) -> bytes:
    """The file bytes of image uint8 [C, H, W] (C = 1 or 3): PNG (lossless), or JPEG at quality 95."""
    pixels = img.permute(1, 2, 0).numpy()  # [H, W, C]; PIL takes grey as [H, W]
    buf = io.BytesIO()
    options = {"format": "PNG"} if fmt == "png" else {"format": "JPEG", "quality": 95}
    Image.fromarray(pixels[..., 0] if img.shape[0] == 1 else pixels).save(buf, **options)
    return buf.getvalue()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    p.add_argument("--limit-train", type=int, metavar="N", help="only the first N training samples (train/)")
    p.add_argument("--limit-val", type=int, metavar="N", help="only the first N test samples (val/)")
    a = p.parse_args(argv)
    for flag, value in (("--limit-train", a.limit_train), ("--limit-val", a.limit_val)):
        if value is not None and value < 1:
            raise KDError(f"{flag} must be >= 1, got {value} (leave it out for the whole split)")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise KDError(f"--out {a.out} is a file, not a folder: give a folder (made if missing)")
    for split, sub, limit in (("train", "train", a.limit_train), ("test", "val", a.limit_val)):
        s = load_split(a.dataset, split, a.data_dir)
        n = len(s) if limit is None else min(limit, len(s))
        for i in range(n):
            path = Path(a.out) / sub / f"{int(s.labels[i]):02d}" / f"{i:05d}.{a.format}"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(s.images[i], a.format))
        print(f"{sub}: {n} images in {Path(a.out) / sub}")


if __name__ == "__main__":
    run_cli(main)
