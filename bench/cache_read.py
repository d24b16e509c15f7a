"""How the logits cache scales: write a synthetic ImageNet-sized cache and measure its read path.

    python bench/cache_read.py [--samples 1281167] [--classes 1000] [--dtype fp16] [--views 1]
                               [--topk K] [--dir /tmp]

Reports file size, bytes per sample and view, open+validate time (metadata and checksum),
resident memory after opening (memory-mapped: only what was touched), and random-batch gather
speed (SoftTargets.gather of a random view; with --topk that includes expanding the batch's rows).
"""
import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from kd_accel.cache import CacheKey, open_cache, save_cache


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1_281_167)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--views", type=int, default=1, help="K augmented views per sample")
    p.add_argument("--topk", type=int, default=None, help="store the top-k log-probabilities, not the full logits")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=2000)
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--json", default=None)
    a = p.parse_args()

    path = Path(a.dir) / "kd_accel_bench_cache.safetensors"
    key = CacheKey("synthetic", "train", a.samples, a.classes, "t" * 32, "d" * 32, "shift(pad=2)", 0)
    dtype = torch.float16 if a.dtype == "fp16" else torch.float32
    logits = torch.randn(a.views, a.samples, a.classes, dtype=dtype)
    params = torch.zeros(a.views, a.samples, 5)  # the 5 augmentation columns, as a real K-view cache stores
    t0 = time.perf_counter()
    save_cache(path, logits, torch.zeros(a.samples, dtype=torch.long), key, a.dtype, params=params, topk=a.topk)
    write_s = time.perf_counter() - t0
    del logits, params
    size = os.path.getsize(path)
    rss0 = rss_mb()

    t0 = time.perf_counter()
    soft = open_cache(path, key, verify=False, views=a.views)
    open_s = time.perf_counter() - t0
    rss_open = rss_mb() - rss0
    t0 = time.perf_counter()
    soft = open_cache(path, key, verify=True, views=a.views)
    verify_s = time.perf_counter() - t0

    g = torch.Generator().manual_seed(0)
    order = torch.randperm(a.samples, generator=g)
    views = torch.randint(0, a.views, (a.batches,), generator=g).tolist()
    batches = max(1, min(a.batches, a.samples // a.batch_size))
    t0 = time.perf_counter()
    for i in range(batches):
        idx = order[i * a.batch_size : (i + 1) * a.batch_size]
        batch = soft.gather(views[i], idx).float()
    gather_s = (time.perf_counter() - t0) / batches
    res = {
        "samples": a.samples, "classes": a.classes, "dtype": a.dtype, "views": a.views, "storage": soft.storage,
        "file_gb": size / 1e9, "bytes_per_sample": size / a.samples,
        "bytes_per_sample_per_view": size / a.samples / a.views,
        "write_s": write_s, "open_validate_metadata_s": open_s, "open_with_checksum_s": verify_s,
        "rss_after_open_mb": rss_open, "batch_size": a.batch_size, "batches": batches,
        "gather_ms_per_batch": gather_s * 1e3, "gather_samples_per_s": len(batch) / gather_s,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "batch_shape": list(batch.shape),
    }
    path.unlink()
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
