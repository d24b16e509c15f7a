"""Recipe files: `--config FILE.yaml` on every launch script, and the `recipe.yaml` each run writes.

A recipe file is a YAML mapping whose keys are a script's flags without the leading dashes
(`teacher-epochs: 3`, `batch_size: 64`, `preset: notebook`) and whose values are what the flag
takes (a list for a flag that takes several). cli.parse layers it: built-in defaults < data-set
defaults < preset < the file < the command line. Every value goes through the flag's own type,
choices and declared bounds (config.check_setting), so a file can hold nothing the command line
would refuse, and each refusal is one line naming the file and the key.

The machinery reads the parser's actions, not a list of settings: a setting declared in
config.py is a flag (add_flags), hence a key, with nothing to add here. compare.py's variants
(study.parse_variant) convert their `key=value` settings through the same `flag_value`."""
from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .config import GROUPS, check_setting, flag_fields
from .errors import KDError
from .io import atomic_path

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from .config import Groups

# flags that act (print and exit) or name the file itself, rather than set something
NOT_SETTINGS = ("help", "config", "list_models")
# recorded nowhere in a recipe: where a run writes and whether it continues one, not what it
# trains (the outputs flags, declared output=..., are left out as well: recipe_of)
NOT_RECORDED = ("resume",)
HEADER = "# kd_accel recipe"  # how outputs.check knows a recipe file it may replace


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE.yaml",
                        help="a recipe file: YAML 'flag-name: value' lines (as a run's recipe.yaml); flags given on "
                             "the command line win")


def setting_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The parser's actions a recipe may set, in the order --help lists them."""
    for action in parser._actions:
        if action.option_strings and action.dest not in NOT_SETTINGS:
            yield action


def key_of(action: argparse.Action) -> str:
    """The key a recipe writes for a flag: its first long name without the dashes (--teacher-epochs:
    teacher-epochs)."""
    return next(s for s in action.option_strings if s.startswith("--"))[2:]


def _normal(key: object) -> str:
    return str(key).lstrip("-").replace("_", "-")


def by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """{every long name of every setting, dashed: its action} (--arch and --student-arch both)."""
    return {s[2:]: a for a in setting_actions(parser) for s in a.option_strings if s.startswith("--")}


def declared(groups: Groups) -> dict[str, tuple[str, str]]:
    """{flag dest: (config group, field name)} of the settings `groups` gives flags to, so a
    value from a file is bounds-checked as the setting declares (train_teacher.py's epochs are
    the teacher's)."""
    out = {}
    for group, prefix in groups.items():
        own = GROUPS[group][1] if prefix is None else prefix
        out.update({own + f.name: (group, f.name) for _, f, _ in flag_fields(group)})
    return out


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice (PyYAML keeps the last in silence)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str) -> dict[Any, Any]:
    """The mapping a recipe file holds; one line for a file that cannot be read or is not one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise KDError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise KDError(f"--config {path}: not a UTF-8 text file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise KDError(f"--config {path}: not valid YAML: {getattr(e, 'problem', None) or e}{where}") from None
    if data is None:  # an empty file, or comments only: no settings
        return {}
    if not isinstance(data, dict):
        raise KDError(f"--config {path}: must be a YAML mapping of flag names to values ('lr: 0.1' lines), "
                      f"not a {type(data).__name__}")
    return data


def read_config(parser: argparse.ArgumentParser, path: str, groups: Groups) -> dict[str, Any]:
    """The settings of recipe file `path`, by flag dest, each converted and checked as the flag
    would be (KDError, one line, naming the file and the key)."""
    actions, bounds, values, keys = by_key(parser), declared(groups), {}, {}
    for key, raw in load_yaml(path).items():
        action = actions.get(_normal(key))
        if action is None:
            raise KDError(unknown_key(path, key, actions))
        if action.dest in keys:
            raise KDError(f"--config {path}: {keys[action.dest]!r} and {key!r} both set --{key_of(action)}; keep one")
        keys[action.dest] = key
        values[action.dest] = flag_value(action, raw, f"--config {path}: {key}", bounds.get(action.dest))
    return values


def unknown_key(path: str, key: object, actions: Mapping[str, argparse.Action]) -> str:
    close = difflib.get_close_matches(_normal(key), list(actions), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "the keys are this script's flags (see --help)"
    return f"--config {path}: unknown setting {key!r}; {hint}"


def flag_value(action: argparse.Action, value: Any, where: str, setting: tuple[str, str] | None = None) -> Any:
    """`value` (from YAML, or text from a compare variant) as flag `action` would parse it: its
    type, choices, count and the declared bounds of its `setting` (group, name); None only where
    the flag's own default is None."""
    if value is None:
        if action.default is None:
            return None
        raise KDError(f"{where}: needs a value (its default is {action.default!r}), got null")
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        return _bool(value, where)
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        items = value.split() if isinstance(value, str) else value if isinstance(value, list) else [value]
        if action.nargs == "+" and not items and action.default != []:  # [] is e.g. --export's default: none
            raise KDError(f"{where}: needs at least one value")
        out = [_scalar(action, item, where) for item in items]
        checked = out
    else:
        out = _scalar(action, value, where)
        checked = [out]
    if setting:
        try:
            for item in checked:
                check_setting(*setting, item, where)
        except ValueError as e:
            raise KDError(str(e)) from None
    return out


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _bool(value, where):
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE + _FALSE:
        return text in _TRUE
    raise KDError(f"{where}: must be true or false, got {value!r}")


def _scalar(action, value, where):
    if isinstance(value, bool):  # YAML reads yes/no/on/off/true/false as booleans
        raise KDError(f"{where}: got the YAML boolean {value}, which this flag does not take (quote text such as "
                      f"'no' or 'off')")
    if isinstance(value, list):
        raise KDError(f"{where}: takes one value, got a list")
    # a mapping for a flag that takes JSON text (e.g. keyword arguments); numbers and text as
    # their text: str() of a float is its shortest exact form, so the flag's type reads it back
    text = json.dumps(value) if isinstance(value, dict) else str(value)
    kind = action.type or str
    try:
        out = kind(text)
    except KDError as e:
        raise KDError(f"{where}: {e}") from None
    except argparse.ArgumentTypeError as e:
        raise KDError(f"{where}: {e}") from None
    except (TypeError, ValueError):
        raise KDError(f"{where}: invalid {getattr(kind, '__name__', 'value')} value {value!r}") from None
    if action.choices is not None and out not in action.choices:
        shown = ", ".join(map(str, action.choices))
        raise KDError(f"{where}: invalid choice {value!r} (choose from {shown})")
    return out


def recipe_of(parser: argparse.ArgumentParser, args: Mapping[str, Any]) -> dict[str, Any]:
    """{key: value} of every setting of the parser as `args` (parsed, by dest) resolved it, less
    where the run wrote and whether it resumed (NOT_RECORDED, the outputs flags): what
    `--config` takes back to make the same weights."""
    return {key_of(a): _plain(args[a.dest]) for a in setting_actions(parser)
            if a.dest in args and a.dest not in NOT_RECORDED and not getattr(a, "output", None)}


def _plain(value):
    """A value YAML's safe dumper writes as what the flag takes back (tuples as lists, paths as text)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value


def write_recipe(path: Path, script: str, recipe: Mapping[str, Any]) -> None:
    """The run's recipe as YAML, atomically, under a header saying how to re-run it."""
    head = (f"{HEADER} of {script}.py: every setting as this run resolved it (built-in defaults < data-set "
            "defaults < preset < --config < command line).\n"
            f"# Re-run it: python launch/{script}.py --config {path.name} --output-dir NEW_FOLDER\n"
            "# Not recorded: where the run wrote (--output-dir, --run-name, --out) and --resume.\n")
    # one 'key: value' line per setting, lists and mappings inline ([150, 180, 210])
    body = "".join(yaml.safe_dump({key: value}, default_flow_style=None if isinstance(value, (list, dict)) else False,
                                  allow_unicode=True, width=1000) for key, value in recipe.items())
    with atomic_path(path) as tmp:
        tmp.write_text(head + body, encoding="utf-8")


def recipe_file(script: str) -> str:
    """recipe.yaml (distill.py, beside config.json) or recipe.<script>.yaml (as config.<script>.json)."""
    return "recipe.yaml" if script == "distill" else f"recipe.{script}.yaml"
