"""Every public function and method of the package is annotated (issue 26): each parameter and
each return, so a reader (and a type checker) knows what goes in and what comes out.

Walks every module of kd_accel; in each, the public functions defined there (not imported) and
the public methods of the public classes defined there. Exempt: `self`/`cls`, dunder methods
other than `__init__`, and `__init__`'s return (always None)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import kd_accel

# Modules excused while a restructuring is under way (a package name covers every module under
# it). Empty since issue 26 annotated every module: every module is checked.
PENDING = set()


def pending(name):
    return any(name == p or name.startswith(p + ".") for p in PENDING)


def package_modules():
    """The name of every module of kd_accel, the package itself included."""
    names = [kd_accel.__name__]
    names += [m.name for m in pkgutil.walk_packages(kd_accel.__path__, kd_accel.__name__ + ".")]
    return sorted(names)


def missing_in(fn, where, skip_first):
    """'WHERE: parameter X' / 'WHERE: return' for each annotation `fn` lacks."""
    sig = inspect.signature(fn)  # a decorated function (functools.wraps) by the one it wraps
    params = list(sig.parameters.values())[1 if skip_first else 0:]
    out = [f"{where}: parameter {p.name!r}" for p in params if p.annotation is inspect.Parameter.empty]
    if fn.__name__ != "__init__" and sig.return_annotation is inspect.Signature.empty:
        out.append(f"{where}: return")
    return out


def methods(cls):
    """(name, function, skip the first parameter) for each public method `cls` defines itself
    (properties by their getter, static and class methods unwrapped), plus __init__."""
    for name, attr in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(attr, staticmethod):
            yield name, attr.__func__, False
        elif isinstance(attr, classmethod):
            yield name, attr.__func__, True
        elif isinstance(attr, property):
            for part in (attr.fget, attr.fset):
                if part is not None:
                    yield name, part, True
        elif inspect.isfunction(attr):
            yield name, attr, True


def missing_annotations(module):
    """Every parameter and return left unannotated in `module`'s own public functions and its
    public classes' own public methods, named as MODULE.QUALNAME."""
    out = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue  # private, or imported from elsewhere (checked where it is defined)
        if inspect.isfunction(obj):
            out += missing_in(obj, f"{module.__name__}.{obj.__qualname__}", skip_first=False)
        elif inspect.isclass(obj) and obj.__qualname__ == name:  # an alias is checked under its own name
            for method, fn, skip_first in methods(obj):
                if getattr(fn, "__module__", None) == module.__name__:  # not one a decorator generated elsewhere
                    out += missing_in(fn, f"{module.__name__}.{obj.__qualname__}.{method}", skip_first)
    return sorted(set(out))


def test_every_public_function_and_method_is_annotated():
    missing = []
    for name in package_modules():
        if not pending(name):
            missing += missing_annotations(importlib.import_module(name))
    assert not missing, f"{len(missing)} annotations missing:\n" + "\n".join(missing)


def test_pending_names_only_modules_that_exist():
    """A module gone (merged, renamed) leaves PENDING with it."""
    names = package_modules()
    gone = [p for p in sorted(PENDING) if not any(n == p or n.startswith(p + ".") for n in names)]
    assert not gone, f"PENDING names modules that no longer exist: {gone}"


def test_the_check_names_each_missing_annotation():
    """The check itself, on a module written to lack each kind of annotation once."""
    module = types.ModuleType("fake")
    exec(
        "from __future__ import annotations\n"
        "from contextlib import contextmanager\n"
        "from os.path import join\n"  # imported: not this module's
        "def ok(a: int, *args: int, b: str = '', **kw: float) -> None: ...\n"
        "def bare(a, *args, b: int = 0, **kw) -> int: ...\n"
        "def no_return(a: int): ...\n"
        "def _private(a): ...\n"
        "@contextmanager\n"  # wrapped (functools.wraps): checked as written
        "def managed(p):\n"
        "    yield p\n"
        "class Public:\n"
        "    def __init__(self, n) -> None: ...\n"
        "    def __repr__(self): ...\n"
        "    def method(self, x: int): ...\n"
        "    @staticmethod\n"
        "    def static(x) -> None: ...\n"
        "    @classmethod\n"
        "    def make(cls, x: int): ...\n"
        "    @property\n"
        "    def size(self): ...\n"
        "    def _hidden(self, y): ...\n"
        "class _Private:\n"
        "    def method(self, x): ...\n",
        module.__dict__)
    assert missing_annotations(module) == sorted([
        "fake.Public.__init__: parameter 'n'",
        "fake.Public.make: return",
        "fake.Public.method: return",
        "fake.Public.size: return",
        "fake.Public.static: parameter 'x'",
        "fake.bare: parameter 'a'",
        "fake.bare: parameter 'args'",
        "fake.bare: parameter 'kw'",
        "fake.managed: parameter 'p'",
        "fake.managed: return",
        "fake.no_return: return",
    ])
