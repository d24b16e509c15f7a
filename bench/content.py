"""What does checking an image folder's bytes cost (kd_accel/data/content.py)?

    python bench/content.py [--files 2000] [--size 64 256] [--reps 5] [--json bench/results/content.json]

For JPEG and PNG files of each side, measured side by side in one process, per file: reading
the bytes, the digest (sha256's first 8 bytes) a DataLoader worker takes of them, and decoding them as the
workers do (data/streamed.py). The ratio digest / decode is what the check adds to a worker's
work; the rest of the batch (crop, resize) only adds to the denominator.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from machine import describe, machine_info  # noqa: E402

import torch  # noqa: E402

from kd_accel.data.content import digest  # noqa: E402
from kd_accel.data.streamed import _decode  # noqa: E402


def write_files(folder, n, side, fmt):
    from PIL import Image

    options = {"format": "JPEG", "quality": 90} if fmt == "jpg" else {"format": "PNG"}
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (3, side // 8, side // 8), generator=g, dtype=torch.uint8)
    paths = []
    for i in range(n):  # smooth images (a noise image would not compress like a photo)
        img = torch.nn.functional.interpolate(((base.float() + i) % 256)[None], size=(side, side), mode="bilinear")[0]
        img = img.round().clamp(0, 255).to(torch.uint8)
        path = folder / f"{i:06d}.{fmt}"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(path, **options)  # [H, W, 3]
        paths.append(str(path))
    return paths


def timed(fn, paths):
    start = time.perf_counter()
    for p in paths:
        fn(p)
    return (time.perf_counter() - start) / len(paths)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--size", type=int, nargs="+", default=[64, 256])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)  # a worker's share
    info = machine_info("cpu")
    print(describe(info))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in a.size:
            for fmt in ("jpg", "png"):
                folder = Path(tmp) / f"{fmt}{side}"
                folder.mkdir()
                paths = write_files(folder, a.files, side, fmt)
                blobs = [read(q) for q in paths]
                times = {"read": [], "digest": [], "decode": []}
                for _ in range(a.reps):  # alternated, so that load changes hit all three alike
                    times["read"].append(timed(read, paths))
                    times["digest"].append(timed(lambda q, b=iter(blobs * a.reps): digest(next(b)), paths))
                    times["decode"].append(timed(lambda q: _decode(q, 3), paths))
                med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
                size = sum(len(b) for b in blobs) / len(blobs)
                row = {"format": fmt, "side": side, "bytes_per_file": round(size), **{f"{k}_us": round(v, 1) for k, v in
                                                                                      med.items()},
                       "digest_over_decode": round(med["digest"] / med["decode"], 4)}
                rows.append(row)
                print(f"{fmt} {side}x{side} ({size / 1024:.1f} KiB): read {med['read']:.1f} us, digest "
                      f"{med['digest']:.1f} us, decode {med['decode']:.1f} us per file; digest/decode "
                      f"{row['digest_over_decode']:.3f}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": info, "files": a.files, "reps": a.reps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
