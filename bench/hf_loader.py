"""images/s of the Hugging Face dataset loader vs the image-folder loader on the same images
(docs/examples/make_hf_dataset.py --from-folder FOLDER), with the same workers, batch and
replayed crops (DrawnCrops), decoded to grey at 28 px: one warm-up epoch each, then epochs
alternated; the ratio is the median of the per-rep ratios. With 0 workers the clock is the
process's CPU time (robust to a shared machine), with workers the wall clock.

    python docs/examples/make_folder.py --dataset fashion-mnist --out /tmp/fm
    python docs/examples/make_hf_dataset.py --from-folder /tmp/fm --out /tmp/fm-hf
    python bench/hf_loader.py --folder /tmp/fm --hf /tmp/fm-hf --workers 0 --reps 5
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe, machine_info  # noqa: E402

from kd_accel.data import load_folder, open_splits  # noqa: E402
from kd_accel.data.streamed import DrawnCrops, folder_loader  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", required=True, help="an image folder (train/ and val/)")
    p.add_argument("--hf", required=True, help="the same images as a dataset saved with save_to_disk")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", help="results JSON")
    a = p.parse_args()
    clock = time.process_time if a.workers == 0 else time.perf_counter
    at = {"image_size": (28, 28)}
    splits = {"folder": load_folder(a.folder, "train", 1, a.workers).at(at),
              "hf": open_splits("hf", a.hf, 1, a.workers)[0].at(at)}
    loaders = {name: folder_loader(s.dataset_for(DrawnCrops(0)), a.batch, a.workers, "cpu", shuffle=True, seed=0)
               for name, s in splits.items()}

    def epoch(loader, e):
        loader.sampler.set_epoch(e)
        start, n = clock(), 0
        for batch in loader:
            n += len(batch["idx"])
        return n / (clock() - start)

    for loader in loaders.values():
        epoch(loader, 0)  # warm-up: workers started, pages cached
    rates = {name: [] for name in loaders}
    for r in range(a.reps):
        for name in ("folder", "hf") if r % 2 == 0 else ("hf", "folder"):
            rates[name].append(epoch(loaders[name], r + 1))
    info = machine_info()
    result = {"machine": info, "workers": a.workers, "batch": a.batch, "images": len(splits["hf"]), "rates": rates,
              "median": {k: statistics.median(v) for k, v in rates.items()},
              "hf_over_folder": statistics.median(h / f for h, f in zip(rates["hf"], rates["folder"]))}
    print(describe(info))
    print(f"hf / folder images/s: {result['hf_over_folder']:.2f}x (medians {result['median']['hf']:,.0f} vs "
          f"{result['median']['folder']:,.0f}; {a.workers} workers, {a.reps} reps)")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
