"""Issue 28, items 2, 3 and 6: the student exported (ONNX, torch.export) and checked, its model card,
the deployment report in metrics.json and the summary, and the saved weights loaded without kd_accel."""
import json

import onnx  # the test extra installs onnx, onnxscript and onnxruntime: a missing one fails, never skips
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from conftest import cli_error, run_main, run_script
from kd_accel import cli, export
from kd_accel.deploy import BATCHES, LATENCY_ENV, add_report, headline
from kd_accel.models import arch_spec, build_zoo_model, load_model, save_model
from kd_accel.reporting import DEPLOY_COLUMNS, deployment_table, summary_table

CIFAR_PREP = {"image_size": [32, 32], "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
              "interpolation": "bilinear", "resize_size": 36, "source": "test"}
ROLES = ("teacher", "student", "baseline")


def saved(tmp_path, spec, shape, prep=None, seed=0):
    """A random `spec` for 10 classes and inputs `shape` (C, H, W), saved as kd_accel saves a
    student (models.save_model with its record)."""
    torch.manual_seed(seed)
    model, _ = build_zoo_model(spec, 10, shape[0], shape[1:])
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / f"{spec.split(':')[1]}.safetensors"
    save_model(model.eval(), path, "student", 10, record=arch_spec(spec, 10, shape, prep), phase="student",
               class_names=json.dumps([f"c{i}" for i in range(10)]))
    return path


def ort_logits(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])


def torch_logits(path, x):
    model, _ = load_model(path)
    with torch.no_grad():
        return model.eval()(x)


def test_a_tiny_run_reports_deployment_and_its_student_exports_with_a_card(tmp_path, mnist_dir, tiny_teacher,
                                                                           monkeypatch, capsys):
    monkeypatch.setenv(LATENCY_ENV, "0.01")  # the shape of the report, not its values: minimal repeats
    run = tmp_path / "run"
    # one command: the run, its deployment report, and the student exported and checked (--export)
    run_main(cli.distill_main, ["--data-dir", mnist_dir, "--teacher", tiny_teacher, "--limit-train", "200",
                                "--limit-test", "100", "--epochs", "1", "--output-dir", run, "--export", "onnx", "pt2"])
    metrics = json.loads((run / "metrics.json").read_text())
    caption = summary_table(metrics).caption
    assert "the student keeps" in caption and "x its speed (batch 1;" in caption, caption
    table = deployment_table(metrics)
    assert [c.header for c in table.columns] == list(DEPLOY_COLUMNS) and table.row_count == 3
    for role in ROLES:
        cost = metrics[role]["deployment"]
        assert cost["flops"] > 0 and cost["params"] == metrics[role]["params"] and cost["file_bytes"] > 0, role
        assert sorted(cost["latency"]) == [f"batch_{b}" for b in BATCHES]
        assert all(t["median_ms"] > 0 and t["repeats"] >= 3 for t in cost["latency"].values()), cost
    assert metrics["teacher"]["deployment"]["flops"] > 10 * metrics["student"]["deployment"]["flops"]
    report = metrics["deployment"]
    assert report["machine"]["device"] == "cpu" and isinstance(report["machine"]["cpu_flags"], list)
    vs = report["student_vs_teacher"]
    assert vs["accuracy_kept_pct"] == pytest.approx(100 * metrics["student"]["test_accuracy"]
                                                    / metrics["teacher"]["test_accuracy"])
    assert set(vs["speedup"]) == {f"batch_{b}" for b in BATCHES} and vs["flops_ratio"] > 10

    # the student: ONNX and torch.export, checked, and its card from the run folder, in RUN/export/
    out = run / "export"
    printed = capsys.readouterr().out
    assert printed.count("max abs difference") == 2 and f"wrote {out / 'README.md'} (model card)" in printed, printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "student.onnx", "student.pt2"]
    assert "\nexport: [onnx, pt2]\n" in (run / "recipe.yaml").read_text()  # a re-run of the recipe exports too
    x = torch.rand(3, 1, 28, 28)
    want = torch_logits(run / "student.safetensors", x)
    assert torch.allclose(ort_logits(out / "student.onnx", x), want, atol=1e-4)
    props = {p.key: p.value for p in onnx.load(str(out / "student.onnx")).metadata_props}
    assert props["arch"] == "notebook:student" and props["input_shape"] == "1,28,28" and props["mean"] == "none"
    assert json.loads(props["preprocessing"])["image_size"] == [28, 28] and props["dataset"] == "mnist"
    assert float(props["test_accuracy"]) == metrics["student"]["test_accuracy"]
    assert torch.allclose(torch.export.load(str(out / "student.pt2")).module()(x), want, atol=1e-5)
    card = (out / "README.md").read_text()
    for words in ("# distilled student: `notebook:student`", "student.onnx", "1 channel (grey)", "data: mnist",
                  "hinton loss, T=4", "| teacher |", "**(this model)**", "| baseline student", "The student keeps",
                  "Gain of the distilled student over the baseline", "CPU thread(s)"):
        assert words in card, (words, card)


@pytest.mark.parametrize("spec,shape,prep", [
    pytest.param("torchvision:resnet18", (3, 32, 32), CIFAR_PREP, marks=pytest.mark.slow),  # 3.7 s; timm's is quick
    ("timm:resnet10t", (1, 28, 28), None)])
def test_zoo_models_export_check_and_load_without_kd_accel(spec, shape, prep, tmp_path, monkeypatch, capsys):
    """torchvision (3 channels, normalised, its weights as ONNX external data) and timm (1 channel):
    exported and checked in onnxruntime at another batch than the export's; the saved file loads
    into the library's own model with plain load_state_dict (docs/deploy.md)."""
    path = saved(tmp_path, spec, shape, prep)
    if spec.startswith("torchvision"):
        monkeypatch.setattr(export, "ONNX_INLINE_BYTES", 0)  # the >2 GiB path: weights in FILE.data beside it
    run_main(export.export_main, [path, "--onnx", tmp_path / "out" / "m.onnx", "--check"])
    assert "onnxruntime: max abs difference" in capsys.readouterr().out
    x = torch.randn(5, *shape)
    want = torch_logits(path, x)
    assert torch.allclose(ort_logits(tmp_path / "out" / "m.onnx", x), want, atol=1e-4)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "out" / "m.onnx")).metadata_props}
    assert json.loads(props["class_names"])[3] == "c3" and props["arch"] == spec
    card = (tmp_path / "out" / "README.md").read_text()
    if prep:
        assert (tmp_path / "out" / "m.onnx.data").is_file()
        assert json.loads(props["mean"]) == prep["mean"] and props["resize_size"] == "36"
        assert "centre-crop 32x32" in card and "std [0.25, 0.24, 0.26]" in card
    assert "classes: 10: c0, c1" in card and "no metrics.json of its run" in card

    # without kd_accel: the library's own constructor and load_state_dict, strictly (docs/deploy.md)
    if spec.startswith("torchvision"):
        import torchvision
        plain = torchvision.models.resnet18(num_classes=10)
    else:
        import timm
        plain = timm.create_model("resnet10t", num_classes=10, in_chans=1)
    plain.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), want)


def test_a_grey_torchvision_model_loads_with_its_first_convolution_rebuilt(tmp_path):
    """kd_accel adapts torchvision's 3-channel stem to 1-channel data; docs/deploy.md rebuilds it."""
    import torchvision

    path = saved(tmp_path, "torchvision:resnet18", (1, 28, 28))
    plain = torchvision.models.resnet18(num_classes=10)
    plain.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    plain.load_state_dict(load_file(str(path)))
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), torch_logits(path, x))


@pytest.mark.parametrize("budget", ["0", "soon"])
def test_latency_skipped_by_its_budget_or_a_bad_one_keeps_the_rest_of_the_report(budget, tmp_path, monkeypatch):
    teacher, student = (saved(tmp_path / role, f"notebook:{role}", (1, 28, 28)) for role in ("teacher", "student"))
    monkeypatch.setenv(LATENCY_ENV, budget)
    metrics = {"teacher": {"test_accuracy": 90.0}, "student": {"test_accuracy": 81.0}, "baseline": None}
    add_report(metrics, {"teacher": teacher, "student": student, "baseline": None}, "cpu")
    assert metrics["student"]["deployment"]["latency"] is None and metrics["baseline"] is None
    vs = metrics["deployment"]["student_vs_teacher"]
    assert vs["speedup"] is None and vs["accuracy_kept_pct"] == pytest.approx(90.0) and vs["flops_ratio"] > 10
    assert headline(metrics).startswith("the student keeps 90.0% of the teacher's accuracy with ")
    assert ("latency_skipped" in metrics["deployment"]) == (budget == "soon")


def test_export_refusals_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    path = saved(tmp_path, "notebook:student", (1, 28, 28))
    out = tmp_path / "out"
    # a check above the tolerance: an exported file off by 1e-3
    monkeypatch.setattr(export, "_onnxruntime", lambda p: lambda x: torch_logits(path, x) + 1e-3)
    err = cli_error(export.export_main, [path, "--onnx", out / "m.onnx", "--check"], capsys)
    assert "above --tolerance 0.0001; not written" in err, err
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.undo()
    (tmp_path / "notes.txt").write_text("not a model")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my own readme\n")
    cases = [
        ([tmp_path / "notes.txt", "--onnx", out / "a.onnx"], "cannot read checkpoint"),
        ([path, "--onnx", path], "is the weights file being exported"),
        ([path], "nothing to export"),
        ([path, "--onnx", out / "a.onnx", "--check", "--tolerance", "nan"], "--tolerance must be"),
        ([path, "--onnx", mine / "a.onnx"], "README.md exists and is not a kd_accel model card"),
        ([path, "--pt2", tmp_path / "notes.txt" / "m.pt2", "--no-card"], "cannot create folder"),
    ]
    for argv, words in cases:
        assert words in cli_error(export.export_main, argv, capsys), argv
    # distill.py --export: the same refusals before any work (a user's README.md where the card goes)
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "README.md").write_text("# my own readme\n")
    err = cli_error(cli.distill_main, ["--output-dir", run, "--export", "pt2"], capsys)
    assert f"--export {run / 'export' / 'README.md'} exists and is not a kd_accel model card" in err, err
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert "pip install 'kd_accel[export]'" in cli_error(export.export_main, [path, "--onnx", out / "a.onnx"], capsys)
    assert "pip install 'kd_accel[export]'" in cli_error(cli.distill_main, ["--output-dir", run, "--export", "onnx"],
                                                         capsys)
    assert not out.exists() or not any(out.iterdir())
    assert [p.name for p in mine.iterdir()] == ["README.md"]
    assert sorted(p.name for p in run.rglob("*")) == ["README.md", "export"]  # nothing trained, nothing written


def test_a_distill_export_failing_its_check_keeps_the_run_and_writes_no_export(tmp_path, mnist_dir, tiny_teacher,
                                                                                monkeypatch, capsys):
    """docs/deploy.md: the export runs after metrics.json is written, so a failed export (here its
    onnxruntime check off by 1e-3) is one line and loses none of the result."""
    monkeypatch.setattr(export, "_onnxruntime", lambda p: lambda x: torch_logits(run / "student.safetensors", x) + 1e-3)
    run = tmp_path / "run"
    err = cli_error(cli.distill_main, ["--data-dir", mnist_dir, "--teacher", tiny_teacher, "--limit-train", "100",
                                       "--limit-test", "50", "--epochs", "1", "--no-baseline", "--output-dir", run,
                                       "--export", "onnx"], capsys)
    assert "above --tolerance 0.0001; not written" in err, err
    assert (run / "metrics.json").is_file() and (run / "student.safetensors").is_file()
    assert not (run / "export").exists() or not any((run / "export").iterdir())


@pytest.mark.slow  # a process: the launch script's imports and its run_cli wrapper, as a user runs it
def test_the_launch_script_exports_and_refuses_in_one_line(tmp_path, capsys):
    """The export through run_cli, what launch/export.py calls, in-process (a process of its own
    spent 2-3 s importing torch and torch.export again); the refusal as a user runs the script."""
    from kd_accel.errors import run_cli

    path = saved(tmp_path, "notebook:student", (1, 28, 28))
    run_cli(export.export_main, [str(path), "--pt2", str(tmp_path / "m.pt2"), "--check"])
    assert "torch.export.load: max abs difference" in capsys.readouterr().out and (tmp_path / "README.md").is_file()
    bad = run_script("export.py", tmp_path / "missing.safetensors", "--pt2", tmp_path / "n.pt2", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"kd_accel: error: checkpoint not found: {tmp_path / 'missing.safetensors'}"], bad.stderr
