"""launch/export.py: a model kd_accel saved, exported for deployment, checked, with a model card.

`export.py RUN/student.safetensors --onnx student.onnx [--pt2 student.pt2] [--check]`:
- ONNX (torch.onnx's torch.export-based exporter), batch dimension dynamic, input "input"
  float32 [N, C, H, W], output "logits" [N, classes]; the preprocessing, the architecture and
  the class names (where the file records them) in the model's metadata_props;
- a torch.export program (.pt2: torch.export.save, loaded by torch.export.load(...).module()),
  the successor of TorchScript (torch.jit.trace is deprecated in torch 2.14);
- --check runs each exported file (onnxruntime; torch.export.load) on a batch of inputs of the
  model's shape and compares with the model in torch: the max abs difference is printed, and
  above --tolerance nothing is written (one line, exit 2);
- README.md beside the exported files: a model card (what the model is and takes, its data and
  recipe, its accuracy with the teacher's and the baseline's, its cost and speed-up), from the
  file's metadata and the run folder's metrics.json and config.json beside it.

Every file is written through io.atomic_path: a failed export or check leaves nothing new.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import __version__
from .errors import KDError, first_line
from .io import atomic_path

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from torch import nn

INSTALL = "pip install 'kd_accel[export]'"
DEFAULT_TOLERANCE = 1e-4  # max abs difference of fp32 logits: kernels differ, the function must not
CHECK_BATCH = 4  # not the export's example batch (2): the check also shows the batch dimension is free
EXAMPLE_BATCH = 2  # torch.export specialises a dimension of size 0 or 1: the example must have 2 or more
CARD_MARK = "<!-- kd_accel model card"  # the first line of a card: only a card is written over
# ONNX keeps a model's weights in one protobuf of at most 2 GiB; above, they go to FILE.data beside it
ONNX_INLINE_BYTES = 1_800_000_000


@dataclass
class Source:
    """The model file being exported: the model (eval, fp32, CPU), its metadata and record."""
    path: Path
    model: nn.Module
    meta: dict[str, str]
    record: dict[str, Any]
    fingerprint: str
    written: list[tuple[Path, str]] = field(default_factory=list)  # (file, what it is and its check) for the card

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.record["input_shape"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The record's preprocessing; a file saved before records takes the data as they are."""
        _, h, w = self.input_shape
        return self.record.get("preprocessing") or {"image_size": [h, w], "mean": None, "std": None,
                                                   "interpolation": "bilinear", "resize_size": None}


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export a model kd_accel saved (teacher.safetensors, student.safetensors, "
                                            "...) to ONNX and/or a torch.export program, with a model card beside it.",
                                allow_abbrev=False)
    p.add_argument("weights", help="a kd_accel model file (RUN/student.safetensors)")
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX model here (dynamic batch; needs the export extra)")
    p.add_argument("--pt2", metavar="FILE", help="write a torch.export program here (torch.export.load reads it)")
    p.add_argument("--check", action="store_true",
                   help="run each exported file on a batch and compare with torch; refuse above --tolerance")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest max abs difference of the logits --check accepts (default: %(default)g)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch.onnx's)")
    p.add_argument("--card", metavar="FILE", help="the model card's path (default: README.md beside the first export)")
    p.add_argument("--no-card", action="store_true", help="write no model card")
    return p


# --- inputs and outputs, checked before any work -------------------------------------------

def _require(module: str, flag: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise KDError(f"{flag} needs the {module} package, not installed: {INSTALL}")


def require_packages(onnx: bool, check: bool) -> None:
    """Every package an ONNX export (and its check) needs, before any work: one line naming the install."""
    if onnx:
        for module in ("onnx", "onnxscript"):  # torch.onnx's exporter is written with onnxscript
            _require(module, "--onnx")
        if check:
            _require("onnxruntime", "--onnx --check")


def check_requirements(args: argparse.Namespace) -> None:
    """Every package the flags need, and a usable tolerance, before any work."""
    require_packages(bool(args.onnx), args.check)
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise KDError(f"--tolerance must be a finite number >= 0, got {args.tolerance:g}")


def _is_onnx(path: Path) -> bool:
    import onnx

    try:
        onnx.load_model(str(path), load_external_data=False)
        return True
    except Exception:  # noqa: BLE001 - protobuf fails in many ways on bytes that are not a model
        return False


def _is_card(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(CARD_MARK)
    except (OSError, UnicodeDecodeError):
        return False


# kind -> (what it is, in a message; does an existing file hold one?)
KINDS = {"--onnx": ("an ONNX model", _is_onnx), "--pt2": ("a torch.export program", zipfile.is_zipfile),
         "--card": ("a kd_accel model card", _is_card)}


def check_outputs(weights: Path, outputs: Mapping[str, Path], named_by: str | None = None) -> None:
    """No output over the weights it is made from, over another output, over a folder or over an
    existing file of another kind (a user's own README.md is never replaced by a card).
    `named_by`: the flag the messages name (distill.py's --export), not each file's own."""
    seen: dict[Path, str] = {}
    for kind, path in outputs.items():
        flag = named_by or kind
        resolved = path.resolve()
        if resolved == weights.resolve():
            raise KDError(f"{flag} {path} is the weights file being exported; choose another path")
        if resolved in seen:
            raise KDError(f"{flag} {path} is also {seen[resolved]}'s path; choose another")
        seen[resolved] = flag
        desc, holds = KINDS[kind]
        if path.is_dir():
            raise KDError(f"{flag} {path} is a folder; give a file's path")
        if path.exists() and not holds(path):
            raise KDError(f"{flag} {path} exists and is not {desc}; refusing to overwrite it (remove it or choose "
                          "another path)")


def planned_outputs(args: argparse.Namespace) -> dict[str, Path]:
    """{flag: path} of every file the command writes, the card's included."""
    files = {flag: Path(value) for flag, value in (("--onnx", args.onnx), ("--pt2", args.pt2)) if value}
    if not files:
        raise KDError("nothing to export: give --onnx FILE and/or --pt2 FILE")
    if not args.no_card:
        files["--card"] = Path(args.card) if args.card else next(iter(files.values())).parent / "README.md"
    return files


# distill.py --export FORMAT...: the student's files in RUN/<EXPORT_DIR>/, checked, with a card
FORMATS = {"onnx": "--onnx", "pt2": "--pt2"}


def run_exports(export_dir: Path, formats: Sequence[str]) -> dict[str, Path]:
    """{flag: path} of distill.py --export's files: student.onnx / student.pt2 and README.md."""
    files = {FORMATS[f]: export_dir / f"student.{f}" for f in dict.fromkeys(formats)}
    return {**files, "--card": export_dir / "README.md"} if files else {}


def load_source(path: Path) -> Source:
    """The model a kd_accel file holds (models.load_model: any architecture it rebuilds), in
    eval mode, fp32, on the CPU."""
    from .models import load_model, meta_record, state_fingerprint

    model, meta = load_model(path)
    model = model.float().eval()
    return Source(path, model, meta, meta_record(meta, path), state_fingerprint(model.state_dict()))


# --- what the exported files say of themselves ---------------------------------------------

def class_names(meta: Mapping[str, str]) -> list[str] | None:
    """The class names a model file records ("class_names": a JSON list, label order), or None."""
    try:
        names = json.loads(meta.get("class_names", "null"))
    except ValueError:
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def export_metadata(src: Source) -> dict[str, str]:
    """The strings an exported file carries (ONNX metadata_props, the .pt2's kd_accel.json): what
    the model is, the input it expects (preprocessing), its classes and where it came from."""
    prep, (c, h, w) = src.preprocessing, src.input_shape
    names = class_names(src.meta)
    info = {"arch": src.record["spec"], "num_classes": str(src.record["num_classes"]), "input_shape": f"{c},{h},{w}",
            "input": "float32 [N, C, H, W]: pixels / 255, the short side resized to resize_size and centre-cropped "
                     "to image_size (resize_size none: resized to image_size), then (x - mean) / std where mean is "
                     "not none", "channels": str(c), "image_size": f"{h},{w}",
            "resize_size": str(prep.get("resize_size") or "none"), "interpolation": str(prep.get("interpolation")),
            "mean": json.dumps(prep.get("mean")) if prep.get("mean") is not None else "none",
            "std": json.dumps(prep.get("std")) if prep.get("std") is not None else "none",
            "preprocessing": json.dumps(prep), "arch_spec": json.dumps(src.record),
            "source_file": src.path.name, "weights_fingerprint": src.fingerprint, "kd_accel": __version__}
    if names:
        info["class_names"] = json.dumps(names)
    for key in ("role", "phase", "seed"):
        if key in src.meta:
            info[key] = src.meta[key]
    # a teacher's own keys; a student's stamp and "info"
    dataset, accuracy = src.meta.get("dataset") or _stamp(src).get("dataset"), own_accuracy(src)
    if dataset:
        info["dataset"] = str(dataset)
    if accuracy is not None:
        info["test_accuracy"] = f"{accuracy:g}"
    return info


# --- exporting and checking ----------------------------------------------------------------

def example_inputs(src: Source, batch: int) -> torch.Tensor:
    """`batch` inputs of the model's shape, drawn like its real ones: pixels in [0, 1] for a model
    that takes them as they are, standard normal for a normalised one; a fixed generator."""
    g = torch.Generator().manual_seed(0)
    draw = torch.rand if src.preprocessing.get("mean") is None else torch.randn
    return draw(batch, *src.input_shape, generator=g)


def compare(src: Source, run: Callable[[torch.Tensor], torch.Tensor], what: str, tolerance: float) -> str:
    """Run the exported file (`run`: inputs -> logits) and the model in torch on CHECK_BATCH
    inputs; the line that says the max abs difference, or one line refusing it above `tolerance`."""
    x = example_inputs(src, CHECK_BATCH)
    with torch.no_grad():
        want = src.model(x)
    got = run(x)
    if got.shape != want.shape:
        raise KDError(f"--check: {what} gives logits of shape {list(got.shape)}, torch {list(want.shape)}; not written")
    diff = (got.double() - want.double()).abs().max().item()
    if not diff <= tolerance:  # NaN fails too
        raise KDError(f"--check: {what} differs from torch by {diff:.3g} (max abs, {CHECK_BATCH} inputs), above "
                      f"--tolerance {tolerance:g}; not written")
    return f"max abs difference {diff:.3g} vs torch on {CHECK_BATCH} inputs (tolerance {tolerance:g})"


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch")}


def _exporting(spec: str, fn: Callable[[], Any]) -> Any:
    """fn() with a model the exporter cannot trace said in one line."""
    try:
        return fn()
    except KDError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.export / torch.onnx fail in many ways on untraceable code
        raise KDError(f"cannot export {spec}: {first_line(e)[:300]}") from None


def write_onnx(src: Source, path: Path, opset: int | None, check: float | None) -> str:
    """Export to ONNX at `path` (atomically; external data FILE.data beside it for weights over
    ONNX_INLINE_BYTES); with `check` (the tolerance) compared in onnxruntime before it lands.
    Returns what the card says of it."""
    x = example_inputs(src, EXAMPLE_BATCH)
    program = _exporting(src.record["spec"], lambda: torch.onnx.export(
        src.model, (x,), None, input_names=["input"], output_names=["logits"], opset_version=opset,
        dynamic_shapes=(_batch_dim(),), dynamo=True, verbose=False))
    program.model.metadata_props.update(export_metadata(src))
    external = sum(t.numel() * t.element_size() for t in src.model.state_dict().values()) > ONNX_INLINE_BYTES
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=external)
        said = f"ONNX opset {_onnx_opset(program)}, batch dimension dynamic"
        if check is not None:
            said += "; onnxruntime: " + compare(src, _onnxruntime(tmp), f"onnxruntime on {path}", check)
        if external:  # the data first: the model, renamed last, is what makes the pair visible
            os.replace(tmp.with_name(tmp.name + ".data"), path.with_name(path.name + ".data"))
    return said


def _onnx_opset(program: Any) -> int | str:
    return program.model.opset_imports.get("", "?")


def _onnxruntime(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise KDError(f"--check: onnxruntime cannot load the exported model: {first_line(e)[:300]}") from None
    return lambda x: torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])


def write_pt2(src: Source, path: Path, check: float | None) -> str:
    """torch.export the model (batch dimension dynamic) and save it at `path` (atomically), with
    export_metadata as its extra file kd_accel.json; with `check` loaded back and compared."""
    x = example_inputs(src, EXAMPLE_BATCH)
    program = _exporting(src.record["spec"],
                         lambda: torch.export.export(src.model, (x,), dynamic_shapes=(_batch_dim(),)))
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp), extra_files={"kd_accel.json": json.dumps(export_metadata(src))})
        said = f"torch.export program (torch {torch.__version__}), batch dimension dynamic"
        if check is not None:
            loaded = torch.export.load(str(tmp)).module()
            said += "; torch.export.load: " + compare(src, lambda t: loaded(t).detach(), f"the program {path}", check)
    return said


# --- the model card ------------------------------------------------------------------------

ROLE_WORDS = {"teacher": "teacher", "student": "distilled student", "baseline": "baseline student (hard labels only)"}


def _json_file(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _stamp(src: Source) -> dict[str, Any]:
    """The settings stamped on the file (stamps.phase_settings: data, recipe, distillation), or {}."""
    try:
        value = json.loads(src.meta.get("settings", "{}"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def own_accuracy(src: Source) -> float | None:
    """The test accuracy the file records: a teacher's "test_accuracy", a student's "info"."""
    if "test_accuracy" in src.meta:
        return float(src.meta["test_accuracy"])
    try:
        return float(json.loads(src.meta.get("info", "{}"))["test_accuracy"])
    except (ValueError, KeyError, TypeError):
        return None


def run_metrics(src: Source) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(metrics.json, config.json) of the run folder the weights lie in, each None where absent
    or not about this file: metrics.json's entry for the file's phase must hold its fingerprint
    (the deployment report's, or the teacher's), or, from runs before the report, its accuracy
    and parameter count."""
    from .models import count_params

    metrics, config = _json_file(src.path.parent / "metrics.json"), _json_file(src.path.parent / "config.json")
    entry = (metrics or {}).get(src.meta.get("phase", ""))
    if not isinstance(entry, dict):
        return None, None
    fingerprint = (entry.get("deployment") or {}).get("fingerprint") or entry.get("fingerprint")
    same = fingerprint == src.fingerprint if fingerprint else (
        entry.get("test_accuracy") == own_accuracy(src) and entry.get("params") == count_params(src.model))
    return (metrics, config) if same else (None, None)


def _card_files(src: Source) -> list[str]:
    c, h, w = src.input_shape
    rows = [f"| `{path.name}` | {said} |" for path, said in src.written]
    return ["## Files", "", "| file | what |", "| --- | --- |", *rows,
            f"| `{src.path.name}` | the kd_accel model file it was exported from (weights fingerprint "
            f"`{src.fingerprint}`) |", "",
            f"Input `input`: float32 [N, {c}, {h}, {w}], N free; output `logits`: float32 "
            f"[N, {src.record['num_classes']}] (softmax for probabilities). The metadata of each file repeat the "
            "input's preprocessing, the architecture and the class names.", ""]


def _card_input(src: Source) -> list[str]:
    prep, (c, h, w) = src.preprocessing, src.input_shape
    size = (f"resize the short side to {prep['resize_size']} px, then centre-crop {h}x{w}" if prep.get("resize_size")
            else f"resize to {h}x{w}")
    norm = (f"then `(x - mean) / std` per channel, mean {prep['mean']}, std {prep['std']}" if prep.get("mean")
            is not None else "no normalisation beyond that")
    names = class_names(src.meta)
    return ["## Input", "", f"- {c} channel{'s' * (c > 1)} ({'grey' if c == 1 else 'RGB' if c == 3 else 'as trained'}); "
            f"{size} ({prep.get('interpolation')} interpolation)",
            f"- pixels as float32 divided by 255 (in [0, 1]), {norm}",
            f"- classes: {src.record['num_classes']}" + (f": {', '.join(names)}" if names else
                                                         " (label order of the training data; names not recorded)"), ""]


def _card_data_recipe(src: Source, metrics: Mapping[str, Any] | None, config: Mapping[str, Any] | None) -> list[str]:
    st = _stamp(src)
    kind = st.get("phase_kind", src.meta.get("phase", "?"))
    sizes = f" ({metrics['num_train']:,} training images, {metrics['num_test']:,} test images)" if metrics else ""
    data_dir = ((config or {}).get("data") or {}).get("data_dir")
    lines = ["## Data and recipe", "", f"- data: {st.get('dataset', src.meta.get('dataset', 'not recorded'))}{sizes}"
             + (f", from `{data_dir}`" if data_dir else "")
             + (f", limited to {st['limit_train']} training images" if st.get("limit_train") else "")]
    if st:
        lines.append(f"- training: {st.get('epochs')} epochs, batch {st.get('batch_size')}, lr {st.get('lr')}, "
                     f"{st.get('schedule')} schedule, augmentation {st.get('augment')}, seed {st.get('seed')}, "
                     f"mixed precision {st.get('mixed_precision')}")
    if "kd_loss" in st:
        teacher = ((metrics or {}).get("teacher") or {}).get("arch", "")
        lines.append(f"- distillation: {st['kd_loss']} loss, T={st.get('temperature')}, alpha={st.get('alpha')}, "
                     f"soft targets from the teacher ({st.get('teacher_mode')}) {teacher} "
                     f"(weights `{st.get('teacher_weights')}`)".rstrip())
    elif kind == "baseline":
        lines.append("- hard labels only: the baseline the distilled student is measured against")
    return lines + [""]


def _card_row(role: str, m: Mapping[str, Any], mine: bool) -> str:
    from .deploy import fmt_flops, fmt_ms

    cost = m.get("deployment") or {}
    name = ROLE_WORDS.get(role, role) + (" **(this model)**" if mine else "")
    return (f"| {name} | `{m.get('arch', '?')}` | {m['test_accuracy']:.2f}% | {m['params']:,} | "
            f"{fmt_flops(cost.get('flops'))} | {fmt_ms(cost, 1)} | {fmt_ms(cost, 64)} |")


def _card_results(src: Source, metrics: Mapping[str, Any] | None) -> list[str]:
    from .deploy import forward_flops, fmt_flops, headline
    from .models import count_params

    lines = ["## Results", ""]
    if not metrics:
        acc = own_accuracy(src)
        return lines + [f"- test accuracy {acc:.2f}% (recorded in the file)" if acc is not None
                        else "- test accuracy: not recorded in the file",
                        "- no metrics.json of its run beside the file: no teacher or baseline to compare with",
                        f"- {count_params(src.model):,} parameters, "
                        f"{fmt_flops(forward_flops(src.model, src.input_shape))} FLOPs per image", ""]
    lines += ["| model | architecture | test accuracy | params | FLOPs/img | ms at batch 1 | ms at batch 64 |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [_card_row(r, metrics[r], r == src.meta.get("phase")) for r in ROLE_WORDS if metrics.get(r)]
    said = headline(metrics)
    gain = metrics.get("gain_over_baseline")
    lines += [""] + ([f"{said[0].upper()}{said[1:]}."] if said else []) + (
        [f"Gain of the distilled student over the baseline: {gain:+.2f} points."] if gain is not None else [])
    machine = (metrics.get("deployment") or {}).get("machine")
    if machine:
        flags = "/".join(machine["cpu_flags"]) or "no AVX"
        lines.append(f"Latency: median of repeats after a warm-up, fp32, measured when the run ended on "
                     f"{machine['device']} ({machine['cpu']}, {flags}, {machine['threads']} CPU thread(s)"
                     + (f", {machine['gpu']}" if machine.get("gpu") else "") + "). FLOPs: torch.utils.flop_counter, "
                     "one image, 2 per multiply-add.")
    return lines + [""]


def _card_use(src: Source) -> list[str]:
    c, h, w = src.input_shape
    onnx = next((p.name for p, _ in src.written if p.suffix == ".onnx"), "model.onnx")
    return ["## Use", "", "```python", "import numpy as np, onnxruntime as ort",
            f"session = ort.InferenceSession({onnx!r})",
            f"x = np.zeros((1, {c}, {h}, {w}), np.float32)  # preprocessed as above",
            "logits = session.run(['logits'], {'input': x})[0]", "```", "",
            f"Without kd_accel: `{src.path.name}` is a plain safetensors state dict of `{src.record['spec']}`, "
            "for the library's own model's load_state_dict (kd_accel's docs/deploy.md says how).", ""]


def card_text(src: Source) -> str:
    """The model card (markdown) of an export: its files, input, data and recipe, results, use."""
    metrics, config = run_metrics(src)
    role = src.meta.get("phase", src.meta.get("role", "model"))
    head = [f"{CARD_MARK} (launch/export.py, kd_accel {__version__}); rewritten by each export here -->",
            f"# {ROLE_WORDS.get(role, role)}: `{src.record['spec']}`", ""]
    return "\n".join(head + _card_files(src) + _card_input(src) + _card_data_recipe(src, metrics, config)
                     + _card_results(src, metrics) + _card_use(src))


def write_card(src: Source, path: Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(card_text(src), encoding="utf-8")


def export_files(weights: Path, files: Mapping[str, Path], check: float | None, opset: int | None = None) -> list[str]:
    """Export the model file `weights` to `files` ({flag: path} as planned_outputs gives them:
    --onnx, --pt2, --card), each checked against torch within `check` when it is not None.
    Returns the lines that say what was written."""
    src = load_source(weights)
    if "--onnx" in files:
        src.written.append((files["--onnx"], write_onnx(src, files["--onnx"], opset, check)))
    if "--pt2" in files:
        src.written.append((files["--pt2"], write_pt2(src, files["--pt2"], check)))
    said = [f"wrote {path}: {what}" for path, what in src.written]
    if "--card" in files:
        write_card(src, files["--card"])
        said.append(f"wrote {files['--card']} (model card)")
    return said


def export_main(argv: Sequence[str] | None = None) -> None:
    args = export_parser().parse_args(argv)
    weights = Path(args.weights)
    check_requirements(args)
    files = planned_outputs(args)
    check_outputs(weights, files)
    for line in export_files(weights, files, args.tolerance if args.check else None, args.opset):
        print(line)
