"""Side-by-side speed benchmark: kd_accel vs the notebook's pipeline, in one run.

    python bench/speed.py --data-dir ../shared/data [--reps 3] [--whole] [--json bench/results.json]
    python bench/speed.py --data-dir ../shared/data --cases kd_distill_epoch kd_distill_epoch+compile

A kd_accel case may carry options after "+": compile (--compile), bf16 (--mixed-precision bf16,
changes the arithmetic: opt-in), contiguous (--no-channels-last), mmap (the logits read from a
real cache file, memory-mapped, instead of a tensor in memory), b1000 (bare_forward and
kd_precompute at the old inference batch of 1000 instead of inference_batch's), nokeep
(KD_ACCEL_KEEP_FREED_MEMORY=0: glibc's default malloc thresholds), nborder (the models with the
notebook's conv-BN-ReLU-pool order instead of kd_accel's conv-BN-pool-ReLU: same math), and for
the notebook's cases keep (kd_accel's malloc setting applied to the notebook too); ratios are printed for every
variant present. Every table is printed with the machine (bench/machine.py).

Every measurement runs in its own fresh process (so each one's peak memory is its own), and the
cases alternate rep by rep, so a slow minute on the machine hits both sides alike. The
notebook-style loops live here only, as the reference: torchvision MNIST + ToTensor +
DataLoader(batch_size=100, shuffle=True), the teacher run online in every student step, Adam
1e-3. Both sides run the same models, the same loss math, batch 100 and 600 steps an epoch.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import describe, machine_info  # noqa: E402

# (numerator, denominator, what the ratio says, target)
RATIOS = [
    ("nb_teacher_epoch", "kd_teacher_epoch", "teacher epoch: notebook / kd_accel", ">= 2"),
    ("nb_distill_epoch", "kd_distill_epoch", "distillation epoch: notebook online teacher / kd_accel cache", ">= 4"),
    ("kd_distill_epoch", "kd_ce_epoch", "kd_accel: distillation from cache / plain CE epoch", "<= 1.05"),
    ("kd_precompute", "bare_forward", "precompute (incl. cache write) / bare teacher forward", "<= 1.2"),
    ("nb_whole", "kd_whole", "whole experiment (same work): notebook / kd_accel", ">= 3"),
    # the augmented path (--augment shift, K stored views)
    ("kd_cache_aug_epoch", "kd_ce_aug_epoch", "augmented: distillation from the K-view cache / plain augmented CE epoch",
     "<= 1.1"),
    ("kd_online_aug_epoch", "kd_cache_aug_epoch", "augmented: online-consistent teacher / K-view cache epoch", ">= 3"),
    ("kd_precompute_views", "bare_forward_views", "K-view precompute (parts, cache write) / K bare teacher forwards",
     "<= 1.2"),
]
VIEWS = 4  # K of the augmented precompute cases
OPTIONS = ("compile", "bf16", "contiguous", "mmap", "b1000", "nokeep", "keep", "nborder")


# ---------------------------------------------------------------- the notebook's side
def notebook_loader(data_dir, device):
    import torchvision
    from torchvision import transforms

    ds = torchvision.datasets.MNIST(data_dir, train=True, download=False, transform=transforms.ToTensor())
    return torch.utils.data.DataLoader(ds, batch_size=100, shuffle=True, pin_memory=device.type == "cuda")


def notebook_test_accuracy(model, data_dir, device):
    import torchvision
    from torchvision import transforms

    ds = torchvision.datasets.MNIST(data_dir, train=False, download=False, transform=transforms.ToTensor())
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(ds, batch_size=100):
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return 100.0 * correct / len(ds)


def notebook_train_epoch(model, loader, opt, device):
    model.train()
    running = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()
    return running


def notebook_distill_epoch(student, teacher, loader, opt, device, temperature=4.0, alpha=0.5):
    from kd_accel.losses import hinton_kd_loss

    student.train()
    teacher.eval()
    running = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            t = teacher(x)  # the teacher runs again in every step of every epoch
        loss = hinton_kd_loss(student(x), y, t, temperature, alpha)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()
    return running


# ---------------------------------------------------------------- one case, in a child process
def run_case(case, data_dir, device_name, workdir):
    from accelerate.utils import set_seed

    from kd_accel.config import from_flags
    from kd_accel.data import load_split, to_float
    from kd_accel.evaluation import inference_batch, predict_logits
    from kd_accel.models import Student, Teacher
    from kd_accel.pipeline import columns, make_accelerator
    from kd_accel.teaching import cache_key
    from kd_accel.cache import open_cache, save_cache
    from kd_accel.models import state_fingerprint
    from kd_accel.training import TrainSpec, fit, make_objective
    from kd_accel.data import TensorData

    set_seed(0)
    device = torch.device(device_name)
    case, *opts = case.split("+")
    if set(opts) - set(OPTIONS):
        raise SystemExit(f"unknown options {set(opts) - set(OPTIONS)} in case {case}; choose from {OPTIONS}")
    cfg = from_flags(epochs=1, batch_size=100, compile="compile" in opts,
                     mixed_precision="bf16" if "bf16" in opts else None, channels_last="contiguous" not in opts)
    # Adam's first construction imports torch._dynamo (1-2 s): a once-per-process cost that the
    # notebook's side pays before its timer starts (it builds its optimizer first) and kd_accel's
    # fit inside it. Paid here, before either timer, so no epoch carries it.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    result = {}
    if "keep" in opts:
        from kd_accel.memory import keep_freed_memory

        keep_freed_memory()
    if "nborder" in opts:  # the notebook's layer order in every model kd_accel builds
        import kd_accel.models.notebook as models  # where Teacher and Student look the layer up

        models.conv_bn_relu_pool = lambda cin, cout, k: [*models.conv_bn_relu(cin, cout, k), torch.nn.MaxPool2d(2)]
    if case.startswith("nb_"):
        loader = notebook_loader(data_dir, device)
        teacher = Teacher().to(device)
        if case == "nb_teacher_epoch":
            opt = torch.optim.Adam(teacher.parameters(), 1e-3)
            t0 = time.perf_counter()
            notebook_train_epoch(teacher, loader, opt, device)
        elif case == "nb_distill_epoch":
            student = Student().to(device)
            opt = torch.optim.Adam(student.parameters(), 1e-3)
            t0 = time.perf_counter()
            notebook_distill_epoch(student, teacher, loader, opt, device)
        elif case == "nb_whole":  # the notebook's whole run: teacher 5 epochs, student 5 epochs online
            t0 = time.perf_counter()
            opt = torch.optim.Adam(teacher.parameters(), 1e-3)
            for _ in range(5):
                notebook_train_epoch(teacher, loader, opt, device)
            result["teacher_acc"] = notebook_test_accuracy(teacher, data_dir, device)
            student = Student().to(device)
            opt = torch.optim.Adam(student.parameters(), 1e-3)
            for _ in range(5):
                notebook_distill_epoch(student, teacher, loader, opt, device)
            result["student_acc"] = notebook_test_accuracy(student, data_dir, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result["seconds"] = time.perf_counter() - t0
        return result

    if case == "kd_whole":
        out = Path(workdir) / ("kd_whole_run" + "".join(f"_{o}" for o in opts))
        t0 = time.perf_counter()
        # the notebook's work: teacher 5 epochs, then one student 5 epochs (the default job's
        # students run 20 epochs and it adds a baseline; both are set to the notebook's here)
        flags = ["--compile"] * ("compile" in opts) + ["--mixed-precision", "bf16"] * ("bf16" in opts) \
            + ["--no-channels-last"] * ("contiguous" in opts)
        subprocess.run([sys.executable, str(ROOT / "launch" / "distill.py"), "--data-dir", data_dir,
                        "--output-dir", str(out), "--epochs", "5", "--teacher-epochs", "5", "--no-baseline", *flags],
                       check=True, stdout=subprocess.DEVNULL)
        result["seconds"] = time.perf_counter() - t0
        m = json.loads((out / "metrics.json").read_text())
        result.update(teacher_acc=m["teacher"]["test_accuracy"], student_acc=m["student"]["test_accuracy"])
        return result

    accelerator = make_accelerator(cfg, cpu=device.type == "cpu")
    train = load_split("mnist", "train", data_dir)
    probe = load_split("mnist", "test", data_dir).subset(100)  # fit evaluates each epoch: keep it tiny
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if case == "kd_teacher_epoch":
        t0 = time.perf_counter()
        fit(accelerator, Teacher(), TensorData(columns(train)), probe, TrainSpec.of(cfg.student, cfg.run), make_objective("ce"), "teacher")
    elif case in ("kd_distill_epoch", "kd_ce_epoch"):
        logits = torch.randn(len(train), 10) * 5  # stands in for the cache: same shape, same gather
        if "mmap" in opts:  # the real read path: a cache file, memory-mapped by open_cache
            key = cache_key(train, "0" * 32)
            save_cache(Path(workdir) / "bench_cache.safetensors", logits, train.labels, key)
            logits = open_cache(Path(workdir) / "bench_cache.safetensors", key).logits(0)
        cols = columns(train, teacher_logits=logits) if case == "kd_distill_epoch" else columns(train)
        objective = make_objective("hinton", 4.0, 0.5) if case == "kd_distill_epoch" else make_objective("ce")
        t0 = time.perf_counter()
        fit(accelerator, Student(), TensorData(cols), probe, TrainSpec.of(cfg.student, cfg.run), objective, "student")
    elif case == "bare_forward":  # the floor: the teacher over pre-made float tensors, no bookkeeping
        teacher = Teacher().to(device).eval().to(memory_format=torch.channels_last)
        x = to_float(train.images).to(device)
        bs = inference_batch(device)  # the batch predict_logits uses ("+b1000": the old 1000)
        bs = 1000 if "b1000" in opts else bs
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(x), bs):
                teacher(x[i : i + bs])
    elif case in ("kd_ce_aug_epoch", "kd_cache_aug_epoch", "kd_online_aug_epoch"):
        t0 = augmented_epoch(case, accelerator, cfg, train, probe, workdir)
    elif case == "bare_forward_views":  # the floor of a K-view precompute: K passes over pre-made views
        from kd_accel.augment import SPECS, apply, draw_params

        teacher = Teacher().to(device).eval().to(memory_format=torch.channels_last)
        index, bs = torch.arange(len(train)), inference_batch(device)
        views = [to_float(apply(SPECS["shift"], train.images, draw_params(SPECS["shift"], 0, v, index))).to(device)
                 for v in range(VIEWS)]
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in views:
                for i in range(0, len(x), bs):
                    teacher(x[i : i + bs])
    elif case == "kd_precompute_views":
        from kd_accel.config import with_flags
        from kd_accel.models import save_model
        from kd_accel.teaching import precompute

        teacher_file = Path(workdir) / "views_teacher.safetensors"
        save_model(Teacher(), teacher_file, "teacher", 10)
        vcfg = with_flags(cfg, augment="shift", views=VIEWS)
        t0 = time.perf_counter()
        precompute(accelerator, vcfg, teacher_file, train, Path(workdir) / "views_cache.safetensors")
    elif case == "kd_precompute":
        teacher = Teacher().to(device).requires_grad_(False).to(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        logits = predict_logits(accelerator, teacher, train, batch_size=1000 if "b1000" in opts else None)
        save_cache(Path(workdir) / "cache.safetensors", logits, train.labels,
                   cache_key(train, state_fingerprint(teacher.state_dict())))
    else:
        raise SystemExit(f"unknown case {case}")
    sync()
    result["seconds"] = time.perf_counter() - t0
    return result


def augmented_epoch(case, accelerator, cfg, train, probe, workdir):
    """One student epoch with --augment shift, through the pipeline's own student_data: plain CE,
    KD from a K-view cache (view e mod K replayed), or KD from the teacher run on every batch.
    Returns the start time (after the cache is made, outside the timer)."""
    from kd_accel.augment import SPECS, draw_params, make_inputs
    from kd_accel.cache import open_cache, save_cache
    from kd_accel.config import with_flags
    from kd_accel.models import Student, Teacher
    from kd_accel.pipeline import student_data
    from kd_accel.teaching import cache_key, frozen_teacher
    from kd_accel.training import TrainSpec, fit

    mode = {"kd_cache_aug_epoch": "cache", "kd_online_aug_epoch": "online"}.get(case)
    vcfg = with_flags(cfg, augment="shift", views=VIEWS, teacher_mode=mode or "cache")
    soft = online = None
    if mode == "cache":  # a real K-view cache file: random logits, the views' real parameters
        key, index = cache_key(train, "0" * 32, SPECS["shift"], 0), torch.arange(len(train))
        params = torch.stack([draw_params(SPECS["shift"], 0, v, index) for v in range(VIEWS)])
        path = Path(workdir) / "aug_cache.safetensors"
        save_cache(path, torch.randn(VIEWS, len(train), 10) * 5, train.labels, key, "fp16", params=params)
        soft = open_cache(path, key, views=VIEWS)
    elif mode == "online":
        from kd_accel.models import save_model

        teacher_file = Path(workdir) / "online_teacher.safetensors"
        save_model(Teacher(), teacher_file, "teacher", 10)
        online = (frozen_teacher(accelerator, vcfg, teacher_file, train), None)  # (teacher, its own inputs: the student's)
    data, objective = student_data(vcfg, train, soft, online)
    t0 = time.perf_counter()
    fit(accelerator, Student(), data, probe, TrainSpec.of(vcfg.student, vcfg.run), objective, "student", inputs=make_inputs(SPECS["shift"], train.norm))
    return t0


# ---------------------------------------------------------------- the driver
def measure(case, args, workdir):
    cmd = [sys.executable, __file__, "--case", case, "--data-dir", args.data_dir, "--device", args.device,
           "--workdir", workdir]
    off = "nokeep" in case.split("+")[1:]  # glibc's default malloc thresholds in this case's process
    env = {**os.environ, **({"KD_ACCEL_KEEP_FREED_MEMORY": "0"} if off else {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description="kd_accel vs notebook-style pipeline, side by side")
    p.add_argument("--data-dir", default=os.environ.get("KD_ACCEL_DATA_DIR", "data"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--whole", action="store_true", help="also the whole default experiment vs the notebook's whole run (once each)")
    p.add_argument("--cases", nargs="*", default=None, help="cases, each optionally with +options (see above)")
    p.add_argument("--whole-variants", nargs="*", default=[], help="with --whole, also e.g. kd_whole+compile")
    p.add_argument("--json", default=None)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.case:  # child: one measurement, one JSON line
        res = run_case(args.case, args.data_dir, args.device, args.workdir)
        res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res["torch_threads"] = torch.get_num_threads()
        if args.device == "cuda":
            res["max_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(res))
        return

    cases = args.cases or ["nb_teacher_epoch", "kd_teacher_epoch", "nb_distill_epoch", "kd_distill_epoch",
                           "kd_ce_epoch", "bare_forward", "kd_precompute", "kd_ce_aug_epoch", "kd_cache_aug_epoch",
                           "kd_online_aug_epoch", "bare_forward_views", "kd_precompute_views"]
    info = machine_info(args.device)
    print(describe(info), flush=True)
    if info["loadavg_1m"] and info["loadavg_1m"] > 0.5:
        print(f"warning: load average {info['loadavg_1m']:.2f} before starting (other work, or work that has just "
              "ended): if the CPU is shared, absolute times are unreliable (same-run ratios less so)", flush=True)
    results = {c: [] for c in cases}
    with tempfile.TemporaryDirectory() as workdir:
        for rep in range(args.reps):
            for c in cases:
                results[c].append(measure(c, args, workdir))
                print(f"rep {rep + 1}/{args.reps} {c}: {results[c][-1]['seconds']:.2f}s", flush=True)
        if args.whole:
            for c in ("nb_whole", "kd_whole", *args.whole_variants):
                results[c] = [measure(c, args, workdir)]
                print(f"{c}: {results[c][-1]}", flush=True)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    summary = {}
    print()
    print(describe(info) + (f", {load_end:.2f} at the end" if load_end is not None else "")
          + f"; {args.reps} reps, each case a fresh process")
    print(f"{'case':<30}{'median s':>10}{'min':>9}{'max':>9}{'peak RSS MB':>13}")
    for c, runs in results.items():
        secs = [r["seconds"] for r in runs]
        summary[c] = {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs), "n": len(secs),
                      "max_rss_mb": max(r["max_rss_mb"] for r in runs),
                      **{k: v for k, v in runs[-1].items() if k not in ("seconds", "max_rss_mb")}}
        if c.startswith("kd_") and "torch_threads" in runs[-1]:
            info["torch_threads_in_cases"] = runs[-1]["torch_threads"]  # what fit chose in the child
        s = summary[c]
        print(f"{c:<30}{s['median_s']:>10.2f}{s['min_s']:>9.2f}{s['max_s']:>9.2f}{s['max_rss_mb']:>13.0f}")
    print()
    ratios = []
    for num, den, what, target in RATIOS:
        # the plain pair, then each variant suffix measured in this run: num+s / den+s where
        # both were measured, else the variant against the other side's plain case
        suffixes = sorted({c.split("+", 1)[1] for c in summary if "+" in c and c.split("+", 1)[0] in (num, den)})
        pairs = [(num, den, what)] + [(num + "+" + x if num + "+" + x in summary else num,
                                       den + "+" + x if den + "+" + x in summary else den, f"{what} [{x}]")
                                      for x in suffixes]
        for n_, d_, label in pairs:
            if n_ in summary and d_ in summary:
                r = summary[n_]["median_s"] / summary[d_]["median_s"]
                op, bound = target.split()
                ok = r >= float(bound) if op == ">=" else r <= float(bound)
                ratios.append({"ratio": label, "numerator": n_, "denominator": d_, "value": r, "target": target,
                               "met": ok})
                print(f"{label:<72}{r:>7.2f}x  target {target:<8}{'met' if ok else 'MISSED'}")
    env = {**info, "loadavg_1m_end": load_end, "reps": args.reps}
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "cases": summary, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
