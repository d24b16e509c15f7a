"""Image decoding (issue 28): kd_accel's decoder (kd_accel/data/decode.py: TorchCodec, then PIL)
against the one at another commit (default 3308765, the last whose decode.py used torchvision.io,
deprecated since torchvision 0.29), side by side on the same files, in this process and in
DataLoader workers.

    python bench/decode.py [--against 3308765] [--files 2000] [--sides 64 256] [--workers 0 2] [--reps 5]
                           [--json bench/results/decode.json]

--files files in four kinds, a quarter each: JPEG (quality 90) and PNG (zlib level 6), RGB and
grey, written with PIL, each side drawn in --sides: smooth random fields plus mild noise, so they
compress like photographs. Each kind is decoded as a folder run reads it (--channels 3 for RGB, 1
for grey) and, the cross cases, RGB as grey and grey as RGB. Workers: 0 is a loop in this process
at 1 thread (a worker's share); N > 0 a DataLoader with N persistent workers (batches of 64 paths
decoded in the workers, the tensors sent back), one per decoder, kept warm by one epoch first.
The two decoders alternate rep by rep; a figure is the median over reps, and the ratio (new / old
images/s) the median of the per-rep ratios: the machine may be shared, and a ratio measured side
by side moves less with its load than either rate does. The other commit's decode.py is imported
from a temporary copy, inside the kd_accel package of this tree (its relative imports resolve
here); its torchvision deprecation warnings are silenced.
"""
import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from machine import describe, machine_info  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kd_accel.data import decode as new_decoder  # noqa: E402
from kd_accel.io import write_json  # noqa: E402

KINDS = (("jpg", "RGB"), ("jpg", "L"), ("png", "RGB"), ("png", "L"))
BATCH = 64
BASELINE = "3308765"  # the last decode.py on torchvision.io's decoders (JPEG, WebP; PNG was PIL's)


def old_decoder(rev):
    """kd_accel/data/decode.py at commit `rev`, imported as kd_accel.data._decode_at_rev."""
    source = subprocess.run(["git", "show", f"{rev}:kd_accel/data/decode.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "decode_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("kd_accel.data._decode_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_files(folder, n, sides, seed=0):
    """{(format, mode): [paths]}: n files, n / 4 of each kind, each side drawn in `sides`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = {kind: [] for kind in KINDS}
    for i in range(n):
        fmt, mode = KINDS[i % len(KINDS)]
        h, w = rng.integers(sides[0], sides[1] + 1, 2)
        low = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((int(w), int(h)), Image.BICUBIC)
        img = np.asarray(low).astype(np.int16) + rng.normal(0, 12, (h, w, 3)).astype(np.int16)  # mild noise
        im = Image.fromarray(img.clip(0, 255).astype(np.uint8)).convert(mode)
        path = folder / f"{i:06d}.{fmt}"
        im.save(path, "JPEG" if fmt == "jpg" else "PNG", **({"quality": 90} if fmt == "jpg" else {}))
        paths[(fmt, mode)].append(str(path))
    return paths


class Decoding(torch.utils.data.Dataset):
    """Sample i: the i-th path decoded by `decode` to `channels` (what a folder's worker does first)."""

    def __init__(self, decode, paths, channels):
        self.decode, self.paths, self.channels = decode, paths, channels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.decode(self.paths[i], self.channels)


def runner(decode, paths, channels, workers):
    """A function that decodes every path once (an epoch) and returns the seconds it took."""
    if workers == 0:
        def epoch():
            start = time.perf_counter()
            for p in paths:
                decode(p, channels)
            return time.perf_counter() - start
        return epoch
    loader = torch.utils.data.DataLoader(Decoding(decode, paths, channels), batch_size=BATCH, num_workers=workers,
                                         collate_fn=list, persistent_workers=True, prefetch_factor=2)

    def epoch():
        start = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - start
    epoch()  # the workers started, the files in the page cache
    return epoch


def compare(old, new, paths, channels, workers, reps):
    """(old images/s, new images/s, median per-rep ratio new / old), alternated rep by rep."""
    epochs = [runner(d._decode, paths, channels, workers) for d in (old, new)]
    rates = [[], []]
    for rep in range(reps):
        order = (0, 1) if rep % 2 == 0 else (1, 0)  # neither side always first
        for side in order:
            rates[side].append(len(paths) / epochs[side]())
    ratio = statistics.median(b / a for a, b in zip(*rates))
    return statistics.median(rates[0]), statistics.median(rates[1]), ratio


def check_same_pixels(old, new, paths, channels):
    """Both decoders give the same pixels here (the rule is the same): a benchmark of a wrong
    decoder would be worth nothing."""
    for p in paths[:50]:
        if not torch.equal(old._decode(p, channels), new._decode(p, channels)):
            raise SystemExit(f"the decoders differ on {p} at {channels} channels")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default=BASELINE, help="the commit whose decode.py is the baseline")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--sides", type=int, nargs=2, default=[64, 256])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)
    torch.set_num_threads(1)  # a worker's share, for the in-process loop
    info = machine_info("cpu")
    import torchcodec

    old = old_decoder(a.against)
    print(describe(info))
    print(f"decode.py at {a.against} vs the working tree's (TorchCodec {torchcodec.__version__}); "
          f"{a.files} files, sides {a.sides[0]}-{a.sides[1]} px, {a.reps} reps; images/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(Path(tmp), a.files, a.sides)
        for (fmt, mode), paths in files.items():
            for channels in ((3, 1) if mode == "RGB" else (1, 3)):
                check_same_pixels(old, new_decoder, paths, channels)
                for workers in a.workers:
                    before, after, ratio = compare(old, new_decoder, paths, channels, workers, a.reps)
                    row = {"format": fmt, "mode": mode, "channels": channels, "workers": workers, "files": len(paths),
                           "old_images_per_s": round(before), "new_images_per_s": round(after), "ratio": round(ratio, 3)}
                    rows.append(row)
                    print(f"{fmt} {mode:3s} -> {channels} ch, {workers} workers: {before:8.0f} -> {after:8.0f}  "
                          f"({ratio:.2f}x)", flush=True)
    print(f"load average {machine_info('cpu')['loadavg_1m']:.2f} at the end")
    if a.json:
        write_json(a.json, {"machine": info, "against": a.against, "torchcodec": torchcodec.__version__,
                            "files": a.files, "sides": a.sides, "reps": a.reps, "rows": rows})


if __name__ == "__main__":
    main()
