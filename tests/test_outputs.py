"""Issue 17, item 1: no output over an input, as a rule for every output flag of every script.

The output flags are found in each script's parser (cli.PARSERS: settings declared with
`output=` and inspect's --plot), and what a run folder receives is found by running the script,
not listed here: so a new output flag, or a new file a script writes, is covered as it comes."""
import shutil

import pytest

from conftest import run_main as run
from kd_accel import cli
from kd_accel.errors import KDError

MAINS = {"train_teacher.py": cli.train_teacher_main, "precompute_logits.py": cli.precompute_main,
         "distill.py": cli.distill_main, "compare.py": cli.compare_main, "inspect_logits.py": cli.inspect_main}
TINY = ["--limit-train", "300", "--limit-test", "50", "--batch-size", "50"]


def test_every_script_is_covered():
    assert set(MAINS) == set(cli.PARSERS)


def output_flags(script, kind=None):
    """[(flag, kind)] of the script's output flags (all, or those naming a file vs a folder)."""
    found = [(a.option_strings[0], a.output) for a in cli.PARSERS[script]()._actions if getattr(a, "output", None)]
    if kind == "folder":
        return [f for f in found if f[1] == "folder"]
    return [f for f in found if f[1] != "folder"] if kind == "file" else found


def test_output_flags_are_declared():
    """The scripts' known output flags carry their kind; inspect's --plot included."""
    assert output_flags("inspect_logits.py") == [("--plot", "png")]
    assert ("--out", "cache") in output_flags("precompute_logits.py")
    for script in ("train_teacher.py", "precompute_logits.py", "distill.py", "compare.py"):
        assert {"--output-dir", "--run-name"} <= {f for f, _ in output_flags(script, "folder")}, script
    for script in ("distill.py", "compare.py"):  # not taken and ignored, nor read as an abbreviation of --output-dir
        with pytest.raises(SystemExit):
            cli.PARSERS[script]().parse_args(["--out", "x"])


@pytest.fixture
def world(tmp_path, mnist_dir, tiny_teacher):
    """Writable copies of every input: the data files, a teacher, a cache made from them."""
    data = tmp_path / "data"
    shutil.copytree(mnist_dir / "MNIST", data / "MNIST")
    teacher = tmp_path / "in" / "teacher.safetensors"
    teacher.parent.mkdir()
    shutil.copy(tiny_teacher, teacher)
    cache = tmp_path / "in" / "cache.safetensors"
    run(cli.precompute_main, ["--data-dir", data, "--teacher", teacher, "--out", cache, *TINY,
                              "--output-dir", tmp_path / "made"])
    return {"data": data, "teacher": teacher, "cache": cache, "tmp": tmp_path}


def script_args(script, w, out_dir):
    """A working command line of each script (tiny), without its output flags."""
    common = ["--data-dir", w["data"], *TINY]
    return {
        "train_teacher.py": [*common, "--epochs", "1", "--output-dir", out_dir],
        "precompute_logits.py": [*common, "--teacher", w["teacher"], "--output-dir", out_dir],
        "distill.py": [*common, "--teacher", w["teacher"], "--epochs", "1", "--output-dir", out_dir],
        "compare.py": [*common, "--teacher", w["teacher"], "--epochs", "1", "--seeds", "0", "--variants", "baseline",
                       "hinton", "--output-dir", out_dir],
        "inspect_logits.py": [w["cache"]],
    }[script]


def inputs_of(script, w):
    """Every file the script reads in script_args."""
    if script == "inspect_logits.py":
        return [w["cache"]]
    data = sorted((w["data"] / "MNIST" / "raw").iterdir())
    return data + ([w["teacher"]] if script != "train_teacher.py" else [])


def snapshot(paths):
    return {p: p.read_bytes() for p in paths}


def refused(main, args, *keep):
    before = snapshot(keep)
    with pytest.raises(KDError) as e:
        run(main, args)
    assert snapshot(keep) == before
    return str(e.value)


FILE_FLAGS = [(s, f) for s in MAINS for f, _ in output_flags(s, "file")]


@pytest.mark.parametrize("script,flag", FILE_FLAGS)
def test_a_file_output_flag_never_lands_on_an_input_or_a_foreign_file(script, flag, world):
    main, args = MAINS[script], script_args(script, world, world["tmp"] / "run")
    for victim in inputs_of(script, world):
        message = refused(main, [*args, flag, victim], *inputs_of(script, world))
        assert "which this run reads" in message, message
    foreign = world["tmp"] / "notes.txt"
    foreign.write_text("mine\n")
    assert "exists and is not" in refused(main, [*args, flag, foreign], foreign)
    assert "is a folder" in refused(main, [*args, flag, world["tmp"] / "in"])
    (world["tmp"] / "link").symlink_to(world["cache"] if script == "inspect_logits.py" else world["teacher"])
    assert "which this run reads" in refused(main, [*args, flag, world["tmp"] / "link"], *inputs_of(script, world))


def test_inspect_plot_over_its_cache_is_refused_and_a_png_is_replaced(world, capsys):
    """The instance the issue found: --plot CACHE replaced the cache with a PNG."""
    cache = world["cache"]
    refused(cli.inspect_main, [cache, "--plot", cache], cache)
    png = world["tmp"] / "t.png"
    run(cli.inspect_main, [cache, "--plot", png])  # its own kind: written, then replaced
    run(cli.inspect_main, [cache, "--plot", png, "--temperatures", "1", "2"])
    assert png.read_bytes().startswith(b"\x89PNG")


FOLDER_FLAGS = [(s, f) for s in MAINS for f, _ in output_flags(s, "folder")]


def written(main, args, folder):
    """What a script writes in its run folder (its folders, and the files in them, as relative
    paths): run twice (the second moves a result aside)."""
    run(main, args)
    run(main, args)
    return sorted({str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.parent == folder})


@pytest.mark.slow
@pytest.mark.parametrize("script,flag", FOLDER_FLAGS)
def test_a_run_folder_never_receives_an_output_over_an_input_or_a_foreign_file(script, flag, world, monkeypatch):
    """Every name the script writes in its folder: a foreign file there is refused and kept, and
    an input placed there (the teacher under that name) is refused and kept."""
    main, tmp = MAINS[script], world["tmp"]
    monkeypatch.chdir(tmp)

    def args_for(folder):
        args = script_args(script, world, folder)
        if flag == "--run-name":  # runs/<name> under the working folder
            i = args.index("--output-dir")
            return args[:i] + ["--run-name", folder.name] + args[i + 2:]
        return args

    def folder(n):
        return tmp / "runs" / f"r{n}"

    names = written(main, args_for(folder(0)), folder(0))
    assert names, script
    for n, name in enumerate(names, start=1):
        d = folder(n)
        (d / name).parent.mkdir(parents=True)
        (d / name).write_text("precious\n")
        assert "refusing to overwrite" in refused(main, args_for(d), d / name) or "is a folder" in \
            refused(main, args_for(d), d / name), (script, name)
        if script == "train_teacher.py":
            continue  # it reads no file a user names but the data
        shutil.rmtree(d)
        d.mkdir()
        placed = (d / name) if (d / name).parent != d or name != "previous" else (d / name / "teacher.safetensors")
        placed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(world["teacher"], placed)
        args = args_for(d)
        args[args.index("--teacher") + 1] = placed
        message = refused(main, args, placed)
        assert "which this run reads" in message or "deletes and makes anew" in message, (script, name, message)
