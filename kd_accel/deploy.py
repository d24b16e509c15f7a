"""The deployment report: what each model of a run costs at inference, on the machine that ran.

For the teacher, the distilled student and the baseline, from their saved files: the forward
cost (FLOPs per image, counted by torch.utils.flop_counter on one input of the model's own
shape: matrix products and convolutions, 2 per multiply-add), the parameters, the weights
file's size, and the measured latency at batch 1 and batch 64 (fp32, eval mode, no_grad, on the
run's device: the median of repeats after a warm-up, within a time budget per model and batch
size). metrics.json gets it per role and the summary table says "the student keeps X% of the
teacher's accuracy at Y x its speed". Only the main process measures (reporting.experiment_metrics).

KD_ACCEL_LATENCY_S sets the budget in seconds (default 1); 0 skips the latency (FLOPs, params
and sizes are still recorded): tests and quick runs.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import KDError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from torch import nn

LATENCY_ENV = "KD_ACCEL_LATENCY_S"
DEFAULT_BUDGET_S = 1.0
BATCHES = (1, 64)
# each median is of at least MIN_REPEATS timed forwards (a slow model overruns the budget rather
# than report one sample) and at most MAX_REPEATS (a tiny model stops well inside it)
WARMUP, MIN_REPEATS, MAX_REPEATS = 2, 3, 15
# the CPU features that change which kernels torch picks (the same list as bench/machine.py)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
ROLES = ("teacher", "student", "baseline")


def latency_budget() -> float:
    """Seconds to spend timing each model at each batch size: $KD_ACCEL_LATENCY_S, default 1;
    0 skips the timing."""
    text = os.environ.get(LATENCY_ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise KDError(f"${LATENCY_ENV}={text!r} must be a number of seconds >= 0 (0 skips the latency)")
    return value


def _cpuinfo() -> tuple[str | None, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; (None, empty) where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, set()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return (model[1].strip() if model else None), set(flags[1].split() if flags else ())


def machine(device: torch.device | str) -> dict[str, Any]:
    """What the latency was measured on: the device, the CPU (model, the kernel-choosing flags,
    torch's CPU capability, threads) and the GPU's name where there is one."""
    device = torch.device(device)
    model, flags = _cpuinfo()
    return {"device": str(device), "cpu": model or platform.processor() or platform.machine(),
            "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "precision": "fp32"}


def forward_flops(model: nn.Module, input_shape: Sequence[int]) -> int | None:
    """FLOPs of one forward pass on one input of `input_shape` (C, H, W) as FlopCounterMode counts
    them (matrix products and convolutions, 2 per multiply-add; elementwise ops not counted);
    None for a model it cannot run (said as missing rather than stopping the report)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    except Exception:  # noqa: BLE001 - a custom op the counter cannot trace: no figure, not a failed run
        return None
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    # kernels on a GPU run asynchronously: the clock must wait for them
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def latency(model: nn.Module, input_shape: Sequence[int], batch: int, budget_s: float) -> dict[str, Any]:
    """{"batch", "median_ms" (one forward of `batch` random inputs of input_shape (C, H, W)),
    "per_image_ms", "repeats"}: WARMUP untimed forwards, then timed ones until `budget_s` is spent
    (at least MIN_REPEATS, at most MAX_REPEATS); eval mode, no_grad, on the model's device."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)  # its own generator: the run's random streams are not touched
    x = torch.randn(batch, *input_shape, generator=g).to(device)
    times = []
    with torch.no_grad():
        for _ in range(WARMUP):
            model(x)
        _sync(device)
        end = time.perf_counter() + budget_s
        while len(times) < MIN_REPEATS or (len(times) < MAX_REPEATS and time.perf_counter() < end):
            start = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - start)
    median_ms = statistics.median(times) * 1000
    return {"batch": batch, "median_ms": median_ms, "per_image_ms": median_ms / batch, "repeats": len(times)}


def model_cost(path: Path | str, device: torch.device | str, budget_s: float,
               known: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The deployment figures of the model file `path`: flops (per image), params, file_bytes,
    input_shape [C, H, W], fingerprint (its tensors', models.state_fingerprint: a model card
    knows the file by it) and latency {"batch_1": latency(...), "batch_64": ...} (None when the
    budget is 0). `known`: {fingerprint: figures} measured before on this machine (known_costs);
    the same weights are not run again (their figures, with "reused": true)."""
    from .models import count_params, load_model, meta_record, state_fingerprint

    model, meta = load_model(path)
    shape = list(meta_record(meta, path)["input_shape"])
    fingerprint = state_fingerprint(model.state_dict())
    if known and fingerprint in known:
        return {**known[fingerprint], "file_bytes": os.path.getsize(path), "reused": True}
    model = model.float().eval().to(device)
    timed = None if budget_s == 0 else {f"batch_{b}": latency(model, shape, b, budget_s) for b in BATCHES}
    return {"flops": forward_flops(model, shape), "params": count_params(model), "file_bytes": os.path.getsize(path),
            "input_shape": shape, "fingerprint": fingerprint, "latency": timed}


def comparison(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The student against its teacher: accuracy_kept_pct (its test accuracy as a share of the
    teacher's), speedup {"batch_N": teacher's latency / student's} and flops_ratio (teacher's /
    student's); None without both models' figures."""
    teacher, student = metrics.get("teacher") or {}, metrics.get("student") or {}
    t, s = teacher.get("deployment"), student.get("deployment")
    if not t or not s:
        return None
    kept = 100 * student["test_accuracy"] / teacher["test_accuracy"] if teacher.get("test_accuracy") else None
    speedup = None
    if t["latency"] and s["latency"]:
        speedup = {k: t["latency"][k]["median_ms"] / s["latency"][k]["median_ms"] for k in s["latency"]}
    flops = t["flops"] / s["flops"] if t["flops"] and s["flops"] else None
    return {"accuracy_kept_pct": kept, "speedup": speedup, "flops_ratio": flops}


def known_costs(earlier: Sequence[Path | str], here: Mapping[str, Any], budget_s: float) -> dict[str, dict[str, Any]]:
    """{fingerprint: figures} of the models in the earlier metrics.json files `earlier` (those
    that exist and hold a report) measured on the machine `here` (machine()) with this budget."""
    known = {}
    for path in earlier:
        try:
            old = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        report = old.get("deployment") if isinstance(old, dict) else None
        if not isinstance(report, dict) or report.get("machine") != here or report.get("budget_s") != budget_s:
            continue
        for role in ROLES:
            cost = (old.get(role) or {}).get("deployment") or {}
            if cost.get("fingerprint"):
                known[cost["fingerprint"]] = {k: v for k, v in cost.items() if k != "reused"}
    return known


def add_report(metrics: dict[str, Any], paths: Mapping[str, Path | str | None], device: torch.device | str,
               earlier: Sequence[Path | str] = ()) -> None:
    """Add the deployment report to metrics.json's `metrics` in place: each role's figures as
    metrics[role]["deployment"] (paths: {role: its model file}, None where the run has none),
    and metrics["deployment"] = {"machine", "budget_s", "student_vs_teacher": comparison}, with
    "latency_skipped" (why) where $KD_ACCEL_LATENCY_S is not a number: the run has trained its
    models by now, so a bad value costs their timing, not the result. A model of the `earlier`
    metrics.json files (the run folder's last result) measured on this machine is not run
    again: a rerun that reuses its teacher makes no teacher forward pass at all."""
    try:
        budget, skipped = latency_budget(), None
    except KDError as e:
        budget, skipped = 0.0, str(e)
    here = machine(device)
    known = known_costs(earlier, here, budget)
    for role, path in paths.items():
        if path is not None and metrics.get(role):
            metrics[role]["deployment"] = model_cost(path, device, budget, known)
    metrics["deployment"] = {"machine": here, "budget_s": budget, "student_vs_teacher": comparison(metrics),
                             **({"latency_skipped": skipped} if skipped else {})}


def headline(metrics: Mapping[str, Any]) -> str | None:
    """'the student keeps 98.7% of the teacher's accuracy at 11.2x its speed (batch 1; 14.0x at
    batch 64)', FLOPs instead of speed where the latency was skipped; None without a report."""
    vs = (metrics.get("deployment") or {}).get("student_vs_teacher")
    if not vs or vs["accuracy_kept_pct"] is None:
        return None
    kept = f"the student keeps {vs['accuracy_kept_pct']:.1f}% of the teacher's accuracy"
    speed = vs["speedup"]
    if speed:
        return (f"{kept} at {speed['batch_1']:.1f}x its speed (batch 1; {speed['batch_64']:.1f}x at batch 64, "
                f"{metrics['deployment']['machine']['device']})")
    if vs["flops_ratio"]:
        return f"{kept} with {vs['flops_ratio']:.1f}x fewer FLOPs (latency not measured)"
    return kept


def fmt_flops(flops: float | None) -> str:
    """1234567 -> '1.23M'."""
    if flops is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.3g}{unit}"
    return f"{flops:.0f}"


def fmt_ms(cost: Mapping[str, Any] | None, batch: int) -> str:
    """A model's median latency at `batch` in ms, '-' where not measured."""
    timed = cost and cost.get("latency")
    return "-" if not timed else f"{timed[f'batch_{batch}']['median_ms']:.3g}"
