"""Issue 25, models and every file kd_accel reads: each rule tested as a rule.

1. Every tensor that enters from a file is finite, checked where it enters (kd_accel/validate.py):
   the readers register themselves, this file walks the registry, writing each reader's format
   with a NaN parameter and an inf buffer; and a scan of the package's source finds every
   function that reads tensors, which must be a registered reader or say why not.
2. Published weights at another input size keep their crop's share of the image; a mix that
   crops away most of the image, or an input size far from the weights', is said in one line.
3. A timm name with an unknown pretrained tag (and torchvision's weight names) is one line.
4. Every model a user can name runs at the chosen input size or is refused up front, naming a
   size it runs at.
5. A teacher for another class count is refused up front; so is a re-initialised head used as is.
6. A file is refused for what it is: a pickle that would run code, a cache given as weights, ...

Tiny on purpose: weightless models, one-sample forwards, files of a few kB."""
import ast
import importlib
import json
import math
import os
import pkgutil
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import kd_accel
from conftest import cli_error, tiny_split
from kd_accel import cache, checkpointing, validate
from kd_accel.config import from_flags
from kd_accel.errors import KDError
from kd_accel.models import build_model, files, zoo

prep_mod = importlib.import_module("kd_accel.models.preprocessing")  # the package re-exports its function by that name

for _m in pkgutil.walk_packages(kd_accel.__path__, "kd_accel."):  # every reader registers on import
    importlib.import_module(_m.name)


def one_line(e):
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# --- 1. non-finite tensors: the readers, walked ---------------------------------------------------

def tiny_state():
    """The notebook student's state dict: conv weights (parameters), BatchNorm buffers."""
    torch.manual_seed(0)
    return {k: v.clone() for k, v in build_model("student").state_dict().items()}


def poison(state, where):
    """NaN in a parameter, or inf in a BatchNorm buffer (running_var); the tensor's name."""
    name = next(k for k in state if (k.endswith("running_var") if where == "buffer" else k.endswith("weight")))
    state[name].view(-1)[0] = float("nan") if where == "parameter" else float("inf")
    return name


def rewrite_safetensors(path, change):
    """Rewrite a kd_accel safetensors file with change(tensors) applied and its checksums (the
    `<name>_sha256` metadata) recomputed: a file whose bytes are what its writer recorded."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
    name = change(tensors)
    meta.update({f"{k}_sha256": cache._checksum(v) for k, v in tensors.items() if f"{k}_sha256" in meta})
    save_file(tensors, str(path), metadata=meta)
    return name


KEY = cache.CacheKey("mnist", "train", 6, 4, "teacherfp", "datafp", "shift(pad=2)", 0, "28x28 bilinear mean=None std=None")


def write_model_format(fmt, tmp_path, where):
    """(path, name of the poisoned tensor) of a weights or model file in format `fmt`."""
    state = tiny_state()
    name = poison(state, where)
    if fmt == "torch.save state dict":
        path = tmp_path / "W.pth"
        torch.save(state, path)
    elif fmt == "safetensors state dict":
        path = tmp_path / "W.safetensors"
        save_file(state, str(path))
    elif fmt == "training checkpoint":  # a training script's: DDP prefixes, the optimizer beside
        path = tmp_path / "ckpt.pth"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}, path)
    elif fmt == "kd_accel model file":
        path = tmp_path / "student.safetensors"
        model = build_model("student")
        model.load_state_dict(state)
        files.save_model(model, path, "student", 10)
    else:
        raise AssertionError(fmt)
    return path, name


def write_accelerate_checkpoint(tmp_path, where):
    """A checkpoint folder as Accelerate's save_state and kd_accel's fit leave it: model
    weights (safetensors), optimizer and scheduler state (torch.save), each rank's RNG state,
    progress.json; the model's parameter / buffer, or the optimizer's moment, not finite."""
    folder = tmp_path / "checkpoints" / "student" / "step_00000001"
    folder.mkdir(parents=True)
    model = build_model("student")
    opt = torch.optim.Adam(model.parameters())
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    opt.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optim = opt.state_dict()
    if where == "optimizer":
        optim["state"][0]["exp_avg"].view(-1)[0] = float("nan")
        name, file = "state.0.exp_avg", "optimizer.bin"
    else:
        name, file = poison(state, where), "model.safetensors"
    save_file(state, str(folder / "model.safetensors"))
    torch.save(optim, folder / "optimizer.bin")
    torch.save(torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0).state_dict() | {"lr_lambdas": [None]},
               folder / "scheduler.bin")
    torch.save({"torch_manual_seed": torch.get_rng_state()}, folder / "random_states_0.pkl")
    (folder / checkpointing.PROGRESS).write_text(json.dumps(
        {"epoch": 0, "position": 2, "global_step": 1, "history": [], "elapsed_s": 0.0, "sums": {},
         "phase": "student", "settings": {"processes": 1}}))
    return folder, f"{file}: tensor {name}"


def write_cache(tmp_path, where, topk=None):
    """A K-view cache (3 views, crops) whose logits (parameter) or crops (buffer) are not finite,
    checksummed as written: the checksums cannot tell."""
    path = tmp_path / "C.safetensors"
    g = torch.Generator().manual_seed(0)
    cache.save_cache(path, torch.randn(3, 6, 4, generator=g), torch.arange(6) % 4, KEY,
                     params=torch.rand(3, 6, 5, generator=g), topk=topk)

    def change(t):
        name = ("topk_logp" if topk else "logits") if where == "parameter" else "params"
        t[name].view(-1)[4] = float("nan") if where == "parameter" else float("-inf")
        return name
    return path, rewrite_safetensors(path, change)


def partial_writer(tmp_path, views=2):
    labels = torch.arange(6) % 4
    return cache.CacheWriter(tmp_path / "F.safetensors", KEY, views, labels, "fp32", params_cols=5,
                             params_dtype=torch.uint16), labels


def write_partial(tmp_path, where, keep_digests=True):
    """A folder precompute killed after view 0, whose rows were changed since: a NaN logit
    ("parameter"), or a finite value ("buffer": its crops are uint16, nothing else can be
    non-finite); with the digests recorded for the changed rows (keep_digests), or not."""
    writer, _ = partial_writer(tmp_path)
    g = torch.Generator().manual_seed(0)
    writer.write(0, torch.arange(6), torch.randn(6, 4, generator=g), torch.randint(0, 60000, (6, 5), generator=g))
    writer.view_done(0)
    writer.arrays["logits"][0, 2, 1] = float("nan") if where == "parameter" else 123.0
    writer.arrays["logits"].flush()
    if keep_digests:  # as a writer would record them had it written these rows: only finiteness can tell
        state = json.loads(writer.state.read_text())
        state["digests"].update(writer._view_digests(0))
        writer.state.write_text(json.dumps(state))
    del writer
    return "logits"


FORMAT_CASES = {  # format -> the poisons a file of it is written with
    "torch.save state dict": ("parameter", "buffer"), "safetensors state dict": ("parameter", "buffer"),
    "training checkpoint": ("parameter", "buffer"), "kd_accel model file": ("parameter", "buffer"),
    "accelerate checkpoint": ("parameter", "buffer", "optimizer"), "logits cache": ("parameter", "buffer"),
    "partial cache": ("parameter", "buffer"),
}


def probe(reader, fmt, where, tmp_path):
    """Write `fmt` poisoned at `where`, give it to `reader`; assert it is refused (named) or, for
    what a precompute resumes, not used."""
    if reader in ("kd_accel.models.zoo.read_weights", "kd_accel.models.files.read_checkpoint"):
        path, name = write_model_format(fmt, tmp_path, where)
        read = zoo.read_weights if reader.endswith("read_weights") else files.read_checkpoint
        with pytest.raises(KDError) as e:
            read(path)
        assert one_line(e) == f"{path}: tensor {name} is not finite ({'1 NaN' if where == 'parameter' else '1 inf'}); " \
                              "refusing to use it"
        if fmt == "kd_accel model file":  # and what rebuilds the model from it
            with pytest.raises(KDError, match=re.escape(f"tensor {name} is not finite")):
                kd_accel.load_model(path)
    elif reader.startswith("kd_accel.checkpointing."):
        folder, what = write_accelerate_checkpoint(tmp_path, where)
        if reader.endswith("checkpoint_problem"):
            assert checkpointing.checkpoint_problem(folder).startswith(what), checkpointing.checkpoint_problem(folder)
        else:
            lines = []
            with pytest.raises(KDError) as e:
                checkpointing.load_checkpoint(None, folder, "student", {"processes": 1}, log=lambda s, **k: lines.append(s))
            assert f"no usable checkpoint in {folder.parent} (step_00000001: {what} is not finite" in one_line(e)
            assert lines == [f"student: skipping checkpoint {folder}: {what} is not finite "
                             f"({'1 NaN' if where != 'buffer' else '1 inf'}); refusing to use it"]
    elif reader == "kd_accel.cache.open_cache":
        for topk in (None, 2):
            path, name = write_cache(tmp_path, where, topk)
            with pytest.raises(KDError) as e:
                cache.open_cache(path, KEY, views=3)
            assert one_line(e).startswith(f"logits cache {path}: tensor {name} is not finite (1 ")
    elif reader == "kd_accel.cache.CacheWriter.__init__":
        write_partial(tmp_path, where)
        writer, _ = partial_writer(tmp_path)
        assert writer.done == (set() if where == "parameter" else {0})  # finite 123.0 with its digest: kept
        write_partial(tmp_path / "again", "buffer", keep_digests=False)  # bytes changed behind the digests
        assert partial_writer(tmp_path / "again")[0].done == set()
    else:
        pytest.fail(f"reader {reader} ({fmt}) has no probe here: add one, writing its format with a NaN "
                    "parameter and an inf buffer")


READER_CASES = [(r, f, w) for r, formats in sorted(validate.READERS.items()) for f in formats for w in FORMAT_CASES[f]]


@pytest.mark.parametrize("reader, fmt, where", READER_CASES, ids=[f"{r.rsplit('.', 1)[-1]}-{f}-{w}" for r, f, w in READER_CASES])
def test_every_reader_refuses_non_finite_tensors_naming_file_and_tensor(reader, fmt, where, tmp_path):
    (tmp_path / "again").mkdir()
    probe(reader, fmt, where, tmp_path)


def test_the_readers_cover_every_format_a_user_brings():
    formats = {f for fs in validate.READERS.values() for f in fs}
    assert formats == set(FORMAT_CASES), formats ^ set(FORMAT_CASES)
    assert len(READER_CASES) >= 18  # 20 until issue 26: the view parts' reader went with the one cache writer


def _functions(tree, source):
    """(qualname, source) of each module-level function and method (nested ones are their parent's)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, ast.get_source_segment(source, node)
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{sub.name}", ast.get_source_segment(source, sub)


def test_every_function_that_reads_tensors_from_a_file_is_a_registered_reader():
    """The registry is complete: a function of the package that calls a raw reader (load_file,
    torch.load, safe_open, np.memmap, Accelerate's load_state, get_tensor) or a raw helper
    (validate.BEHIND) is a registered reader, a raw helper whose registered reader checks what it
    returns, or exempt with a reason. A new reader cannot be left out by accident."""
    root = Path(kd_accel.__file__).parent
    helpers = [rf"\b{re.escape(name.rsplit('.', 1)[-1])}\(" for name in validate.BEHIND]
    pattern = re.compile("|".join([*validate.RAW_READS, *helpers]))
    found, defined = {}, set()
    for path in sorted(root.rglob("*.py")):
        module = "kd_accel." + ".".join(path.relative_to(root).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        source = path.read_text()
        for qualname, text in _functions(ast.parse(source), source):
            name = f"{module}.{qualname}"
            defined.add(name)
            body = text.split("\n", 1)[1] if "\n" in text else ""  # its calls, not its own def line
            if pattern.search(body):
                found[name] = pattern.search(body)[0]
    unaccounted = {n: call for n, call in found.items()
                   if n not in validate.READERS and n not in validate.BEHIND and n not in validate.EXEMPT}
    assert not unaccounted, f"these read tensors from files but are not registered readers (validate.reads_tensors), " \
                            f"raw helpers (validate.BEHIND) or exempt (validate.EXEMPT): {unaccounted}"
    for table in (validate.READERS, validate.BEHIND, validate.EXEMPT):
        assert set(table) <= defined, f"stale entries: {set(table) - defined}"
    assert set(validate.BEHIND.values()) <= set(validate.READERS)
    assert all(len(reason) > 10 for reason in validate.EXEMPT.values())
    assert set(validate.READERS) | set(validate.BEHIND) <= set(found) | set(validate.READERS)


def test_a_checkpoint_with_non_finite_optimizer_state_falls_back_to_the_newest_usable(tmp_path):
    """A damaged newest checkpoint (its Adam moments NaN) is skipped, naming file and tensor."""
    folder, what = write_accelerate_checkpoint(tmp_path, "optimizer")
    assert what == "optimizer.bin: tensor state.0.exp_avg"
    assert checkpointing.checkpoint_problem(folder) == f"{what} is not finite (1 NaN); refusing to use it"


def test_an_intact_partial_cache_resumes_its_finished_views(tmp_path):
    writer, _ = partial_writer(tmp_path, views=3)
    g = torch.Generator().manual_seed(0)
    for v in (0, 1):
        writer.write(v, torch.arange(6), torch.randn(6, 4, generator=g), torch.randint(0, 60000, (6, 5), generator=g))
        writer.view_done(v)
    del writer
    assert partial_writer(tmp_path, views=3)[0].done == {0, 1}


def test_a_non_finite_teacher_file_is_refused_before_any_work(tmp_path, mnist_dir, capsys, reset_accelerate):
    """End to end: --teacher-weights with an inf BatchNorm buffer: one line, exit 2, nothing trained."""
    state = build_model("teacher").state_dict()
    name = poison(state, "buffer")
    torch.save(state, tmp_path / "W.pth")
    err = cli_error(kd_accel.cli.distill_main, ["--data-dir", mnist_dir, "--limit-train", "50", "--teacher-arch",
                                                "notebook:teacher", "--teacher-weights", tmp_path / "W.pth",
                                                "--teacher-epochs", "0", "--output-dir", tmp_path / "r"], capsys)
    assert err == f"kd_accel: error: {tmp_path / 'W.pth'}: tensor {name} is not finite (1 inf); refusing to use it"
    assert not (tmp_path / "r" / "teacher.safetensors").exists()


# --- 2. published weights at another input size -------------------------------------------------

@pytest.mark.parametrize("spec, published", [
    ("torchvision:resnet18", "resnet18-f37072fd.pth"), ("torchvision:inception_v3", "inception_v3_google-0cc3c7bd.pth"),
    ("torchvision:vit_b_16", "vit_b_16-c867db91.pth"), ("timm:test_efficientnet.r160_in1k", None)])
@pytest.mark.parametrize("size", [None, 32, 64, 500])
def test_the_evaluation_resize_scales_with_the_input_size(spec, published, size, tmp_path):
    """resize = image size x the weights' resize/crop, so the crop keeps the share of the image
    it had (32 px of a 256 px image was 12% of it); the record's description says the resize."""
    weights = published and str(tmp_path / published)  # recognised by name: the file is not read here
    known, _ = prep_mod.known_preprocessing(spec, weights)
    rec = prep_mod.resolve(spec, weights, size, None, None, (28, 28), 3)
    crop, resize = rec["image_size"][0], rec["resize_size"]
    assert crop == (size or known["image_size"])
    assert resize == (known["resize_size"] if size is None else math.floor(size * known["resize_size"] / known["image_size"]))
    assert abs(crop / resize - known["image_size"] / known["resize_size"]) < 0.03
    assert prep_mod.describe(rec).endswith(f" resize={resize}")


def test_a_mix_that_crops_away_most_of_the_image_or_is_far_from_the_weights_size_is_said(tmp_path):
    """One log line, where the model is built: the weights' own size is silent; 32 px for 224 px
    weights is said; an old kd_accel file recording a 256 px resize for 32 px inputs is said."""
    import torchvision.models as tvm

    from kd_accel.roles import build

    published = tmp_path / "mobilenet_v3_small-047dcff4.pth"
    torch.save(tvm.get_model("mobilenet_v3_small", num_classes=10).state_dict(), published)
    train = tiny_split(4)
    lines = []
    build(from_flags(arch="torchvision:mobilenet_v3_small", weights=str(published), image_size=32).student, train,
          "student", lines.append)
    said = [line for line in lines if "preprocessing" in line]
    assert said == ["student: preprocessing: inputs of 32x32, the weights (torchvision mobilenet_v3_small "
                    "IMAGENET1K_V1) were trained on 224x224: expect them to do worse than at their own size unless "
                    "fine-tuned"], lines
    assert prep_mod.mix_note("torchvision:mobilenet_v3_small", str(published),
                             prep_mod.resolve("torchvision:mobilenet_v3_small", str(published), None, None, None,
                                              (28, 28), 1)) is None
    old = {"image_size": [32, 32], "resize_size": 256, "mean": None, "std": None, "interpolation": "bilinear"}
    note = prep_mod.mix_note("notebook:student", None, old)
    assert note == "preprocessing: the evaluation view resizes to 256 px and keeps the central 32x32: 12% of the " \
                   "image's side"


# --- 3. names: timm's pretrained tags, torchvision's weights --------------------------------------

@pytest.mark.parametrize("spec, words", [
    ("timm:resnet18.bogus", "unknown pretrained tag 'bogus' in 'timm:resnet18.bogus'; timm:resnet18 has 7: a1_in1k, "),
    ("timm:resnet18.a1_in1", "; closest: a1_in1k, "),
    ("timm:resnet18.", "unknown pretrained tag '' in 'timm:resnet18.'; timm:resnet18 has 7: "),
    ("timm:test_vit.r224_in1k", "; closest: r160_in1k; timm:test_vit has 1: r160_in1k"),
    ("timm:coatnet_0_224.in1k", "timm:coatnet_0_224 has no pretrained tag 'in1k'"),
    ("torchvision:resnet18.IMAGENET1K_V1", "unknown architecture 'torchvision:resnet18.IMAGENET1K_V1'"),
])
def test_a_name_with_an_unknown_tag_is_one_line_naming_the_tags_that_exist(spec, words):
    for call in (zoo.parse_arch, lambda s: zoo.build_zoo_model(s, 10), prep_mod.preprocessing,
                 lambda s: prep_mod.resolve(s, None, None, None, None, (28, 28), 1)):
        with pytest.raises(KDError) as e:
            call(spec)
        assert words in one_line(e), one_line(e)
    assert zoo.parse_arch("timm:resnet18.a1_in1k") == ("timm", "resnet18.a1_in1k")


def test_weight_names_given_apart_are_one_line():
    with pytest.raises(KDError) as e:
        prep_mod.preprocessing("torchvision:resnet18", "IMAGENET9K")
    assert "torchvision:resnet18 has no weights 'IMAGENET9K'; choose from IMAGENET1K_V1" in one_line(e)
    with pytest.raises(KDError) as e:
        prep_mod.preprocessing("timm:resnet18", "bogus")
    assert one_line(e).startswith("unknown pretrained tag 'bogus' in 'timm:resnet18.bogus'; timm:resnet18 has 7")


def test_an_unknown_tag_on_the_command_line_is_one_line(capsys, tmp_path, mnist_dir, reset_accelerate):
    err = cli_error(kd_accel.cli.distill_main, ["--data-dir", mnist_dir, "--teacher-arch", "timm:resnet18.bogus",
                                                "--output-dir", tmp_path / "r"], capsys)
    assert err.startswith("kd_accel: error: unknown pretrained tag 'bogus' in 'timm:resnet18.bogus'"), err


# --- 4. every model runs at the chosen input size or is refused up front ------------------------

FAMILIES = ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0",
            "torchvision:googlenet", "torchvision:convnext_tiny", "torchvision:inception_v3",
            "timm:test_resnet", "timm:test_efficientnet", "timm:test_convnext", "timm:test_vit", "timm:test_maxvit",
            "timm:vit_tiny_patch16_224"]


@pytest.mark.parametrize("train", [True, False], ids=["trained", "used-as-is"])
@pytest.mark.parametrize("spec", FAMILIES)
def test_every_family_runs_at_the_size_or_is_refused_naming_one_it_runs_at(spec, train):
    """At 28x28, one grey channel (MNIST's): the model trains (or, a teacher used as it is,
    evaluates) there, or the refusal names a size; the model runs at that size."""
    model, _ = zoo.build_zoo_model(spec, 10, 1)
    flag = "--image-size"
    try:
        zoo.check_input_size(model, spec, (1, 28, 28), flag, train)
    except KDError as e:
        msg = str(e)
        m = re.fullmatch(rf"{re.escape(spec)} does not run on 28x28 inputs \(.+\); it needs (\d+)x\1: use {flag} \1", msg)
        assert m, msg
        size = int(m[1])
        zoo.check_input_size(model, spec, (1, size, size), flag, train)
        assert zoo._forward_problem(model, (1, size, size), train) is None
    else:
        assert zoo._forward_problem(model, (1, 28, 28), train) is None


def test_a_model_that_does_not_run_is_refused_before_the_teacher_trains(tmp_path):
    """Both roles, through pipeline.check_against_data (what load_data calls): the flag named is the role's."""
    from kd_accel.pipeline import check_against_data

    train = tiny_split(8)
    with pytest.raises(KDError) as e:
        check_against_data(from_flags(arch="timm:vit_tiny_patch16_224", output_dir=str(tmp_path)), train)
    assert one_line(e).endswith("it needs 224x224: use --image-size 224")
    with pytest.raises(KDError) as e:
        check_against_data(from_flags(teacher_arch="timm:test_maxvit", output_dir=str(tmp_path)), train)
    assert "it needs 160x160: use --teacher-image-size (train_teacher.py: --image-size) 160" in one_line(e)
    check_against_data(from_flags(teacher_arch="timm:test_maxvit", teacher_image_size=160, output_dir=str(tmp_path)),
                       train)


def test_inception_and_googlenet_train_on_their_logits_and_load_published_files(tmp_path):
    """Built without auxiliary classifiers (which make training's forward a tuple); a published
    file's auxiliary tensors are left out, said in the log."""
    import torchvision.models as tvm

    full = tvm.get_model("googlenet", weights=None, num_classes=10, aux_logits=True, init_weights=False)
    torch.save(full.state_dict(), tmp_path / "g.pth")
    model, _ = zoo.build_zoo_model("torchvision:googlenet", 10, 3)
    assert zoo.load_weights(model, tmp_path / "g.pth") == [
        "auxiliary classifier aux1, aux2 of the file not used (kd_accel trains on the main logits)"]
    assert isinstance(model.train()(torch.zeros(2, 3, 64, 64)), torch.Tensor)


def test_published_googlenet_weights_see_the_input_torchvision_gives_them(tmp_path):
    """torchvision turns on transform_input when it loads googlenet's (and inception_v3's)
    published weights itself; kd_accel builds the model weightless and normalises with the
    0.5 / 0.5 that transform_input amounts to: the same logits as torchvision's own model with
    its own transforms, on the same pixels (with ImageNet's mean/std and no transform_input,
    the check fails)."""
    import torchvision.models as tvm

    from kd_accel.models.preprocessing import known_preprocessing

    weights = tvm.GoogLeNet_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    theirs = tvm.googlenet(weights=None, num_classes=1000, aux_logits=False, init_weights=True, transform_input=True)
    path = tmp_path / Path(weights.url).name  # googlenet-1378be20.pth: recognised by its published name
    torch.save(theirs.state_dict(), path)
    prep, source = known_preprocessing("torchvision:googlenet", path)
    assert source and prep["mean"] == [0.5] * 3 and prep["std"] == [0.5] * 3
    ours, _ = zoo.build_zoo_model("torchvision:googlenet", 1000, 3)
    zoo.load_weights(ours, path)
    pixels = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(weights.transforms().mean)[:, None, None], torch.tensor(weights.transforms().std)[:, None, None]
    with torch.no_grad():
        expected = theirs.eval()((pixels - mean) / std)
        got = ours.eval()((pixels - torch.tensor(prep["mean"])[:, None, None]) / torch.tensor(prep["std"])[:, None, None])
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


# --- 5. a teacher for other classes ---------------------------------------------------------------

def test_a_teacher_file_for_other_classes_is_refused_before_any_work(tmp_path):
    from kd_accel.pipeline import check_against_data

    path = tmp_path / "teacher10.safetensors"
    files.save_model(build_model("teacher"), path, "teacher", 10)
    with pytest.raises(KDError) as e:
        check_against_data(from_flags(teacher=str(path), output_dir=str(tmp_path)), tiny_split(8, num_classes=5))
    assert one_line(e).startswith(f"--teacher {path} is a teacher for 10 classes, the data (mnist) have 5: ")


def test_teacher_weights_for_other_classes_used_as_they_are_are_refused(tmp_path):
    """--teacher-weights for 10 classes on 5-class data: fine-tuned, the re-initialised head is
    said (issue 18); used as is (--teacher-epochs 0), a random head would teach: refused."""
    from kd_accel.pipeline import check_against_data

    torch.save(build_model("teacher").state_dict(), tmp_path / "t10.pth")
    five = tiny_split(8, num_classes=5)
    flags = dict(teacher_arch="notebook:teacher", teacher_weights=str(tmp_path / "t10.pth"), output_dir=str(tmp_path))
    with pytest.raises(KDError) as e:
        check_against_data(from_flags(teacher_epochs=0, **flags), five)
    assert one_line(e).startswith(f"--teacher-weights {tmp_path / 't10.pth'} are for 10 classes, the data have 5: "
                                  "the classifier would be re-initialised, and --teacher-epochs 0 uses the teacher "
                                  "untrained")
    check_against_data(from_flags(teacher_epochs=1, **flags), five)


# --- 6. refused for what it is ----------------------------------------------------------------------

class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


class Custom:
    pass


@pytest.mark.parametrize("obj, needs", [({"w": RunsCode()}, "posix.system"),
                                        ({"state_dict": {"w": torch.zeros(2)}, "cfg": Custom()}, "Custom")])
def test_a_pickle_that_would_run_code_is_refused_as_such(obj, needs, tmp_path, capfd):
    path = tmp_path / "code.pth"
    torch.save(obj, path)
    with pytest.raises(KDError) as e:
        zoo.read_weights(path)
    assert one_line(e).startswith(f"{path} needs pickled code to load (") and needs in one_line(e)
    assert "never run" in one_line(e) and "this must never run" not in capfd.readouterr().out


def wrong_files(tmp_path):
    """{kind: path} of the files a user might give in the wrong place."""
    out = {}
    torch.save(tiny_state(), tmp_path / "weights.pth")
    out["pytorch"] = tmp_path / "weights.pth"
    save_file(tiny_state(), str(tmp_path / "plain.safetensors"))
    out["safetensors"] = tmp_path / "plain.safetensors"
    cache.save_cache(tmp_path / "cache.safetensors", torch.randn(6, 4), torch.arange(6) % 4, KEY)
    out["cache"] = tmp_path / "cache.safetensors"
    files.save_model(build_model("student"), tmp_path / "model.safetensors", "student", 10)
    out["model"] = tmp_path / "model.safetensors"
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 4)
    out["random"] = tmp_path / "random.pth"
    (tmp_path / "text.pth").write_text("hello world\n")
    out["text"] = tmp_path / "text.pth"
    (tmp_path / "empty.pth").write_bytes(b"")
    out["empty"] = tmp_path / "empty.pth"
    (tmp_path / "folder").mkdir()
    out["folder"] = tmp_path / "folder"
    data = (tmp_path / "weights.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    out["truncated"] = tmp_path / "truncated.pth"
    # a safetensors file cut short whose header length (640 = 0x280) starts with a pickle's 0x80 0x02
    (tmp_path / "cut.safetensors").write_bytes((640).to_bytes(8, "little") + b'{"__metadata__":{"a":"b"}' + b" " * 60)
    out["truncated safetensors"] = tmp_path / "cut.safetensors"
    return out


# reader -> the kinds it takes; and what its refusal of each other kind must say
READS = {"weights": (zoo.read_weights, {"pytorch", "safetensors", "model"}),
         "model file": (files.load_model, {"model"}),
         "cache": (lambda p: cache.open_cache(p), {"cache"})}
SAYS = {("weights", "cache"): "is a kd_accel teacher-logits cache, not model weights",
        ("model file", "pytorch"): "it is a PyTorch (torch.save) file, not a kd_accel model file",
        ("model file", "cache"): "is a kd_accel teacher-logits cache, not a model",
        ("model file", "safetensors"): "without kd_accel's model metadata",
        ("cache", "pytorch"): "is a PyTorch (torch.save) file, not a teacher-logits cache",
        ("cache", "model"): "holds a 'student' model, not a teacher-logits cache",
        ("cache", "empty"): "is an empty file, not a teacher-logits cache",
        ("weights", "folder"): "is not a file", ("model file", "folder"): "is a directory",
        ("cache", "folder"): "is a folder", ("cache", "truncated safetensors"): "is truncated or corrupted",
        ("weights", "truncated safetensors"): "(truncated or corrupt safetensors?)",
        ("model file", "truncated safetensors"): "(truncated or not safetensors?)"}


@pytest.mark.parametrize("reader", sorted(READS))
def test_every_reader_refuses_every_wrong_file_in_one_line_for_what_it_is(reader, tmp_path):
    """Each reader of files users bring, given each kind of file it does not take: one line naming
    the file, saying what it is where that is known, never a traceback (random bytes gave
    IndexError, text KeyError) and never 'truncated' for a file of another kind."""
    read, takes = READS[reader]
    for kind, path in wrong_files(tmp_path).items():
        if kind in takes:
            read(path)
            continue
        with pytest.raises(KDError) as e:
            read(path)
        msg = one_line(e)
        assert str(path) in msg, (kind, msg)
        assert SAYS.get((reader, kind), "") in msg, (kind, msg)
        if not kind.startswith("truncated") and kind not in ("random", "text", "empty"):
            assert "truncated" not in msg, (kind, msg)
