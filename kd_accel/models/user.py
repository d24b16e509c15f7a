"""Model code of one's own: `--arch module.path:callable` or `--arch path/to/file.py:callable`,
with `--arch-kwargs '{"depth": 20}'` (a JSON object) passed to the callable.

A spec is model code when its part before the first colon is not one of the zoo's sources
(torchvision, timm, notebook) and its part before the last colon is a file (ends with .py or
holds a "/") or a dotted module path. The callable (a function or a class; "Outer.inner"
reaches an attribute of an attribute) is called with the kwargs plus, where its signature names
them, num_classes= (the data's class count), in_channels= (C) and input_shape= ((C, H, W), the
model's input); a callable taking only **kwargs gets num_classes. It must return an nn.Module
whose forward gives the logits [B, num_classes].

What the record of a built model holds beyond the zoo's (zoo.arch_spec): "kwargs" (the object,
keys sorted) and "code": {"file": the source file's absolute path, "sha256": its bytes'
digest}. The spec is kept as given. A model file is rebuilt from the absolute path, or, when that
file is gone, from the spec's path as given, relative to the working directory (a moved project);
a source whose bytes differ from the recorded digest is said in one line on stderr and used as
it is now. Only the named file is hashed, not what it imports. A file imports the modules beside
it as a script would (its folder is appended to sys.path); a module spec is looked for in the
installed packages, then the working directory.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import KDError, first_line

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

ZOO_SOURCES = ("torchvision", "timm", "notebook")
# what kd_accel passes itself (the data say them); --arch-kwargs may not set them
PASSED = ("num_classes", "in_channels", "input_shape", "in_chans")
CODE_HINT = "model code is module.path:callable or path/to/file.py:callable"
_FILES: dict[tuple[str, str], ModuleType] = {}  # (absolute path, sha256) -> the file imported once
_WARNED: set[tuple[str, str, str]] = set()


# --- what a spec names -----------------------------------------------------------------------

def _kind(target: str) -> str | None:
    if target.endswith(".py") or "/" in target or os.sep in target:
        return "file"
    if target and all(part.isidentifier() for part in target.split(".")):
        return "module"
    return None


def is_code_spec(spec: str) -> bool:
    """Whether `spec` names model code rather than a zoo model (by its form only)."""
    spec = str(spec).strip()
    source, colon, _ = spec.partition(":")
    return bool(colon) and source not in ZOO_SOURCES and _kind(spec.rpartition(":")[0]) is not None


def split_spec(spec: str) -> tuple[str, str, str]:
    """(kind "file" or "module", the file or module, the callable's name) of a code spec, or one
    line saying what is wrong with it."""
    target, _, name = str(spec).strip().rpartition(":")
    kind = _kind(target)
    if kind is None:
        raise KDError(f"architecture {spec!r}: {CODE_HINT}")
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise KDError(f"architecture {spec!r}: {name!r} after the last colon is not a Python name; {CODE_HINT}")
    return kind, target, name


def _on_path(folder: str) -> None:
    # appended, so that nothing installed is shadowed
    if folder not in sys.path:
        sys.path.append(folder)


def _cwd_on_path() -> None:
    # module specs import as `python -m` would: installed packages first, then the working
    # directory (launch/distill.py puts its own folder first on sys.path, not the cwd)
    _on_path(os.getcwd())


def module_findable(target: str) -> bool:
    """Whether the top-level package of a dotted module path can be imported (nothing is run)."""
    _cwd_on_path()
    try:
        return importlib.util.find_spec(target.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


# --- the source and its digest ---------------------------------------------------------------

def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes (64 hex digits)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _import_file(spec, path):
    """The module `path` (an existing .py file) defines, imported once per content."""
    path = Path(path).resolve()
    digest = file_sha256(path)
    if (str(path), digest) in _FILES:
        return _FILES[str(path), digest]
    name = f"_kd_accel_code_{path.stem}_{digest[:12]}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise KDError(f"{spec}: {path} cannot be imported as Python (is it a .py file?)")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # what dataclasses and pickle look a class's module up by
    _on_path(str(path.parent))  # its own imports of the modules beside it, as a script's
    try:
        loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code fails in any way
        del sys.modules[name]
        raise KDError(f"{spec}: {path} fails to import: {type(e).__name__}: {first_line(e)}") from None
    _FILES[str(path), digest] = module
    return module


def _import_module(spec, target):
    _cwd_on_path()
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and (target == e.name or target.startswith(e.name + ".")):
            raise KDError(f"{spec}: no module named {e.name!r} (installed, or under the working directory "
                          f"{os.getcwd()}); {CODE_HINT}") from None
        raise KDError(f"{spec}: module {target} fails to import: ModuleNotFoundError: {first_line(e)}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code fails in any way
        raise KDError(f"{spec}: module {target} fails to import: {type(e).__name__}: {first_line(e)}") from None


def _file_path(spec, target, recorded):
    """The source file of a file spec: the recorded absolute path while it exists, else the
    spec's path (relative to the working directory)."""
    for candidate in ([recorded] if recorded else []) + [target]:
        if Path(candidate).is_file():
            return Path(candidate)
    where = f" (recorded as {recorded})" if recorded and recorded != target else ""
    raise KDError(f"{spec}: model code {target} not found{where}")


def _module_of(spec, recorded_file=None):
    kind, target, _ = split_spec(spec)
    if kind == "file":
        return _import_file(spec, _file_path(spec, target, recorded_file))
    return _import_module(spec, target)


def _callable_in(spec, module):
    """The callable `spec` names in its imported module, or one line: not there, not callable."""
    _, target, name = split_spec(spec)
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KDError(f"{spec}: {target} has no {name!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise KDError(f"{spec}: {name} is a {type(obj).__name__}, not a callable that builds a model")
    return obj


def check_code(spec: str) -> None:
    """Import the spec's file or module and find its callable, before any work: a file that fails
    to import, a name that is not there, or not callable, is one line naming the spec."""
    _callable_in(spec, _module_of(spec))


def _source(module):
    """The file a module was imported from (None for one without, e.g. a namespace package)."""
    origin = getattr(module, "__file__", None)
    return Path(origin).resolve() if origin and Path(origin).is_file() else None


def code_record(spec: str) -> dict[str, str | None]:
    """{"file": the source's absolute path, "sha256": its digest} for a record (None, None for a
    module without a file)."""
    kind, target, _ = split_spec(spec)
    path = _file_path(spec, target, None).resolve() if kind == "file" else _source(_import_module(spec, target))
    return {"file": str(path) if path else None, "sha256": file_sha256(path) if path else None}


def identity(spec: str, code: dict[str, Any] | None) -> str:
    """What stamps say of model code: the file's name (not its folder: the same file by another
    path is no change) or the module, the callable, and the source's digest, so that changed
    code is a changed setting: "nets.py:make (source sha256 0123456789abcdef)"."""
    kind, target, name = split_spec(spec)
    where = Path(target).name if kind == "file" else target
    digest = (code or {}).get("sha256")
    return f"{where}:{name} (source sha256 {digest[:16] if digest else 'unknown'})"


# --- the keyword arguments -------------------------------------------------------------------

def parse_kwargs(text: str | dict[str, Any] | None, flag: str = "--arch-kwargs") -> dict[str, Any]:
    """The kwargs object of a JSON text (or a dict, as a record holds it), keys sorted; {} for
    none. Not JSON, not an object, or a key kd_accel passes itself: one line naming `flag`."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        value = text
    else:
        try:
            value = json.loads(text)
        except ValueError as e:
            raise KDError(f"{flag} {text!r} is not JSON: {first_line(e)}") from None
    if not isinstance(value, dict):
        raise KDError(f"{flag} {text!r} is not a JSON object ('{{\"name\": value, ...}}')")
    taken = sorted(set(value) & set(PASSED))
    if taken:
        raise KDError(f"{flag} sets {', '.join(taken)}: kd_accel passes the data's class count and input shape "
                      f"itself (num_classes, in_channels, input_shape)")
    return {k: value[k] for k in sorted(value)}


def canonical_kwargs(kwargs: dict[str, Any] | None) -> str | None:
    """One JSON text per set of kwargs (keys sorted, no spaces), for stamps; None for none."""
    return json.dumps(kwargs, sort_keys=True, separators=(",", ":")) if kwargs else None


def _offered(fn, num_classes, input_shape):
    """What of num_classes, in_channels and input_shape the callable's signature names (a
    **kwargs catch-all gets num_classes, as torchvision's and timm's builders take it)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing
        return {}
    offered = {"num_classes": num_classes, "in_channels": input_shape[0], "input_shape": tuple(input_shape)}
    named = {k: v for k, v in offered.items() if k in params
             and params[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    if "num_classes" not in named and any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        named["num_classes"] = num_classes
    return named


def _warn_changed(spec, code, now):
    old = code.get("sha256")
    key = (spec, str(old), str(now))
    if old and now and old != now and key not in _WARNED:
        _WARNED.add(key)
        print(f"kd_accel: warning: {spec}: the model code {code.get('file')} changed since the model was saved "
              f"(source sha256 {old[:16]} -> {now[:16]}); built from the code as it is now", file=sys.stderr,
              flush=True)


def build_code_model(spec: str, num_classes: int, input_shape: Sequence[int], kwargs: dict[str, Any] | None = None,
                     code: dict[str, Any] | None = None) -> nn.Module:
    """A fresh model from the callable `spec` names, for num_classes classes and inputs
    input_shape (C, H, W). `code`: what a record says of the source (code_record's), for a
    model file being rebuilt: its file is preferred, and a changed digest is warned of."""
    module = _module_of(spec, (code or {}).get("file"))
    fn = _callable_in(spec, module)
    if code:
        source = _source(module)
        _warn_changed(spec, code, source and file_sha256(source))
    kwargs = parse_kwargs(kwargs)
    args = {**kwargs, **_offered(fn, num_classes, input_shape)}
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    try:
        model = fn(**args)
    except Exception as e:  # noqa: BLE001 - the user's code fails in any way
        raise KDError(f"{spec}: {split_spec(spec)[2]}({shown}) raised {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise KDError(f"{spec}: {split_spec(spec)[2]}({shown}) returned a {type(model).__name__}, "
                      "not a torch.nn.Module")
    return model

