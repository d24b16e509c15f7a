"""torchvision and timm architectures by name, and pretrained weights from a local file.

A spec is "SOURCE:NAME": "torchvision:resnet18", "timm:resnet10t" (timm's NAME may carry a
pretrained tag, "timm:resnet50.a1_in1k", for its preprocessing), or the notebook's own
"notebook:teacher" / "notebook:student"; or one's own model code, "module.path:callable" or
"path/to/file.py:callable" (models/user.py). Models are built without weights (nothing is
downloaded); load_weights reads what users have on disk. Builders and loaders return notes,
lines for the log about what was adapted, each said once. torchvision's and timm's builders and
model code take keyword arguments (--arch-kwargs, a JSON object); the notebook's take none.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from numbers import Integral
from fnmatch import fnmatchcase
from pathlib import Path
from pickle import UnpicklingError
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import KDError, first_line as _first_line
from ..validate import check_finite, file_kind, reads_tensors
from . import notebook, user

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

SOURCES = user.ZOO_SOURCES  # ("torchvision", "timm", "notebook"); model code is the "code" source
LIST_HINT = "list them with --list-models PATTERN"
# what wrappers put in front of every key: DDP / DataParallel, and torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
RECORD_KEYS = ("spec", "num_classes", "in_chans", "input_shape", "preprocessing")
# torchvision's models with auxiliary classifiers (built without them) and those heads' modules
AUX_HEADS = {"inception_v3": ("AuxLogits",), "googlenet": ("aux1", "aux2")}


# --- names ---------------------------------------------------------------------------------

def _timm(what):
    """The timm module, or one line saying that `what` needs it."""
    try:
        import timm
    except ImportError:
        raise KDError(f"{what} needs timm: pip install -e '.[timm]'") from None
    return timm


def _names(source, what="timm models"):
    """The architecture names one source can build (torchvision: classification models only)."""
    if source == "torchvision":
        import torchvision.models as tvm
        return tvm.list_models(module=tvm)
    if source == "timm":
        return _timm(what).list_models()
    return list(notebook.MODELS)


def _installed_specs():
    """Every "SOURCE:NAME" buildable here; timm's only if it is installed."""
    specs = []
    for source in SOURCES:
        try:
            specs += [f"{source}:{name}" for name in _names(source)]
        except KDError:  # timm not installed: its models are simply not listed
            pass
    return specs


def list_models(pattern: str = "*") -> list[str]:
    """The specs whose "SOURCE:NAME" or NAME matches the glob `pattern` (case-insensitive)."""
    pattern = pattern.lower()
    return [s for s in _installed_specs()
            if fnmatchcase(s.lower(), pattern) or fnmatchcase(s.partition(":")[2].lower(), pattern)]


def _closest(name, specs, n=3):
    """Up to n specs whose NAME part is closest to `name`, e.g. for a typo."""
    by_name = {}
    for s in specs:
        by_name.setdefault(s.partition(":")[2], []).append(s)
    return [s for close in difflib.get_close_matches(name, list(by_name), n=n) for s in by_name[close]][:n]


def _listing(lead, names, tail=""):
    # "; closest: a, b, c" -- nothing when difflib found nothing close
    return f"{lead}{', '.join(names)}{tail}" if names else ""


def parse_arch(spec: str) -> tuple[str, str]:
    """(source, name) from "SOURCE:NAME", or one line naming the closest known names. Model code
    (models/user.py) is ("code", the spec as given), by its form only: the file or module is
    imported where the model is built (or by check_arch)."""
    source, colon, name = str(spec).strip().partition(":")
    if not colon:
        close = _closest(source, _installed_specs())
        raise KDError(f"architecture {spec!r} is not SOURCE:NAME{_listing('; did you mean ', close, '?')}; {LIST_HINT}")
    if source not in SOURCES and user.is_code_spec(spec) and _is_code(spec):
        user.split_spec(spec)  # the callable's name is a Python name
        return "code", str(spec).strip()
    if source not in SOURCES:
        close = difflib.get_close_matches(source, SOURCES, n=1)
        raise KDError(f"unknown model source {source!r} in {spec!r}{_listing(' (did you mean ', close, '?)')}; "
                      f"choose from {', '.join(SOURCES)}, or {user.CODE_HINT}")
    names = _names(source, f"architecture {spec!r}")
    base, dot, tag = name.partition(".") if source == "timm" else (name, "", "")  # timm: NAME.TAG
    if base not in names:
        close = _closest(base, [f"{source}:{n}" for n in names])
        raise KDError(f"unknown architecture {spec!r}{_listing('; closest: ', close)}; {LIST_HINT}")
    if dot:
        _check_timm_tag(spec, base, tag)
    return source, name


def _is_code(spec):
    """A file spec, or a module spec whose top-level package is importable; "torchvison:resnet18"
    is a misspelt source, not a module."""
    kind, target, _ = user.split_spec(spec)
    return kind == "file" or user.module_findable(target)


def check_arch(spec: str, kwargs: str | None = None, kwargs_flag: str = "--arch-kwargs") -> None:
    """A spec and its --arch-kwargs, before any work: the name known (zoo), the file or module
    imported and its callable found (model code), the kwargs a JSON object, and none for the
    notebook's models. One line each."""
    source, _ = parse_arch(spec)
    if user.parse_kwargs(kwargs, kwargs_flag) and source == "notebook":
        raise KDError(f"{kwargs_flag}: {spec} takes no keyword arguments (torchvision, timm and model code do)")
    if source == "code":
        user.check_code(spec)


def _check_timm_tag(spec, base, tag):
    """A timm pretrained tag ("a1_in1k" in timm:resnet18.a1_in1k) that timm knows for `base`,
    or one line naming the tag and the closest of those it has."""
    tags = [n.partition(".")[2] for n in _timm(f"architecture {spec!r}").list_pretrained(f"{base}.*")]
    if tag in tags:
        return
    if not tags:
        raise KDError(f"timm:{base} has no pretrained tag {tag!r}: timm knows no pretrained weights for it; "
                      f"give timm:{base}")
    close = difflib.get_close_matches(tag, tags, n=3)
    listed = ", ".join(tags[:8]) + (", ..." if len(tags) > 8 else "")
    raise KDError(f"unknown pretrained tag {tag!r} in {spec!r}{_listing('; closest: ', close)}; "
                  f"timm:{base} has {len(tags)}: {listed}")


# --- building ------------------------------------------------------------------------------

def _check_counts(num_classes, in_chans):
    for what, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise KDError(f"{what} must be a positive integer, not {value!r}")


def adapt_conv_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first convolution's RGB kernels [O,3,kh,kw] for in_chans inputs [O,in_chans,kh,kw], as
    timm's adapt_input_conv does. 1 channel: the sum over R, G, B, so a grey image x gives what
    the RGB kernels give on x repeated over 3 channels. Otherwise: RGB repeated and scaled by
    3/in_chans, keeping the output's scale for inputs of similar statistics per channel."""
    w = weight.float()  # summed in float32, as timm does (fp16 sums lose bits)
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    elif in_chans != 3:
        w = w.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    return w.to(weight.dtype)


def _first_conv(model):
    """(name, module) of the model's input convolution: timm's pretrained_cfg says which; for
    torchvision, the first nn.Conv2d registered (the stem in every classification model)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    named = cfg.get("first_conv")
    named = named[0] if isinstance(named, (tuple, list)) else named
    modules = dict(model.named_modules())
    if isinstance(modules.get(named), nn.Conv2d):
        return named, modules[named]
    return next(((n, m) for n, m in modules.items() if isinstance(m, nn.Conv2d)), (None, None))


def _adapt_input_conv(model, spec, in_chans):
    """Make a 3-channel model take in_chans channels, in place; the note for the log."""
    name, conv = _first_conv(model)
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        raise KDError(f"{spec}: no 3-channel first convolution to adapt to {in_chans} input channels")
    conv.weight = nn.Parameter(adapt_conv_weight(conv.weight.detach(), in_chans))
    conv.in_channels = in_chans
    return f"first convolution {name} adapted from 3 to {in_chans} input channels"


def build_zoo_model(spec: str, num_classes: int, in_chans: int = 3, image_size: Sequence[int] | None = None,
                    kwargs: str | dict[str, Any] | None = None,
                    code: dict[str, Any] | None = None) -> tuple[nn.Module, list[str]]:
    """(model, notes): a fresh, weightless `spec` for num_classes classes and in_chans input
    channels. image_size (H, W) matters to the notebook's models (their linear layers depend on
    it; default 28x28) and to model code that takes input_shape; torchvision and timm models
    pool globally. kwargs: the builder's keyword arguments (JSON text or dict); code: a record's
    "code" (models/user.py), for a model file being rebuilt."""
    source, name = parse_arch(spec)
    _check_counts(num_classes, in_chans)
    kwargs = user.parse_kwargs(kwargs)
    h, w = image_size or notebook.DEFAULT_INPUT_SHAPE[1:]
    if source == "code":
        return user.build_code_model(spec, num_classes, (in_chans, h, w), kwargs, code), []
    if source == "notebook":
        if kwargs:
            raise KDError(f"{spec} takes no keyword arguments (--arch-kwargs)")
        return notebook.build_model(name, num_classes, (in_chans, h, w)), []
    if source == "timm":  # timm adapts in_chans itself
        timm = _timm(f"architecture {spec!r}")
        return _with_kwargs(spec, kwargs, timm.create_model, name, pretrained=False, num_classes=num_classes,
                            in_chans=in_chans), []
    import torchvision.models as tvm
    # no auxiliary classifiers: in training mode they make the forward give a tuple, not the logits
    extra = {"aux_logits": False} if name in AUX_HEADS else {}
    model = _with_kwargs(spec, kwargs, tvm.get_model, name, weights=None, num_classes=num_classes, **extra)
    return model, ([] if in_chans == 3 else [_adapt_input_conv(model, spec, in_chans)])


def _with_kwargs(spec, kwargs, builder, *args, **fixed):
    """builder(*args, **fixed, **kwargs); a keyword it does not take is one line naming the spec."""
    if not kwargs:
        return builder(*args, **fixed)
    try:
        return builder(*args, **fixed, **kwargs)
    except TypeError as e:
        raise KDError(f"{spec} with --arch-kwargs {user.canonical_kwargs(kwargs)}: {_first_line(e)}") from None


# --- the input size a model runs at --------------------------------------------------------

# sizes tried, smallest first above the one refused, to name one a model runs at; with the sizes
# its source says it takes (timm's pretrained_cfg, torchvision's weights: _size_hints)
SIZE_LADDER = (32, 48, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)
_NOT_LOGITS = "not a tensor of logits"
_RUNS = {}  # (spec, C, H, W, train, classes) -> None (runs) or _refusal's: each model and size tried once


def _forward_problem(model, shape, train=False, num_classes=None):
    """Why `model` does not run on zero inputs of `shape` (C, H, W), or None; on the CPU, no grad.
    Evaluation: one input in eval mode (BatchNorm in training mode fails on one 1x1 map).
    Training (train=True): two inputs in training mode, giving a tensor of logits (torchvision's
    inception_v3 gives a tuple with its auxiliary logits); the BatchNorm statistics are put back.
    num_classes: the logits must be [B, num_classes] (model code may build another head)."""
    was = model.training
    buffers = {k: v.clone() for k, v in model.named_buffers()} if train else {}
    model.train(train)
    n = 2 if train else 1
    try:
        with torch.no_grad():
            out = model(torch.zeros(n, *shape))
        if not isinstance(out, torch.Tensor):
            return f"in training mode it gives a {type(out).__name__}, {_NOT_LOGITS}"
        if num_classes is not None and tuple(out.shape) != (n, num_classes):
            return (f"it gives a tensor of shape {list(out.shape)} for {n} input(s), "
                    f"{_NOT_LOGITS} [{n}, {num_classes}] for the data's {num_classes} classes")
        return None
    except Exception as e:  # noqa: BLE001 - too small an input fails as RuntimeError, AssertionError, ValueError...
        return _first_line(e)[:200]
    finally:
        model.train(was)
        with torch.no_grad():
            for k, v in model.named_buffers():
                if k in buffers:
                    v.copy_(buffers[k])


def _runs(model, shape, train, num_classes=None):
    """Why `model` does not evaluate (and, if train, train) on `shape` inputs, or None."""
    return _forward_problem(model, shape, False, num_classes) \
        or (_forward_problem(model, shape, True, num_classes) if train else None)


def _size_hints(model, spec):
    """Input sides the architecture is said to take: timm's pretrained_cfg (min_input_size,
    input_size), torchvision's weights (min_size, crop size)."""
    source, name = parse_arch(spec)
    sides = []
    if source == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        sides += [cfg[k][-1] for k in ("min_input_size", "input_size") if isinstance(cfg.get(k), (tuple, list))]
    elif source == "torchvision":
        import torchvision.models as tvm

        try:
            for w in tvm.get_model_weights(name):
                sides += [min(w.meta.get("min_size", (0, 0))), w.transforms().crop_size[0]]
        except (KeyError, ValueError, AttributeError, TypeError):
            pass
    return [int(s) for s in sides if isinstance(s, Integral) and s > 0]


def check_input_size(model: nn.Module, spec: str, shape: Sequence[int], flag: str | None = None,
                     train: bool = True, num_classes: int | None = None) -> None:
    """Refuse, in one line, a model that does not run on inputs of `shape` (C, H, W), naming a
    size it runs at and the flag that chooses it (e.g. `timm:vit_tiny_patch16_224 does not run
    on 28x28 inputs (...); it needs 224x224: use --image-size 224`); found by forward passes of
    zero inputs at each size tried (smallest first, above the refused one). train: the model will
    be trained, so it must also run in training mode and give a tensor of logits there.
    num_classes: the logits' width the data need (checked where given)."""
    c, h, w = (int(v) for v in shape)
    key = (spec, c, h, w, bool(train), num_classes)
    if key not in _RUNS or user.is_code_spec(spec):  # model code differs by its kwargs and source: tried each time
        _RUNS[key] = _refusal(model, spec, (c, h, w), train, num_classes)
    if _RUNS[key]:
        line, s = _RUNS[key]
        raise KDError(line.format(use=f"use {flag} {s}" if flag else f"give it {s}x{s} inputs"))


def _refusal(model, spec, shape, train, num_classes=None):
    """None if the model runs on `shape`; else (the line, with {use} where the flag goes, and the
    size it runs at)."""
    c, h, w = shape
    problem = _runs(model, shape, train, num_classes)
    if problem is None:
        return None
    sides = sorted(set(SIZE_LADDER) | set(_size_hints(model, spec)))
    side = min(h, w)
    quoted = problem.replace("{", "{{").replace("}", "}}")
    for s in [side] + [s for s in sides if s > side] + [s for s in reversed(sides) if s < side]:
        found = problem if s == side else _runs(model, (c, s, s), train, num_classes)
        if found and _NOT_LOGITS in found:  # no size mends that
            found = found.replace("{", "{{").replace("}", "}}")
            return f"{spec} cannot be trained here: {found} (kd_accel trains models whose forward gives the logits)", s
        if found is None:
            return f"{spec} does not run on {h}x{w} inputs ({quoted}); it needs {s}x{s}: {{use}}", s
    return f"{spec} does not run on {h}x{w} inputs, nor on any size from {sides[0]} to {sides[-1]}: {quoted}", side


# --- weights from a file -------------------------------------------------------------------

def _is_safetensors(path):
    # a safetensors file: an 8-byte little-endian header length, then its JSON header "{...";
    # torch.save's zip starts "PK\x03\x04", its legacy pickle "\x80\x02\x8a\x0a"
    try:
        with open(path, "rb") as f:
            return f.read(9)[8:9] == b"{"
    except OSError as e:
        raise KDError(f"cannot read weights {path}: {e.strerror or e}") from None


def _read_safetensors(path):
    """{name: tensor} of a safetensors file; a kd_accel logits cache is named as what it is."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    kind = file_kind(path)
    if kind and "logits cache" in kind:
        raise KDError(f"{path} is {kind}, not model weights (a cache is read by --logits)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise KDError(f"cannot read weights {path} (truncated or corrupt safetensors?): {_first_line(e)}") from None


# what torch's weights-only unpickler says of a pickle that would run code: a global it does not
# allow ("Unsupported global: GLOBAL x", "unsupported GLOBAL posix.system whose module posix is
# blocked"), or a call or object it would have to make ("reduce for unrecognized function f")
_NEEDS_CODE = (r"GLOBAL (\S+)", r"unrecognized function (.+?)(?: which belongs|$)",
               r"Can only (?:create new object|build) .* but got (.+)$")


def _needs_code(e):
    """What a weights-only refusal says the file needs to run (a global's name), or None."""
    for line in str(e).splitlines():
        for pattern in _NEEDS_CODE:
            m = re.search(pattern, line.strip())
            if m:
                return m[1].rstrip(".")
    return None


def _read_torch(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # never runs the file's code
    except UnpicklingError as e:
        code = _needs_code(e)
        if code:
            raise KDError(f"{path} needs pickled code to load ({code}), which is never run; "
                          "save the model's state_dict() instead") from None
        raise KDError(f"cannot read weights {path}: not a PyTorch weights file (it is {file_kind(path) or 'unknown'}: "
                      f"{_first_line(e)[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise KDError(f"cannot read weights {path} (truncated or corrupt?): {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - bytes that are no pickle fail inside the unpickler in many ways
        raise KDError(f"cannot read weights {path}: not a PyTorch or safetensors file "
                      f"({file_kind(path) or type(e).__name__})") from None


def _unwrap(obj, path):
    """The flat {name: tensor} in what a file holds: a state dict, or a training checkpoint
    with it under "state_dict" or "model"; wrapper prefixes ("module." from DDP) removed."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KDError(f"{path} holds no state dict of tensors (nor one under 'state_dict' or 'model')")
    state = dict(obj)
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


@reads_tensors("torch.save state dict", "safetensors state dict", "training checkpoint")
def read_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """{name: tensor} from a .pth/.pt/.bin (torch.save) or .safetensors file, with one-line
    errors; every tensor finite (parameters and buffers)."""
    path = Path(path)
    if not path.is_file():
        raise KDError(f"weights file not found: {path}" if not path.exists() else f"weights {path} is not a file")
    state = _unwrap(_read_safetensors(path) if _is_safetensors(path) else _read_torch(path), path)
    check_finite(state, path)
    return state


def _adapt_file_conv(model, state, expected, path):
    """A file's 3-channel first-conv kernels [O,3,k,k] adapted, as the model's were, to its
    [O,C,k,k]; the note for the log, or none."""
    name, _ = _first_conv(model)
    key = f"{name}.weight"
    have, want = state.get(key), expected.get(key)
    if have is None or want is None or have.dim() != 4 or have.shape[1] != 3 or want.shape[1] == 3 \
            or have.shape[:1] + have.shape[2:] != want.shape[:1] + want.shape[2:]:
        return []
    c = want.shape[1]
    state[key] = adapt_conv_weight(state[key], c)
    return [f"{path.name}: first convolution {name} weights adapted from 3 to {c} input channels"]


def _classifier(model):
    """The name of the model's class-logits layer: timm's pretrained_cfg says; for torchvision,
    the last Linear or Conv2d registered (fc, classifier.N, heads.head, squeezenet's conv)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    named = cfg.get("classifier")
    if isinstance(named, str):
        return named
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1] if layers else None


def _reset_head(model, state, expected):
    """If the only shape differences are the classifier's class count [N_file,...] vs
    [N_model,...], re-initialise the model's head(s) and put their fresh tensors in `state`
    (the rest still loads strictly); the note for the log, or none."""
    bad = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    heads = sorted({k.rpartition(".")[0] for k in bad})
    counts = {(state[k].shape[0], expected[k].shape[0]) for k in bad}
    only_classes = all(state[k].dim() == expected[k].dim() and state[k].shape[1:] == expected[k].shape[1:] for k in bad)
    modules = [model.get_submodule(h) for h in heads]
    if not bad or not only_classes or len(counts) != 1 or _classifier(model) not in heads \
            or not all(hasattr(m, "reset_parameters") for m in modules):
        return []
    for m in modules:
        m.reset_parameters()
    fresh = model.state_dict()
    state.update({k: fresh[k] for k in fresh if k.rpartition(".")[0] in heads})
    (n_file, n_model), = counts
    note = f"classifier {', '.join(heads)} re-initialised: the file has {n_file} classes, the data {n_model}"
    return [HeadReset(note, n_file, n_model)]


class HeadReset(str):
    """The note (a str, for the log) that load_weights re-initialised the classifier: the
    weights file was for n_file classes, the model is for n_model."""

    def __new__(cls, text: str, n_file: int, n_model: int) -> HeadReset:
        note = super().__new__(cls, text)
        note.n_file, note.n_model = n_file, n_model
        return note


def drop_aux_heads(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Remove from a file's `state` the tensors of auxiliary classifiers (AUX_HEADS: torchvision's
    published inception_v3 and googlenet files hold them) that the model, built without them,
    does not have; the note for the log, or none."""
    heads = {h for names in AUX_HEADS.values() for h in names}
    aux = [k for k in state if k not in expected and k.split(".", 1)[0] in heads]
    for k in aux:
        del state[k]
    return [f"auxiliary classifier {', '.join(sorted({k.split('.', 1)[0] for k in aux}))} of the file not used "
            "(kd_accel trains on the main logits)"] if aux else []


def _fill_bn_counters(state, expected):
    # BatchNorm's num_batches_tracked (torch >= 0.4.1) is absent from older published files
    # such as torchvision's resnet18; BatchNorm fills it in when loading, so it is not "missing"
    for k in expected:
        if k.endswith(".num_batches_tracked") and k not in state:
            state[k] = expected[k].clone()


def load_weights(model: nn.Module, path: Path | str) -> list[str]:
    """Load a weights file into `model`, strictly, in place; notes for the log (a classifier
    re-initialised for another class count, a 3-channel first conv adapted). Any other misfit:
    one line naming the first missing/unexpected key, or tensor with both shapes."""
    path = Path(path)
    state, expected = read_weights(path), model.state_dict()
    _fill_bn_counters(state, expected)
    notes = drop_aux_heads(state, expected) + _adapt_file_conv(model, state, expected, path) \
        + _reset_head(model, state, expected)
    problem = notebook._mismatch(state, expected)
    if problem:
        raise KDError(f"{path}: weights do not fit this {type(model).__name__}: {problem}")
    model.load_state_dict(state)
    return notes


# --- the record of what was built ----------------------------------------------------------

def arch_spec(spec: str, num_classes: int, input_shape: Sequence[int], preprocessing: dict[str, Any] | None = None,
              kwargs: str | dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-able record of what was built, for a checkpoint's metadata: build_from_spec
    rebuilds the same model from it. input_shape (C, H, W) is the model's input (the data's
    channels at the preprocessing's size); in_chans its C; preprocessing: preprocessing.resolve's.
    kwargs (--arch-kwargs, JSON text or dict) are recorded as "kwargs" where there are any; model
    code also records "code", its source file and digest (models/user.py)."""
    source, name = parse_arch(spec)
    c, h, w = notebook.check_input_shape(input_shape)
    _check_counts(num_classes, c)
    record = {"spec": name if source == "code" else f"{source}:{name}", "num_classes": int(num_classes), "in_chans": c,
              "input_shape": [c, h, w], "preprocessing": preprocessing}
    kwargs = user.parse_kwargs(kwargs)
    if kwargs or source == "code":
        record["kwargs"] = kwargs
    if source == "code":
        record["code"] = user.code_record(name)
    return record


def arch_identity(record: Mapping[str, Any]) -> str:
    """What stamps say of a record's architecture: the spec; for model code, its file or module,
    callable and source digest (user.identity), so that changed code is a changed setting."""
    return user.identity(record["spec"], record.get("code")) if "code" in record else record["spec"]


def build_from_spec(record: dict[str, Any] | str | bytes) -> tuple[nn.Module, list[str]]:
    """(model, notes) rebuilt from arch_spec's record (or its JSON text), without weights."""
    if isinstance(record, (str, bytes)):
        try:
            record = json.loads(record)
        except ValueError as e:
            raise KDError(f"architecture record is not JSON: {e}") from None
    if not isinstance(record, dict) or not all(k in record for k in RECORD_KEYS):
        raise KDError(f"architecture record {record!r} needs the keys {', '.join(RECORD_KEYS)}")
    c, h, w = notebook.check_input_shape(record["input_shape"], "architecture record input_shape")
    if record["in_chans"] != c:
        raise KDError(f"architecture record: in_chans {record['in_chans']!r} is not input_shape's {c}")
    return build_zoo_model(record["spec"], record["num_classes"], c, (h, w), record.get("kwargs"), record.get("code"))
