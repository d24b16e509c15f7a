"""Image folders streamed through DataLoader workers (issue 19): kd_accel's pipeline against
torchvision's reference, a cached KD epoch against a plain CE epoch, and the memory bound.

    python bench/folder.py [--workdir /tmp/kd_accel_bench_folder] [--reps 7] [--json bench/results/folder-avx2.json]
    python bench/folder.py --quick --workdir DIR --json OUT      (a smoke run: tiny sizes, 1 rep)

The folders are synthetic JPEGs written once into --workdir and reused by later runs (a marker
file records how each was made): smooth random colour fields (a 6x6 uniform random image
upsampled bicubically) plus mild Gaussian noise (sigma 0.05), so they compress like photographs
rather than like white noise; JPEG quality 90 (PIL: the bytes torchvision.io.encode_jpeg wrote), RGB. The pipeline
and KD/CE cases read --images files (default 4,000, 10 classes) whose height and width are each
drawn in --sides (default 64-160 px, ~6 KB a file); the memory case reads --rss-sizes files of
32x32 px (100 classes, ~1.2 KB a file).

Cases, each written to the JSON (atomically) as soon as it is measured, so a failure or a kill
keeps what came before it; every pair runs with the same files, batch size and number of
DataLoader workers (--workers) on both sides:

- pipeline: images/s of kd_accel's folder pipeline (FolderDataset via folder_loader, DrawnCrops
  at --size, uint8 out, then data.to_float with an ImageNet mean/std on the batch, as the
  training step does) against torchvision's (datasets.ImageFolder + RandomResizedCrop(size) +
  RandomHorizontalFlip + ToTensor + Normalize through a DataLoader: persistent workers, prefetch
  2, both shuffled), alternated rep by rep after one warm-up epoch each; the ratio is the median
  of the per-rep ratios. Target kd / torchvision >= 1.0x (aim 1.5x). kd_accel runs at this
  process's threads (what the training step gets) and, a diagnostic, at 1 main-process thread.
- pipeline_profile: where a sample's time goes, in this process (1 thread, no workers), stage
  by stage, for both pipelines: the diagnostic behind the ratio.
- kd_vs_ce: training.fit epochs of the notebook student (1x28x28, the folder decoded as grey)
  distilled from a K-view cache written by teaching.precompute_views (the notebook teacher,
  random weights; the crops replayed by CachedCrops, the logits gathered per batch) against
  plain cross-entropy on crops drawn in the workers (DrawnCrops); a fresh student per epoch, the
  sides alternated. Target kd / ce <= 1.05, at the threads make_accelerator chose and (a
  diagnostic) at 1 main-process thread beside the workers.
- rss: peak memory of the precompute (K=1 view, rrc) and then of one whole cached-KD training
  epoch, in a process of its own per size and rep (--rss-reps, sizes alternated): the main
  process and its DataLoader workers summed (VmRSS, RssAnon, RssFile, and Pss, which counts the
  pages the forked workers share with the main process once), sampled every 50 ms or so, plus a
  coarse time series. Target: the median peaks at 100k within 10% of those at 10k. The children
  run 1 main-process thread (--rss-threads, as OMP_NUM_THREADS) so the 100k epoch stays short
  beside the workers on a 2-core machine; memory, not time, is measured there.

Figures are medians over reps of ratios measured side by side; the machine may be shared, so
absolute times are noisy (the load average at the start and after each case is recorded).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from machine import describe, machine_info  # noqa: E402

IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MARKER = ".bench_folder.json"


# --- the synthetic folders --------------------------------------------------------------------------


def _images(g, n, h, w):
    """uint8 [n, 3, h, w]: a smooth random colour field plus mild noise (JPEG-compressible)."""
    low = torch.rand(n, 3, 6, 6, generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
    img = img + 0.05 * torch.randn(n, 3, h, w, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def jpeg_folder(workdir, n, classes, side_lo, side_hi, seed=0, quality=90):
    """DIR with DIR/train/c<class>/<i>.jpg: n JPEGs, each side drawn in [side_lo, side_hi],
    written once and reused (a marker names how it was made). Returns (DIR, seconds to write)."""
    from PIL import Image

    spec = {"n": n, "classes": classes, "side": [side_lo, side_hi], "seed": seed, "quality": quality,
            "content": "bicubic-upsampled 6x6 uniform colour field + N(0, 0.05) noise, RGB"}
    folder = Path(workdir) / f"jpeg-{n}-{side_lo}-{side_hi}-c{classes}"
    marker = folder / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("spec") == spec:
        return folder, 0.0
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    start, g = time.perf_counter(), torch.Generator().manual_seed(seed)
    for c in range(classes):
        (folder / "train" / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    sizes = torch.randint(side_lo, side_hi + 1, (n, 2), generator=g)
    chunk = 256
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        if side_lo == side_hi:  # one size: generated as a batch
            imgs = list(_images(g, e - s, side_lo, side_lo))
        else:
            imgs = [_images(g, 1, int(h), int(w))[0] for h, w in sizes[s:e].tolist()]
        for i, img in zip(range(s, e), imgs):
            path = folder / "train" / f"c{i % classes:03d}" / f"{i:07d}.jpg"
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(path, format="JPEG", quality=quality)  # [H, W, 3]
    made = time.perf_counter() - start
    nbytes = sum(f.stat().st_size for f in (folder / "train").rglob("*.jpg"))
    marker.write_text(json.dumps({"spec": spec, "bytes": nbytes, "write_s": made}))
    return folder, made


def folder_facts(folder):
    m = json.loads((Path(folder) / MARKER).read_text())
    return {"path": str(folder), **m["spec"], "mean_file_bytes": round(m["bytes"] / m["spec"]["n"])}


# --- case 1: the data pipelines side by side ---------------------------------------------------------


def kd_pipeline(root, size, batch, workers):
    """(loader, per-batch step) of kd_accel's folder pipeline: uint8 crops from the workers, the
    float conversion and normalisation here, as the training step does."""
    from kd_accel.data import to_float
    from kd_accel.data.folder import scan
    from kd_accel.data.streamed import DrawnCrops, FolderDataset, View, folder_loader

    ds = FolderDataset(scan(root), 3, View((size, size)), DrawnCrops(seed=0))
    loader = folder_loader(ds, batch, workers, "cpu", shuffle=True, seed=0)
    return loader, lambda b: (to_float(b["images"], IMAGENET_NORM), b["labels"])


def tv_pipeline(root, size, batch, workers):
    """(loader, per-batch step) of torchvision's reference ImageNet training pipeline."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms as T

    tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(*IMAGENET_NORM)])
    ds = datasets.ImageFolder(str(root), tf)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0),
                        **(dict(persistent_workers=True, prefetch_factor=2) if workers else {}))
    return loader, lambda b: b


def epoch(loader, step, e):
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(e)
    start, n = time.perf_counter(), 0
    for b in loader:
        x, y = step(b)
        n += len(y)
    return time.perf_counter() - start, n, tuple(x.shape), str(x.dtype)


def threads(n, fn):
    """fn() with this process's intra-op threads set to n (None: as they are), then restored."""
    was = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(was)


def case_pipeline(a, folder):
    root = folder / "train"
    kd, tv = kd_pipeline(root, a.size, a.batch, a.workers), tv_pipeline(root, a.size, a.batch, a.workers)
    # kd_accel's side at this process's threads (what the training step runs with) and, a
    # diagnostic, at 1 thread: the main process's float conversion beside the busy workers
    sides = {"kd_accel": (kd, None), "torchvision": (tv, None), "kd_accel, main 1 thread": (kd, 1)}
    out = {"images": a.images, "size": a.size, "batch": a.batch, "workers": a.workers,
           "main_threads": torch.get_num_threads(), "seconds": {}, "warmup_s": {}, "images_per_s": {}}
    for name, ((loader, step), n_threads) in sides.items():  # workers started, files in the page cache
        s, n, shape, dtype = threads(n_threads, lambda: epoch(loader, step, 0))
        out["warmup_s"][name] = s
        out.setdefault("batch_out", {})[name] = f"{dtype} {list(shape)}"
        assert n == a.images, (name, n)
    order = list(sides)
    for rep in range(a.reps):  # alternating which goes first, so a slow minute hits both alike
        for name in (order if rep % 2 == 0 else order[::-1]):
            (loader, step), n_threads = sides[name]
            s, n, _, _ = threads(n_threads, lambda: epoch(loader, step, rep + 1))
            out["seconds"].setdefault(name, []).append(s)
        last = {k: a.images / v[-1] for k, v in out["seconds"].items()}
        print(f"  rep {rep + 1}/{a.reps}: " + ", ".join(f"{k} {v:,.0f} img/s" for k, v in last.items()) +
              f"; ratio {last['kd_accel'] / last['torchvision']:.2f}x", flush=True)
    sec = out["seconds"]
    out["ratio_per_rep"] = [t / k for k, t in zip(sec["kd_accel"], sec["torchvision"])]
    out["ratio_1thread_per_rep"] = [t / k for k, t in zip(sec["kd_accel, main 1 thread"], sec["torchvision"])]
    out["images_per_s"] = {name: a.images / statistics.median(v) for name, v in sec.items()}
    out["ratio_kd_over_tv"] = statistics.median(out["ratio_per_rep"])
    out["ratio_kd_1thread_over_tv"] = statistics.median(out["ratio_1thread_per_rep"])
    del sides, kd, tv
    return out


def case_pipeline_profile(a, folder, n=None):
    """ms per sample of each stage, in this process with 1 thread: the same calls the workers make."""
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import functional as TF

    from kd_accel.data import to_float
    from kd_accel.data.folder import scan
    from kd_accel.data.streamed import DrawnCrops, FolderDataset, View, _decode, crop_pixels

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        index = scan(folder / "train")
        n = min(n or 512, len(index))
        ds = FolderDataset(index, 3, View((a.size, a.size)), DrawnCrops(seed=0))
        keys = [(0, i) for i in range(n)]
        ds.__getitems__(keys[:8])  # first-call costs
        t = {}

        def clock(name, fn):
            s = time.perf_counter()
            r = fn()
            t[name] = t.get(name, 0.0) + time.perf_counter() - s
            return r

        whole = []
        for s in range(0, n, a.batch):
            ks = keys[s:s + a.batch]
            st = time.perf_counter()
            b = ds.__getitems__(ks)
            to_float(b["images"], IMAGENET_NORM)
            whole.append(time.perf_counter() - st)
        # the same work, stage by stage (streamed.FolderDataset.__getitems__'s steps)
        import numpy as np

        for s in range(0, n, a.batch):
            ks = keys[s:s + a.batch]
            idx = np.asarray([k[1] for k in ks])
            paths = [os.path.join(ds.root, ds.paths[i]) for i in idx.tolist()]
            imgs = clock("read + decode (torchvision.io)", lambda: [_decode(p, 3) for p in paths])
            hw = clock("crop parameters (draw_crops, per batch)", lambda: (torch.tensor([im.shape[-2] for im in imgs]),
                                                                           torch.tensor([im.shape[-1] for im in imgs])))
            crops = clock("crop parameters (draw_crops, per batch)", lambda: ds.crops.params([0] * len(ks), idx, *hw))
            out = torch.empty(len(ks), 3, a.size, a.size, dtype=torch.uint8)
            for j, img in enumerate(imgs):
                box = clock("crop_pixels (per sample, torch scalars)", lambda: crop_pixels(crops[j], img.shape[-2], img.shape[-1]))
                top, left, h, w = box
                v = clock("resize (v2 F.resize, uint8, antialias)", lambda: ds._resize(img[:, top:top + h, left:left + w],
                                                                                        ds.view.size))
                clock("flip + copy into the batch", lambda: out.__setitem__(j, v.flip(-1) if int(crops[j, 4]) else v))
            clock("to_float + normalise (main process)", lambda: to_float(out, IMAGENET_NORM))
        kd = {k: 1e3 * v / n for k, v in t.items()}
        kd_whole = 1e3 * sum(whole) / n
        # torchvision's pipeline, stage by stage
        samples = [(os.path.join(str(folder / "train"), index.paths[i]), int(index.labels[i])) for i in range(n)]
        rrc, flip = T.RandomResizedCrop(a.size), T.RandomHorizontalFlip()
        t = {}
        whole_tv = 0.0
        for p, _ in samples:
            st = time.perf_counter()

            def load(p=p):
                with open(p, "rb") as f:
                    return Image.open(f).convert("RGB")

            im = clock("open + decode + convert (PIL)", load)
            im = clock("RandomResizedCrop (PIL)", lambda: rrc(im))
            im = clock("RandomHorizontalFlip (PIL)", lambda: flip(im))
            x = clock("ToTensor", lambda: TF.to_tensor(im))
            x = clock("Normalize", lambda: TF.normalize(x, *IMAGENET_NORM))
            whole_tv += time.perf_counter() - st
        tv = {k: 1e3 * v / n for k, v in t.items()}
        return {"samples": n, "size": a.size, "threads": 1,
                "kd_accel_ms_per_sample": kd, "kd_accel_getitems_plus_to_float_ms": kd_whole,
                "torchvision_ms_per_sample": tv, "torchvision_total_ms": 1e3 * whole_tv / n,
                "note": "in one process, no workers: the stages the workers run; clock overhead ~1 us per stage"}
    finally:
        torch.set_num_threads(threads)


# --- case 2: cached KD epoch against a plain CE epoch --------------------------------------------------


def notebook_prep(side):
    from kd_accel.models.preprocessing import of_data

    return of_data(None, (side, side))


def make_precompute(accelerator, cfg, split, path, views, classes_seed=0):
    """The notebook teacher (random weights, BN statistics from a few batches: logits that vary),
    run by teaching.precompute_views over the folder's K views. Returns (SoftTargets, seconds)."""
    from kd_accel.augment import get_spec
    from kd_accel.cache import open_cache
    from kd_accel.models import state_fingerprint
    from kd_accel.models.notebook import Teacher
    from kd_accel.models.preprocessing import describe as describe_prep
    from kd_accel.roles import TeacherId
    from kd_accel.teaching import cache_key, precompute_views

    prep = {**notebook_prep(split.view.size[0])}
    torch.manual_seed(classes_seed)
    teacher = Teacher(split.num_classes, split.channels, split.view.size)
    teacher.preprocessing = prep
    teacher.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    spec = get_spec("rrc")
    key = cache_key(split, TeacherId(state_fingerprint(teacher.state_dict()), describe_prep(prep)), spec,
                    cfg.kd.augment_seed)
    Path(path).unlink(missing_ok=True)
    start = time.perf_counter()
    precompute_views(accelerator, cfg, teacher, split, Path(path), key, spec, views, "fp16")
    seconds = time.perf_counter() - start
    return open_cache(path, key, views=views), seconds


def student_fit(accelerator, cfg, split, data, objective):
    from kd_accel.augment import get_spec
    from kd_accel.models.notebook import Student
    from kd_accel.roles import inputs_for
    from kd_accel.training import TrainSpec, fit

    torch.manual_seed(0)
    model = Student(split.num_classes, split.channels, split.view.size)
    start = time.perf_counter()
    _, hist = fit(accelerator, model, data, None, TrainSpec.of(cfg.student, cfg.run), objective, "student", inputs=inputs_for(get_spec("rrc"), notebook_prep(split.view.size[0])))
    return time.perf_counter() - start, hist["epochs"][-1]


def setup_fit(folder, batch, workers, views, side=28):
    from kd_accel.config import from_flags
    from kd_accel.data import load_folder
    from kd_accel.pipeline import make_accelerator

    # dataset imagefolder: the Accelerator set up as for a folder run (malloc's defaults on CPU)
    cfg = from_flags(dataset="imagefolder", channels=1, epochs=1, batch_size=batch, augment="rrc", teacher_mode="cache",
                     views=views, seed=0, augment_seed=0, lr=1e-3, schedule="constant")
    accelerator = make_accelerator(cfg, cpu=True)
    split = load_folder(str(folder), "train", channels=1, workers=workers).at(notebook_prep(side))
    return cfg, accelerator, split


def case_kd_vs_ce(a, folder):
    from kd_accel.augment import CachedViews, DrawnViews, get_spec, stream_seed
    from kd_accel.training import TrainSpec, make_objective

    cfg, accelerator, split = setup_fit(folder, a.fit_batch, a.workers, a.views)
    cache = Path(a.workdir) / "kd_vs_ce.cache.safetensors"
    soft, pre_s = make_precompute(accelerator, cfg, split, cache, a.views)
    kd = (split.train_data(CachedViews(soft, a.views)), make_objective("hinton", 4.0, 0.9))
    ce = (split.train_data(DrawnViews(get_spec("rrc"), stream_seed("student", 0))), make_objective("ce"))
    # at the threads make_accelerator chose (what a run gets), and at 1 main-process thread
    # beside the workers (a diagnostic: the same pair without the cores oversubscribed)
    sides = {"kd": (kd, None), "ce": (ce, None), "kd, main 1 thread": (kd, 1), "ce, main 1 thread": (ce, 1)}
    out = {"images": len(split), "input": "1x28x28 (the folder decoded as grey)", "student": "notebook:student",
           "teacher": "notebook:teacher (random weights)", "views": a.views, "batch": a.fit_batch,
           "workers": a.workers, "main_threads": torch.get_num_threads(), "precompute_s": pre_s, "seconds": {},
           "warmup_s": {}, "loss": {}}
    for name, ((data, obj), n_threads) in (sides.items() if not a.quick else ()):  # first kernels, page cache
        out["warmup_s"][name] = threads(n_threads, lambda: student_fit(accelerator, cfg, split, data, obj))[0]
    order = list(sides)
    for rep in range(a.reps):
        for name in (order if rep % 2 == 0 else order[::-1]):
            (data, obj), n_threads = sides[name]
            s, last = threads(n_threads, lambda: student_fit(accelerator, cfg, split, data, obj))
            out["seconds"].setdefault(name, []).append(s)
            out["loss"][name] = last.get("loss_loss")
        sec = out["seconds"]
        print(f"  rep {rep + 1}/{a.reps}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in sec.items()) +
              f"; ratio {sec['kd'][-1] / sec['ce'][-1]:.3f} ({sec['kd, main 1 thread'][-1] / sec['ce, main 1 thread'][-1]:.3f} "
              "at 1 thread)", flush=True)
    sec = out["seconds"]
    out["ratio_per_rep"] = [k / c for k, c in zip(sec["kd"], sec["ce"])]
    out["ratio_1thread_per_rep"] = [k / c for k, c in zip(sec["kd, main 1 thread"], sec["ce, main 1 thread"])]
    out["median_s"] = {k: statistics.median(v) for k, v in sec.items()}
    out["images_per_s"] = {k: len(split) / v for k, v in out["median_s"].items()}
    out["ratio_kd_over_ce"] = statistics.median(out["ratio_per_rep"])
    out["ratio_kd_over_ce_1thread"] = statistics.median(out["ratio_1thread_per_rep"])
    cache.unlink(missing_ok=True)
    return out


# --- case 3: memory, in a process per size ---------------------------------------------------------------


def _proc_status(pid):
    """{VmRSS, RssAnon, RssFile, RssShmem} in kB, and Pss (smaps_rollup) of one process, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            vals = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
                    if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    vals["Pss"] = int(line.split()[1])
                    break
        return vals
    except (OSError, ValueError):
        return None


def _children(pid):
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except ImportError:  # /proc: the direct children's children, recursively
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            try:
                for t in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{t}/children") as f:
                        kids = [int(x) for x in f.read().split()]
                    out += kids
                    todo += kids
            except OSError:
                pass
        return out


class PeakMemory:
    """Samples this process and its children (the DataLoader workers) every `every` seconds and
    keeps the peaks of the main process, of the workers summed, and of the total."""

    KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Pss")

    def __init__(self, every=0.05):
        self.every, self.pid = every, os.getpid()
        self._stop = threading.Event()
        self.reset()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reset(self):
        self.peak = {"main": {}, "workers": {}, "total": {}}
        self.max_workers, self.samples, self.start, self.series = 0, 0, time.perf_counter(), []

    def sample(self):
        main = _proc_status(self.pid) or {}
        kids = [s for s in (_proc_status(c) for c in _children(self.pid)) if s]
        workers = {k: sum(s.get(k, 0) for s in kids) for k in self.KEYS}
        total = {k: main.get(k, 0) + workers[k] for k in self.KEYS}
        for name, vals in (("main", main), ("workers", workers), ("total", total)):
            for k in self.KEYS:
                self.peak[name][k] = max(self.peak[name].get(k, 0), vals.get(k, 0))
        self.max_workers = max(self.max_workers, len(kids))
        if self.samples % 20 == 0:  # about once a second: how the phase's memory evolves (MB)
            self.series.append([round(time.perf_counter() - self.start, 1), len(kids),
                                *(round(total[k] / 1024) for k in ("VmRSS", "RssAnon", "Pss")), round(main.get("Pss", 0) / 1024)])
        self.samples += 1
        return total

    def _run(self):
        while not self._stop.wait(self.every):
            self.sample()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def report(self):
        mb = lambda d: {k: round(v / 1024, 1) for k, v in d.items()}  # noqa: E731
        return {"peak_MB": {k: mb(v) for k, v in self.peak.items()}, "workers_seen": self.max_workers,
                "samples": self.samples, "series_columns": ["s", "workers", "total VmRSS", "total RssAnon", "total Pss",
                                                            "main Pss"], "series": self.series}


def rss_child(a):
    """Each folder of --rss-child in turn (one, except in the smoke run): the precompute, then one
    whole cached-KD training epoch, with each phase's peaks. {folder: result}."""
    from kd_accel.augment import CachedViews
    from kd_accel.training import TrainSpec, make_objective

    mem, results = PeakMemory(), {}
    for folder in map(Path, a.rss_child):
        cfg, accelerator, split = setup_fit(folder, a.fit_batch, a.workers, 1)
        out = {"images": len(split), "classes": split.num_classes, "threads": torch.get_num_threads(), "phases": {}}
        cache = folder / "rss.cache.safetensors"
        for phase in ("precompute", "train_epoch"):
            before = mem.sample()
            mem.reset()
            start = time.perf_counter()
            if phase == "precompute":
                soft, _ = make_precompute(accelerator, cfg, split, cache, 1)
                extra = {"cache_MB": round(cache.stat().st_size / 2**20, 2)}
            else:
                data = split.train_data(CachedViews(soft, 1))
                _, last = student_fit(accelerator, cfg, split, data, make_objective("hinton", 4.0, 0.9))
                extra = {"steps": -(-len(split) // a.fit_batch), "loss": last.get("loss_loss")}
            mem.sample()
            out["phases"][phase] = {"seconds": time.perf_counter() - start, "before_MB": {k: round(v / 1024, 1)
                                    for k, v in before.items()}, **mem.report(), **extra}
        del soft, data
        cache.unlink(missing_ok=True)
        results[str(folder)] = out
    mem.stop()
    return results


def case_rss(a):
    folders = {}
    for n in a.rss_sizes:
        folders[n], made = jpeg_folder(a.workdir, n, 100, 32, 32, seed=1)
        if made:
            print(f"  wrote {n:,} 32x32 JPEGs in {made:.1f}s", flush=True)
    out = {"sizes": a.rss_sizes, "workers": a.workers, "batch": a.fit_batch, "main_threads": a.rss_threads or "kd_accel's",
           "reps": 1 if a.quick else a.rss_reps, "process_per_size": not a.quick, "folders": {}, "by_size": {}}
    env = dict(os.environ)
    if a.rss_threads:  # OMP_NUM_THREADS: kd_accel's set_cpu_threads then leaves torch's setting alone
        env["OMP_NUM_THREADS"] = str(a.rss_threads)
    # a fresh process per size and rep, so one does not inherit the other's memory, the sizes
    # alternated; the smoke run saves interpreter starts: one process for both sizes, 1 rep
    groups = [a.rss_sizes] if a.quick else [[n] for _ in range(a.rss_reps) for n in a.rss_sizes]
    for group in groups:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", *(str(folders[n]) for n in group),
               "--workers", str(a.workers), "--fit-batch", str(a.fit_batch)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"rss child for {group} images failed:\n{proc.stderr[-3000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        for n in group:
            out["folders"][n] = folder_facts(folders[n])
            out["by_size"].setdefault(n, []).append(got[str(folders[n])])
            ph = got[str(folders[n])]["phases"]
            print(f"  {n:,} images (rep {len(out['by_size'][n])}): precompute peak "
                  f"{ph['precompute']['peak_MB']['total']['VmRSS']:,.0f} MB, training epoch peak "
                  f"{ph['train_epoch']['peak_MB']['total']['VmRSS']:,.0f} MB (VmRSS, main + workers)", flush=True)
    lo, hi = min(a.rss_sizes), max(a.rss_sizes)
    peak = lambda n, phase, who, k: statistics.median(r["phases"][phase]["peak_MB"][who][k]  # noqa: E731
                                                      for r in out["by_size"][n])
    out["median_peak_MB"], ratios = {}, {}
    for phase in ("precompute", "train_epoch"):
        for who in ("total", "main", "workers"):
            for k in ("VmRSS", "RssAnon", "RssFile", "Pss"):
                v_lo, v_hi = peak(lo, phase, who, k), peak(hi, phase, who, k)
                out["median_peak_MB"][f"{phase} {who} {k}"] = {lo: v_lo, hi: v_hi}
                ratios[f"{phase} {who} {k}"] = v_hi / v_lo if v_lo else None
    out["ratios_big_over_small"] = ratios
    return out


# --- the run -------------------------------------------------------------------------------------------


def versions():
    """The libraries the two pipelines decode and resize with, and the tree's commit."""
    import numpy
    import PIL
    import torchvision

    out = {"torchvision": torchvision.__version__, "pillow": PIL.__version__, "numpy": numpy.__version__}
    try:
        import psutil

        out["psutil"] = psutil.__version__
    except ImportError:
        out["psutil"] = None
    try:
        git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT,  # noqa: E731
                                           timeout=10).stdout.strip()
        out["commit"] = git("rev-parse", "--short", "HEAD") or None
        out["kd_accel_modified"] = bool(git("status", "--porcelain", "--", "kd_accel"))
    except (OSError, subprocess.SubprocessError):
        out["commit"] = None
    return out


def ratio_rows(cases):
    rows = []
    if "pipeline" in cases:
        v = cases["pipeline"]["ratio_kd_over_tv"]
        rows.append({"ratio": "images/s kd_accel folder pipeline / torchvision ImageFolder pipeline", "value": v,
                     "target": ">= 1.0 (aim 1.5)", "met": v >= 1.0})
        v = cases["pipeline"]["ratio_kd_1thread_over_tv"]
        rows.append({"ratio": "the same, kd_accel's main process at 1 thread (diagnostic)", "value": v,
                     "target": "(diagnostic)", "met": None})
    if "kd_vs_ce" in cases:
        v = cases["kd_vs_ce"]["ratio_kd_over_ce"]
        rows.append({"ratio": "cached KD epoch / plain CE epoch (from the folder)", "value": v, "target": "<= 1.05",
                     "met": v <= 1.05})
        v = cases["kd_vs_ce"]["ratio_kd_over_ce_1thread"]
        rows.append({"ratio": "the same, main process at 1 thread (diagnostic)", "value": v, "target": "<= 1.05",
                     "met": v <= 1.05})
    if "rss" in cases:
        r = cases["rss"]["ratios_big_over_small"]
        lo, hi = min(cases["rss"]["sizes"]), max(cases["rss"]["sizes"])
        for phase in ("precompute", "train_epoch"):
            for k in ("VmRSS", "RssAnon", "Pss"):
                v = r[f"{phase} total {k}"]
                rows.append({"ratio": f"peak {k} (main + workers), {phase}: {hi:,} / {lo:,} images", "value": v,
                             "target": "<= 1.10", "met": v is not None and v <= 1.10})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "kd_accel_bench_folder"),
                   help="where the synthetic folders are written once and reused")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, 1 rep (figures mean nothing)")
    p.add_argument("--cases", nargs="+", default=["pipeline", "pipeline_profile", "kd_vs_ce", "rss"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--images", type=int, default=4000, help="JPEGs of the pipeline and kd_vs_ce cases")
    p.add_argument("--sides", type=int, nargs=2, default=[64, 160], help="their height and width, each drawn in [lo, hi]")
    p.add_argument("--size", type=int, default=112, help="the pipeline case's crop output side")
    p.add_argument("--batch", type=int, default=64, help="the pipeline case's batch size")
    p.add_argument("--fit-batch", type=int, default=100, help="the training and precompute cases' batch size")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same on both sides")
    p.add_argument("--views", type=int, default=4, help="K of the kd_vs_ce case's cache")
    p.add_argument("--rss-sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--rss-threads", type=int, default=1,
                   help="the memory case's main-process threads (OMP_NUM_THREADS; 0: kd_accel's choice): 1 keeps "
                        "the 100k epoch short beside the workers on a small machine")
    p.add_argument("--rss-reps", type=int, default=3, help="processes per size (alternated); the peaks' medians")
    p.add_argument("--rss-child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.rss_child:
        print(json.dumps(rss_child(a)))
        return None
    if a.quick:
        a.reps, a.images, a.size, a.batch, a.fit_batch, a.views, a.workers = 1, 64, 64, 16, 16, 2, 1
        a.rss_sizes = [200, 400]
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    info = machine_info("cpu")
    print(describe(info), flush=True)
    t0 = time.perf_counter()
    result = {"machine": info, "versions": versions(), "command": "python bench/folder.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "quick": a.quick, "workers": a.workers, "reps": a.reps, "cases": {}, "ratios": [], "errors": {},
              "partial": True}

    def save(final=False):
        result["ratios"] = ratio_rows(result["cases"])
        result["partial"] = not final
        result["elapsed_s"] = time.perf_counter() - t0
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(a.json).with_name(Path(a.json).name + ".tmp")
            tmp.write_text(json.dumps(result, indent=2))
            os.replace(tmp, a.json)

    folder = None
    if {"pipeline", "pipeline_profile", "kd_vs_ce"} & set(a.cases):
        folder, made = jpeg_folder(a.workdir, a.images, 10, *a.sides)
        if made:
            print(f"wrote {a.images:,} JPEGs ({a.sides[0]}-{a.sides[1]} px) in {made:.1f}s", flush=True)
        result["folder"] = folder_facts(folder)
    runs = {"pipeline": lambda: case_pipeline(a, folder), "pipeline_profile": lambda: case_pipeline_profile(a, folder),
            "kd_vs_ce": lambda: case_kd_vs_ce(a, folder), "rss": lambda: case_rss(a)}
    for name in a.cases:
        print(f"{name}:", flush=True)
        try:
            start = time.perf_counter()
            result["cases"][name] = runs[name]()
            result["cases"][name]["case_s"] = time.perf_counter() - start
            result["cases"][name]["loadavg_1m_after"] = os.getloadavg()[0]  # a shared machine: how busy it was
        except Exception as e:  # noqa: BLE001 - recorded; the other cases still run
            import traceback

            traceback.print_exc()
            result["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
        save()
    save(final=True)
    print(f"\n{describe(info)}")
    for r in result["ratios"]:
        print(f"{r['ratio']:<78}{r['value']:>7.3f}  target {r['target']:<18}{'' if r['met'] is None else 'met' if r['met'] else 'MISSED'}")
    if result["errors"]:
        print(f"errors: {result['errors']}", file=sys.stderr)
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
