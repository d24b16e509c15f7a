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
   - precompute: a 2-view cache (teaching.resolve_soft_targets in cache mode: the teacher over
     the folder's crops, the cache written and opened, checksums verified), split by teaching's
     view hook into what a view costs (the second view's seconds) and what the call pays once;
   - cached: one epoch of a distilled student (phases.train_student: its view replayed from
     that cache, Hinton's loss): fit's own time of the epoch (its evaluation included), and the
     rest of the call (building, stamping, saving the student: paid once per student);
   - online: the same epoch with the teacher run on every batch (--teacher-mode online);
   - baseline: the same epoch on hard labels (compare.py's default study trains one per seed).
2. The reduced real study, measured: launch/compare.py run as a user runs it, once with
   --teacher-mode cache (one K = epochs cache, precomputed once, shared by every student) and once
   online, --seeds 0 1 --variants hinton dkd --epochs 2 (4 distilled students and, as compare.py
   adds one when none is listed, a baseline per seed), the given teacher file; the whole
   command's wall time, process start included, the two alternated rep by rep.
3. The whole study, extrapolated from (1) to S = 5 seeds x 4 losses for E epochs (K = E views):
   cache = the precompute's once + E x precompute + S x (once + E x cached), online =
   S x (once + E x online), and with the 5 baselines 5 x (once + E x baseline) on both sides.
   The 4 losses cost the same step within a few per cent on this pair (bench/losses.py), so one
   loss's epoch stands for all four. The run's own fixed costs (process start, listing, teacher
   check) are left out; (2) shows their size, and (1)'s figures predict (2) the same way.

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
PRECOMPUTE_VIEWS = 2  # the per-epoch precompute's K: its second view is what one more view costs


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

        cfg = from_flags(dataset="imagefolder", data_dir=str(root), num_workers=workers, augment="rrc", arch=STUDENT,
                         image_size=SIZE, epochs=1, quiet=True, kd_loss="hinton", output_dir=str(workdir / "per_epoch"))
        self.accelerator = make_accelerator(cfg, say_threads=False)
        self.accelerator.print = lambda *a, **k: None  # the phases' lines
        self.train, self.test = load_data(self.accelerator, cfg, run_folder=False)
        self.teacher_path, self.base = teacher, cfg
        self.fp = TeacherId.of(teacher_info_from_checkpoint(self.accelerator, teacher, self.test))
        self.cfg = {"online": with_flags(cfg, teacher_mode="online")}
        self.cfg["cache"] = with_flags(cfg, teacher_mode="cache", views=PRECOMPUTE_VIEWS)
        # made once, as compare.py makes it once for every online student
        self.online_teacher = frozen_teacher(self.accelerator, self.cfg["online"], teacher, self.train)
        self.soft = None

    def precompute(self) -> dict[str, float]:
        """A 2-view cache made anew (no cache hit): {"wall": the call, "view": its second view's
        seconds (from the first's end to the second's, teaching's view hook: what each further
        view costs), "once": the rest (loading the teacher, opening and verifying the cache)}."""
        from kd_accel.teaching import cache_path, resolve_soft_targets
        from kd_accel.training import HOOKS

        cache_path(self.cfg["cache"]).unlink(missing_ok=True)
        marks: list[float] = []
        HOOKS.view.append(lambda view: marks.append(time.perf_counter()))
        try:
            start = time.perf_counter()
            self.soft = resolve_soft_targets(self.accelerator, self.cfg["cache"], self.teacher_path, self.fp,
                                             self.train)[0]
            wall = time.perf_counter() - start
        finally:
            HOOKS.view.pop()
        view = marks[1] - marks[0]
        return {"wall": wall, "view": view, "once": wall - 2 * view}

    def run(self, side: str) -> dict[str, float]:
        """One `side` (SIDES): {"wall": its seconds} and, for a student, {"fit": fit's own
        train_time_s (the epoch's steps and its evaluation; the rest of the wall time is the
        student's once-per-run cost: building, stamping, saving)}."""
        from kd_accel.phases import train_student
        from kd_accel.teaching import cache_path, resolve_soft_targets

        a, train, test = self.accelerator, self.train, self.test
        if side == "precompute":
            return self.precompute()
        student = {"cached": lambda: train_student(a, self.cfg["cache"], train, test, self.soft, "cached", self.fp),
                   "online": lambda: train_student(a, self.cfg["online"], train, test, None, "online", self.fp,
                                                   self.online_teacher),
                   "baseline": lambda: train_student(a, self.base, train, test, None, "baseline")}[side]
        start = time.perf_counter()
        info = student()
        return {"wall": time.perf_counter() - start, "fit": info["train_time_s"]}


def measure_per_epoch(per: PerEpoch, reps: int) -> list[dict[str, float]]:
    for side in SIDES:  # warm-up: first kernels, first worker start, the page cache
        per.run(side)
    out = []
    for rep in range(reps):
        # the precompute stays before the cached epoch that reads its cache
        order = list(SIDES) if rep % 2 == 0 else ["baseline", "online", "precompute", "cached"]
        got = {side: per.run(side) for side in order}
        out.append(got)
        print(f"rep {rep + 1}: per epoch (wall s): " + ", ".join(f"{s} {got[s]['wall']:.2f}" for s in SIDES)
              + f"; precompute's second view {got['precompute']['view']:.2f} s", flush=True)
    return out


def study_command(mode: str, root: Path, teacher: Path, workers: int, out: Path, seeds: list[str],
                  variants: list[str], epochs: int) -> list[str]:
    return [sys.executable, str(ROOT / "launch" / "compare.py"), *common_flags(root, workers), "--arch", STUDENT,
            "--image-size", str(SIZE), "--teacher", str(teacher), "--teacher-mode", mode, "--epochs", str(epochs),
            "--seeds", *seeds, "--variants", *variants, "--output-dir", str(out)]


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


def medians(reps: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """{precompute: s per view, cached/online/baseline: fit's s per epoch, once: a student's
    once-per-run seconds (wall - fit, median over the three student sides' reps)}."""
    out = {"precompute": statistics.median(r["precompute"]["view"] for r in reps),
           "precompute_once": statistics.median(r["precompute"]["once"] for r in reps)}
    out.update({s: statistics.median(r[s]["fit"] for r in reps) for s in SIDES[1:]})
    out["once"] = statistics.median(r[s]["wall"] - r[s]["fit"] for r in reps for s in SIDES[1:])
    return out


def extrapolate(per: dict[str, float], seeds: int, losses: int, epochs: int) -> dict[str, Any]:
    """The whole study's seconds from the per-epoch medians `per` (medians; module docstring, 3):
    each student pays its once-per-run cost and E epochs, the cache E views."""
    s, e, once = seeds * losses, epochs, per["once"]
    cache = per["precompute_once"] + e * per["precompute"] + s * (once + e * per["cached"])
    online, base = s * (once + e * per["online"]), seeds * (once + e * per["baseline"])
    return {"students": s, "epochs": e, "cache_s": cache, "online_s": online, "ratio": online / cache,
            "with_baselines": {"cache_s": cache + base, "online_s": online + base,
                               "ratio": (online + base) / (cache + base)},
            "break_even_students": per["precompute"] / (per["online"] - per["cached"])
            if per["online"] > per["cached"] else None}


def print_report(r: dict[str, Any], info: dict[str, Any]) -> None:
    per, x = r["per_epoch_median_s"], r["extrapolated"]
    print(f"\n{describe(info)}\ncommit {r['commit']}; {r['images']} training images at {SIZE} px, {r['workers']} "
          f"worker(s), {r['torch_threads']} main thread(s); load average {r['loadavg_end']:.2f} at the end\n")
    print(f"per epoch (median of {r['reps']} reps): precompute {per['precompute']:.2f} s a view (+ "
          f"{per['precompute_once']:.2f} s once); student epochs "
          f"(fit's, evaluation included): " + ", ".join(f"{s} {per[s]:.2f} s" for s in SIDES[1:])
          + f"; online adds {per['online'] - per['cached']:.2f} s an epoch to a cached student; a student's "
          f"once-per-run cost {per['once']:.2f} s")
    for rep in r["study"]:
        c, o = rep["cache"]["wall_s"], rep["online"]["wall_s"]
        print(f"measured study ({len(r['seeds'])} seeds x ({len(r['variants'])} losses + baseline) x "
              f"{r['study_epochs']} epochs, compare.py): cache {c:.1f} s, online {o:.1f} s: {o / c:.2f}x")
    p = r["predicted_reduced"]
    print(f"  the per-epoch figures predict it at cache {p['cache_s']:.1f} s, online {p['online_s']:.1f} s "
          f"({p['ratio']:.2f}x) before a run's fixed costs")
    w = x["with_baselines"]
    print(f"extrapolated study ({x['students']} students = 5 seeds x 4 losses, {x['epochs']} epochs, "
          f"K = {x['epochs']}): "
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
    med = r["per_epoch_median_s"] = medians(r["per_epoch"])
    r["study"] = []
    for rep in range(a.study_reps):
        order = ("cache", "online") if rep % 2 == 0 else ("online", "cache")
        got = {mode: run_study(mode, rep, a, root, teacher, workdir) for mode in order}
        r["study"].append(got)
        print(f"rep {rep + 1}: measured study: cache {got['cache']['wall_s']:.1f} s, "
              f"online {got['online']['wall_s']:.1f} s", flush=True)
    small = extrapolate(med, len(a.seeds), len(a.variants), a.study_epochs)["with_baselines"]
    r["predicted_reduced"] = small
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
