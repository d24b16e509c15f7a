"""torchvision and timm architectures by name, and pretrained weights from a local file.

A spec is "SOURCE:NAME": "torchvision:resnet18", "timm:resnet10t" (timm's NAME may carry a
pretrained tag, "timm:resnet50.a1_in1k", for its preprocessing), or the notebook's own
"notebook:teacher" / "notebook:student". Models are built without weights (nothing is
downloaded); load_weights reads what users have on disk. Builders and loaders return notes,
lines for the log about what was adapted, each said once.
"""
import difflib
import json
import math
import re
from numbers import Integral
from fnmatch import fnmatchcase
from pathlib import Path
from pickle import UnpicklingError

import torch
from torch import nn

from ..errors import KDError, first_line as _first_line
from . import notebook

SOURCES = ("torchvision", "timm", "notebook")
LIST_HINT = "list them with --list-models PATTERN"
# what wrappers put in front of every key: DDP / DataParallel, and torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
RECORD_KEYS = ("spec", "num_classes", "in_chans", "input_shape", "preprocessing")


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


def list_models(pattern="*"):
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


def parse_arch(spec):
    """(source, name) from "SOURCE:NAME", or one line naming the closest known names."""
    source, colon, name = str(spec).strip().partition(":")
    if not colon:
        close = _closest(source, _installed_specs())
        raise KDError(f"architecture {spec!r} is not SOURCE:NAME{_listing('; did you mean ', close, '?')}; {LIST_HINT}")
    if source not in SOURCES:
        close = difflib.get_close_matches(source, SOURCES, n=1)
        raise KDError(f"unknown model source {source!r} in {spec!r}{_listing(' (did you mean ', close, '?)')}; "
                      f"choose from {', '.join(SOURCES)}")
    names = _names(source, f"architecture {spec!r}")
    base = name.split(".", 1)[0] if source == "timm" else name  # timm: NAME.TAG
    if base not in names:
        close = _closest(base, [f"{source}:{n}" for n in names])
        raise KDError(f"unknown architecture {spec!r}{_listing('; closest: ', close)}; {LIST_HINT}")
    return source, name


# --- building ------------------------------------------------------------------------------

def _check_counts(num_classes, in_chans):
    for what, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise KDError(f"{what} must be a positive integer, not {value!r}")


def adapt_conv_weight(weight, in_chans):
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


def build_zoo_model(spec, num_classes, in_chans=3, image_size=None):
    """(model, notes): a fresh, weightless `spec` for num_classes classes and in_chans input
    channels. image_size (H, W) matters only to the notebook's models (their linear layers
    depend on it; default 28x28); torchvision and timm models pool globally."""
    source, name = parse_arch(spec)
    _check_counts(num_classes, in_chans)
    if source == "notebook":
        h, w = image_size or notebook.DEFAULT_INPUT_SHAPE[1:]
        return notebook.build_model(name, num_classes, (in_chans, h, w)), []
    if source == "timm":  # timm adapts in_chans itself
        return _timm(f"architecture {spec!r}").create_model(name, pretrained=False, num_classes=num_classes,
                                                           in_chans=in_chans), []
    import torchvision.models as tvm
    model = tvm.get_model(name, weights=None, num_classes=num_classes)
    return model, ([] if in_chans == 3 else [_adapt_input_conv(model, spec, in_chans)])


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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise KDError(f"cannot read weights {path} (truncated or corrupt safetensors?): {_first_line(e)}") from None


def _read_torch(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # never runs the file's code
    except UnpicklingError as e:
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if code:
            raise KDError(f"{path} needs pickled code to load ({code[1]}), which is never run; "
                          "save the model's state_dict() instead") from None
        raise KDError(f"cannot read weights {path} (not a PyTorch or safetensors file?)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise KDError(f"cannot read weights {path} (truncated or corrupt?): {_first_line(e)}") from None


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


def read_weights(path):
    """{name: tensor} from a .pth/.pt/.bin (torch.save) or .safetensors file, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise KDError(f"weights file not found: {path}" if not path.exists() else f"weights {path} is not a file")
    return _unwrap(_read_safetensors(path) if _is_safetensors(path) else _read_torch(path), path)


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
    return [f"classifier {', '.join(heads)} re-initialised: the file has {n_file} classes, the data {n_model}"]


def _fill_bn_counters(state, expected):
    # BatchNorm's num_batches_tracked (torch >= 0.4.1) is absent from older published files
    # such as torchvision's resnet18; BatchNorm fills it in when loading, so it is not "missing"
    for k in expected:
        if k.endswith(".num_batches_tracked") and k not in state:
            state[k] = expected[k].clone()


def load_weights(model, path):
    """Load a weights file into `model`, strictly, in place; notes for the log (a classifier
    re-initialised for another class count, a 3-channel first conv adapted). Any other misfit:
    one line naming the first missing/unexpected key, or tensor with both shapes."""
    path = Path(path)
    state, expected = read_weights(path), model.state_dict()
    _fill_bn_counters(state, expected)
    notes = _adapt_file_conv(model, state, expected, path) + _reset_head(model, state, expected)
    problem = notebook._mismatch(state, expected)
    if problem:
        raise KDError(f"{path}: weights do not fit this {type(model).__name__}: {problem}")
    model.load_state_dict(state)
    return notes


# --- the record of what was built ----------------------------------------------------------

def arch_spec(spec, num_classes, input_shape, preprocessing=None):
    """A JSON-able record of what was built, for a checkpoint's metadata: build_from_spec
    rebuilds the same model from it. input_shape (C, H, W) is the model's input (the data's
    channels at the preprocessing's size); in_chans its C; preprocessing: preprocessing.resolve's."""
    source, name = parse_arch(spec)
    c, h, w = notebook.check_input_shape(input_shape)
    _check_counts(num_classes, c)
    return {"spec": f"{source}:{name}", "num_classes": int(num_classes), "in_chans": c, "input_shape": [c, h, w],
            "preprocessing": preprocessing}


def build_from_spec(record):
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
    return build_zoo_model(record["spec"], record["num_classes"], c, (h, w))
