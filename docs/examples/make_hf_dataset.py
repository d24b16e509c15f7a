"""Write Fashion-MNIST (or MNIST, CIFAR-10) as a Hugging Face DatasetDict saved with save_to_disk,
PNG-encoded in the Arrow table, for trying --dataset hf on real images offline:

    python docs/examples/make_hf_dataset.py --dataset fashion-mnist --out /tmp/fmnist-hf \
        [--limit-train N] [--limit-test N]
    python docs/examples/make_hf_dataset.py --from-folder /tmp/fmnist-png --out /tmp/fmnist-hf

Splits "train" and "test"; columns "image" (datasets.Image: the PNG bytes) and "label" (a
ClassLabel). From an in-memory data set (read as kd_accel reads it: Debian's
/usr/share/datasets/fashion-mnist, or --data-dir) row i is sample i, its bytes those
make_folder.py writes for it (its encode: PIL's PNG), its class name the class number
zero-padded ("00".."09", make_folder.py's class folders). From an image folder
(make_folder.py's, or any in torchvision's layout: DIR/train, DIR/val) row i is the folder's
sample i, its bytes the file's own, its classes the class folders: the same data as the folder,
sample for sample. --limit-train N / --limit-test N keep the first N rows of a split. --out must
not exist yet.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from kd_accel.errors import KDError, run_cli


def _check(a: argparse.Namespace) -> None:
    for flag, value in (("--limit-train", a.limit_train), ("--limit-test", a.limit_test)):
        if value is not None and value < 1:
            raise KDError(f"{flag} must be >= 1, got {value} (leave it out for the whole split)")
    if Path(a.out).exists():
        raise KDError(f"--out {a.out} exists: give a new folder (save_to_disk would mix two datasets' files)")


Rows = tuple[list[bytes], list[int], list[str]]  # (encoded images, labels, class names)


def from_memory(dataset: str, data_dir: str | None, split: str, limit: int | None) -> Rows:
    """(PNG bytes, labels, class names) of the first `limit` samples of an in-memory split."""
    from make_folder import encode  # beside this script: the bytes make_folder.py writes

    from kd_accel.data import load_split

    s = load_split(dataset, split, data_dir)
    n = len(s) if limit is None else min(limit, len(s))
    images = [encode(s.images[i], "png") for i in range(n)]
    return images, s.labels[:n].tolist(), [f"{c:02d}" for c in range(s.num_classes)]


def from_folder(root: str, split: str, limit: int | None) -> Rows:
    """(file bytes, labels, class names) of the first `limit` samples of a folder's split, in its
    sample order (kd_accel's listing: torchvision's ImageFolder order)."""
    from kd_accel.data import load_folder

    s = load_folder(root, split, workers=0)
    n = len(s) if limit is None else min(limit, len(s))
    index = s.index
    images = [Path(os.path.join(index.root, index.paths[i])).read_bytes() for i in range(n)]
    return images, index.labels[:n].tolist(), list(index.classes)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist", help="an in-memory data set (default: %(default)s)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--from-folder", metavar="DIR", help="an image folder (DIR/train, DIR/val) instead of --dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--limit-train", type=int, metavar="N", help="only the first N training samples")
    p.add_argument("--limit-test", type=int, metavar="N", help="only the first N test samples")
    a = p.parse_args(argv)
    _check(a)
    try:
        from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    except ImportError:
        raise KDError("this example writes a Hugging Face dataset with the `datasets` library: "
                      "pip install 'kd_accel[hf]'") from None
    splits = {}
    for split, limit in (("train", a.limit_train), ("test", a.limit_test)):
        images, labels, classes = (from_folder(a.from_folder, split, limit) if a.from_folder
                                   else from_memory(a.dataset, a.data_dir, split, limit))
        features = Features({"image": Image(), "label": ClassLabel(names=classes)})
        splits[split] = Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "label": labels},
                                          features=features)
        print(f"{split}: {len(labels)} images, {len(classes)} classes")
    DatasetDict(splits).save_to_disk(a.out)
    print(f"saved {a.out}")


if __name__ == "__main__":
    run_cli(main)
