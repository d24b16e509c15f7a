"""How fast is an image folder's identity (kd_accel/data/folder.py: stat only, no image read)?

    python bench/folder_scan.py [--files 100000] [--classes 100] [--json bench/results/folder_scan.json]

Writes N small files in ImageFolder's layout in a temporary folder, then times, 3 times each,
the listing (scan: walk + stat), the fingerprint and the per-file hashes. The files were just
written, so their metadata is in the page cache: a cold first scan of a network disk is slower.
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

from kd_accel.data.folder import scan  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    info = machine_info("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        t = time.perf_counter()
        for i in range(a.files):
            folder = root / f"class{i % a.classes:04d}"
            if i < a.classes:
                folder.mkdir(parents=True)
            (folder / f"img{i:07d}.jpg").write_bytes(b"x" * (i % 97))
        made = time.perf_counter() - t
        times = {"scan": [], "fingerprint": [], "file_hashes": []}
        for _ in range(3):
            t = time.perf_counter()
            index = scan(root)
            times["scan"].append(time.perf_counter() - t)
            t = time.perf_counter()
            index.fingerprint()
            times["fingerprint"].append(time.perf_counter() - t)
            t = time.perf_counter()
            index.file_hashes()
            times["file_hashes"].append(time.perf_counter() - t)
    assert len(index) == a.files
    med = {k: statistics.median(v) for k, v in times.items()}
    print(describe(info))
    print(f"{a.files} files in {a.classes} classes (written in {made:.1f}s); median of 3:")
    for k, v in med.items():
        print(f"  {k:<12} {v:.3f}s  ({a.files / v:,.0f} files/s)")
    if a.json:
        Path(a.json).write_text(json.dumps({"environment": info, "files": a.files, "classes": a.classes,
                                            "seconds": times, "median_s": med}, indent=2))


if __name__ == "__main__":
    main()
