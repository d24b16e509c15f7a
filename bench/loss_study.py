"""A loss study's wall time from one precomputed cache against the same students each with the
teacher run online (issue 27's aim: >= 3x for 5 seeds x 4 losses), scaled to this machine.

    python bench/loss_study.py [--images 1000] [--val 200] [--reps 3] [--study-reps 1] [--workers 1]
                               [--workdir /tmp/kd_accel_bench_loss_study] [--json bench/results/loss_study.json]
    python bench/loss_study.py --quick      (a tiny folder, 1 rep, a 1-student study: the code paths only)

The data: the first --images Fashion-MNIST training images and --val test images written once as
a PNG image folder (docs/examples/make_folder.py; reused from --workdir). The zoo pair: teacher
torchvision:resnet18 trained one epoch on the folder by launch/train_teacher.py (made once,
untimed), student torchvision:mobilenet_v3_small; both at 64 px, RandomResizedCrop views
(--augment rrc, the folder's default), --workers decoding workers, the library's own threads.

1. Per epoch, measured in this one process through the package's own functions, the sides
   alternated rep by rep (order reversed every other rep) after an untimed warm-up of each:
   - precompute: one view of the cache (teaching.resolve_soft_targets in cache mode, K = 1: the
     teacher over the folder's crops, the cache written and opened, checksums verified);
   - cached: one epoch of a distilled student (phases.train_student: its view replayed from
     that cache, Hinton's loss, its evaluation and saving included);
   - online: the same epoch with the teacher run on every batch (--teacher-mode online);
   - baseline: the same epoch on hard labels (compare.py's default study trains one per seed).
2. The reduced real study, measured: launch/compare.py run as a user runs it, once with
   --teacher-mode cache (one K = epochs cache, precomputed once, shared by every student) and once
   online, --seeds 0 1 --variants hinton dkd --epochs 2 (4 students), the given teacher file;
   the whole command's wall time, process start included, the two alternated rep by rep.
3. The whole study, extrapolated from (1) to S = 5 seeds x 4 losses for E epochs (K = E views):
   cache = E x precompute + S x E x cached, online = S x E x online (and with the 5 baselines,
   5 x E x baseline, on both sides). The 4 losses cost the same step within a few per cent
   (bench/losses.py), so one loss's epoch stands for all four. The ratio does not depend on E
   (both sides scale with it); the fixed costs of a run (start, listing, teacher check) are left
   out, which (2) shows the size of.

The machine line (bench/machine.py) heads the table; the JSON holds every rep.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from machine import describe, machine_info  # noqa: E402
from precompute import commit  # noqa: E402

AIM = 3.0
STUDENT, TEACHER, SIZE = "torchvision:mobilenet_v3_small", "torchvision:resnet18", 64
MARKER = ".bench_loss_study.json"
SIDES = ("precompute", "cached", "online", "baseline")


def fashion_folder(workdir: Path, n: int, val: int) -> Path:
    """DIR/train and DIR/val: the first n / val Fashion-MNIST images as PNGs
    (docs/examples/make_folder.py), written once (a marker records how) and reused."""
    root = workdir / f"fmnist{n}-{val}"
    made = {"dataset": "fashion-mnist", "train": n, "val": val}
    marker = root / MARKER
    if marker.exists() and json.loads(marker.read_text()) == made:
        return root
    spec = importlib.util.spec_from_file_location("make_folder", ROOT / "docs" / "examples" / "make_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--dataset", "fashion-mnist", "--out", str(root), "--limit-train", str(n), "--limit-val", str(val)])
    marker.write_text(json.dumps(made))
    return root


def common_flags(root: Path, workers: int) -> list[str]:
    return ["--dataset", "imagefolder", "--data-dir", str(root), "--num-workers", str(workers), "--quiet"]


def trained_teacher(workdir: Path, root: Path, workers: int) -> Path:
    """The teacher file: torchvision:resnet18 at 64 px, one epoch on the folder (train_teacher.py),
    made once per folder and reused."""
    out = workdir / f"teacher-{root.name}"
    if not (out / "teacher.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "launch" / "train_teacher.py"), *common_flags(root, workers),
                        "--arch", TEACHER, "--image-size", str(SIZE), "--epochs", "1", "--output-dir", str(out)],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out / "teacher.safetensors"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class PerEpoch:
    """The four sides of one epoch (SIDES), each through the functions compare.py runs."""

    def __init__(self, root: Path, teacher: Path, workers: int, workdir: Path):
        from kd_accel.config import from_flags, with_flags
        from kd_accel.phases import teacher_info_from_checkpoint
        from kd_accel.pipeline import make_accelerator
        from kd_accel.preflight import load_data
        from kd_accel.roles import TeacherId
        from kd_accel.teaching import frozen_teacher

        cfg = from_flags(dataset="imagefolder", data_dir=str(root), num_workers=workers, arch=STUDENT,
                         image_size=SIZE, epochs=1, quiet=True, kd_loss="hinton", output_dir=str(workdir / "per_epoch"))
        self.accelerator = make_accelerator(cfg, say_threads=False)
        self.accelerator.print = lambda *a, **k: None  # the phases' lines
        self.train, self.test = load_data(self.accelerator, cfg, run_folder=False)
        self.teacher_path, self.base = teacher, cfg
        self.fp = TeacherId.of(teacher_info_from_checkpoint(self.accelerator, teacher, self.test))
        self.cfg = {"cache": with_flags(cfg, teacher_mode="cache"), "online": with_flags(cfg, teacher_mode="online")}
        self.online_teacher = frozen_teacher(self.accelerator, self.cfg["online"], teacher, self.train)  # once, as a study
        self.soft = None

    def run(self, side: str) -> float:
        """Seconds of one `side` (SIDES)."""
        from kd_accel.phases import train_student
        from kd_accel.teaching import cache_path, resolve_soft_targets

        a, train, test = self.accelerator, self.train, self.test
        if side == "precompute":
            cache_path(self.cfg["cache"]).unlink(missing_ok=True)  # a new view each time, not a cache hit

            def make():
                self.soft = resolve_soft_targets(a, self.cfg["cache"], self.teacher_path, self.fp, train)[0]
            return timed(make)
        if side == "cached":
            return timed(lambda: train_student(a, self.cfg["cache"], train, test, self.soft, "cached", self.fp))
        if side == "online":
            return timed(lambda: train_student(a, self.cfg["online"], train, test, None, "online", self.fp,
                                               self.online_teacher))
        return timed(lambda: train_student(a, self.base, train, test, None, "baseline"))


def measure_per_epoch(per: PerEpoch, reps: int) -> list[dict[str, float]]:
    for side in SIDES:  # warm-up: first kernels, first worker start, the page cache
        per.run(side)
    out = []
    for rep in range(reps):
        # the precompute stays before the cached epoch that reads its cache
        order = list(SIDES) if rep % 2 == 0 else ["baseline", "online", "precompute", "cached"]
        got = {side: per.run(side) for side in order}
        out.append(got)
        print(f"rep {rep + 1}: per epoch: " + ", ".join(f"{s} {got[s]:.2f} s" for s in SIDES), flush=True)
    return out


def study_command(mode: str, root: Path, teacher: Path, workers: int, out: Path, seeds: list[str],
                  variants: list[str], epochs: int) -> list[str]:
    return [sys.executable, str(ROOT / "launch" / "compare.py"), *common_flags(root, workers), "--arch", STUDENT,
            "--image-size", str(SIZE), "--teacher", str(teacher), "--teacher-mode", mode, "--epochs", str(epochs),
            "--seeds", *seeds, "--variants", *variants, "--reference", variants[0], "--output-dir", str(out)]


def run_study(mode: str, rep: int, a: argparse.Namespace, root: Path, teacher: Path, workdir: Path) -> dict[str, Any]:
    """One whole compare.py study in `mode`: its wall time and, from its results.json, each
    student's fit time and test accuracy."""
    import shutil

    out = workdir / f"study-{mode}-{rep}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run folder: the cache is precomputed again
    cmd = study_command(mode, root, teacher, a.workers, out, a.seeds, a.variants, a.study_epochs)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"compare.py --teacher-mode {mode} failed:\n{proc.stderr[-2000:]}")
    runs = json.loads((out / "results.json").read_text())["runs"]
    students = {f"{v} seed {s}": {"train_time_s": r["train_time_s"], "test_accuracy": r["test_accuracy"]}
                for v, by_seed in runs.items() for s, r in by_seed.items()}
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": wall, "students": students}


def extrapolate(per: dict[str, float], seeds: int, losses: int, epochs: int) -> dict[str, Any]:
    """The whole study's seconds from the per-epoch medians `per` (module docstring, 3)."""
    s, e = seeds * losses, epochs
    cache, online, base = e * per["precompute"] + s * e * per["cached"], s * e * per["online"], seeds * e * per["baseline"]
    return {"students": s, "epochs": e, "cache_s": cache, "online_s": online, "ratio": online / cache,
            "with_baselines": {"cache_s": cache + base, "online_s": online + base, "ratio": (online + base) / (cache + base)},
            "break_even_students": per["precompute"] / (per["online"] - per["cached"])
            if per["online"] > per["cached"] else None}


def print_report(r: dict[str, Any], info: dict[str, Any]) -> None:
    per, x = r["per_epoch_median_s"], r["extrapolated"]
    print(f"\n{describe(info)}\ncommit {r['commit']}; {r['images']} training images at {SIZE} px, {r['workers']} "
          f"worker(s), {r['torch_threads']} main thread(s); load average {r['loadavg_end']:.2f} at the end\n")
    print(f"per epoch (median of {r['reps']} reps): " + ", ".join(f"{s} {per[s]:.2f} s" for s in SIDES)
          + f"; online adds {per['online'] - per['cached']:.2f} s an epoch to a cached student")
    for rep in r["study"]:
        c, o = rep["cache"]["wall_s"], rep["online"]["wall_s"]
        print(f"measured study ({len(r['seeds'])} seeds x {len(r['variants'])} losses x {r['study_epochs']} epochs, "
              f"compare.py): cache {c:.1f} s, online {o:.1f} s: {o / c:.2f}x")
    p = r["predicted_reduced"]
    print(f"  the per-epoch figures predict it at cache {p['cache_s']:.1f} s, online {p['online_s']:.1f} s "
          f"({p['ratio']:.2f}x) before a run's fixed costs")
    w = x["with_baselines"]
    print(f"extrapolated study ({x['students']} students = 5 seeds x 4 losses, {x['epochs']} epochs, K = {x['epochs']}): "
          f"cache {x['cache_s'] / 60:.1f} min, online {x['online_s'] / 60:.1f} min: {x['ratio']:.2f}x "
          f"(aim >= {AIM}: {'met' if x['ratio'] >= AIM else 'missed'}); with the 5 baselines {w['ratio']:.2f}x; "
          f"the cache pays from {x['break_even_students'] or float('nan'):.2f} students up")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from kd_accel.io import write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000, help="Fashion-MNIST training images in the folder")
    p.add_argument("--val", type=int, default=200, help="Fashion-MNIST test images in the folder (val/)")
    p.add_argument("--workers", type=int, default=1, help="decoding workers")
    p.add_argument("--reps", type=int, default=3, help="reps of the per-epoch sides")
    p.add_argument("--study-reps", type=int, default=1, help="reps of the measured study, each way (0: none)")
    p.add_argument("--seeds", nargs="+", default=["0", "1"], help="the measured study's seeds")
    p.add_argument("--variants", nargs="+", default=["hinton", "dkd"], help="the measured study's losses")
    p.add_argument("--study-epochs", type=int, default=2, help="the measured study's epochs")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the extrapolated 5 x 4 study")
    p.add_argument("--workdir", default="/tmp/kd_accel_bench_loss_study")
    p.add_argument("--quick", action="store_true", help="100 images, 1 rep, a 1-student 1-epoch study")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.val, a.reps, a.study_reps, a.seeds, a.variants, a.study_epochs = 100, 20, 1, 1, ["0"], ["hinton"], 1
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    root = fashion_folder(workdir, a.images, a.val)
    teacher = trained_teacher(workdir, root, a.workers)
    per = PerEpoch(root, teacher, a.workers, workdir)
    info = machine_info()
    print(describe(info), flush=True)
    r = {"machine": info, "commit": commit(), "images": a.images, "val": a.val, "workers": a.workers,
         "torch_threads": torch.get_num_threads(), "student": STUDENT, "teacher": TEACHER, "image_size": SIZE,
         "reps": a.reps, "quick": a.quick, "seeds": a.seeds, "variants": a.variants, "study_epochs": a.study_epochs,
         "aim": AIM}
    r["per_epoch"] = measure_per_epoch(per, a.reps)
    med = r["per_epoch_median_s"] = {s: statistics.median(x[s] for x in r["per_epoch"]) for s in SIDES}
    r["study"] = []
    for rep in range(a.study_reps):
        order = ("cache", "online") if rep % 2 == 0 else ("online", "cache")
        got = {mode: run_study(mode, rep, a, root, teacher, workdir) for mode in order}
        r["study"].append(got)
        print(f"rep {rep + 1}: measured study: cache {got['cache']['wall_s']:.1f} s, online {got['online']['wall_s']:.1f} s",
              flush=True)
    students = len(a.seeds) * len(a.variants)
    small = {"cache_s": a.study_epochs * (med["precompute"] + students * med["cached"]),
             "online_s": a.study_epochs * students * med["online"]}
    r["predicted_reduced"] = {**small, "ratio": small["online_s"] / small["cache_s"]}
    if r["study"]:
        r["measured_ratio"] = statistics.median(x["online"]["wall_s"] / x["cache"]["wall_s"] for x in r["study"])
    r["extrapolated"] = extrapolate(med, 5, 4, a.epochs)
    r["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print_report(r, info)
    if a.json:
        write_json(a.json, r)
    return r


if __name__ == "__main__":
    main()
