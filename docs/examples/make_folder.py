"""Write an in-memory data set (MNIST, Fashion-MNIST, CIFAR-10) as an image folder in
torchvision's ImageFolder layout, for trying --dataset imagefolder on real images offline:

    python docs/examples/make_folder.py --dataset fashion-mnist --out /tmp/fmnist-folder [--format png|jpg]

DIR/train/<class>/<index>.<ext> and DIR/val/<class>/<index>.<ext>; class folders are the
class numbers zero-padded ("00".."09"), so their sorted order is the label order, and files are
the sample index zero-padded. Existing files are kept (delete DIR to write it anew).
"""
import argparse
from pathlib import Path

from torchvision.io import encode_jpeg, encode_png

from kd_accel.data import load_split


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    p.add_argument("--limit-train", type=int)
    a = p.parse_args()
    for split, sub in (("train", "train"), ("test", "val")):
        s = load_split(a.dataset, split, a.data_dir)
        n = len(s) if split == "test" or not a.limit_train else min(a.limit_train, len(s))
        for i in range(n):
            path = Path(a.out) / sub / f"{int(s.labels[i]):02d}" / f"{i:05d}.{a.format}"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            data = encode_png(s.images[i]) if a.format == "png" else encode_jpeg(s.images[i], quality=95)
            path.write_bytes(data.numpy().tobytes())
        print(f"{sub}: {n} images in {Path(a.out) / sub}")


if __name__ == "__main__":
    main()
