"""Issue 28, item 1: Hugging Face datasets as a data source (kd_accel/data/hf.py).

Tiny DatasetDicts written here with the `datasets` library (the first 200 + 100 MNIST images,
PNG-encoded in the Arrow table by PIL (conftest.encode_image), as tests/conftest.write_image_folder
writes a folder's files), saved with save_to_disk or built into a temporary Hugging Face cache
(hf:NAME; offline, nothing downloaded). Checked: the listing and class names; decoding equal to
the image folder's for the same bytes; a distill.py run whose student replays the cached crops
(the teacher on the student's view gives the cached logits); a changed dataset refused by its
fingerprint and row count; each kind of bad row, split or column one line; `datasets` missing one
line; 1 and 2 processes writing the same cache (slow)."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("datasets")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets reads it: nothing is downloaded here
import datasets  # noqa: E402
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value  # noqa: E402

datasets.disable_progress_bars()  # the fixtures' saves would fill stderr, which cli_error reads

from conftest import cli_error, encode_image, folder_order, replay_check, run_main, write_image_folder  # noqa: E402
from kd_accel import cli  # noqa: E402
from kd_accel.augment import stream_seed  # noqa: E402
from kd_accel.checkpointing import check_stamp  # noqa: E402
from kd_accel.data import load_folder, open_splits  # noqa: E402
from kd_accel.data.decode import _decode  # noqa: E402
from kd_accel.data.hf import HFDataset  # noqa: E402
from kd_accel.data.streamed import DrawnCrops, View, folder_loader  # noqa: E402
from kd_accel.errors import KDError, worker_message  # noqa: E402
from test_imagefolder import distill, find_idx, notebook_teacher, read_idx  # noqa: E402

N_TRAIN, N_TEST = 200, 100
CLASSES = [f"digit {c}" for c in range(10)]
FEATURES = Features({"image": Image(), "label": ClassLabel(names=CLASSES)})
HF = ["--dataset", "hf", "--channels", "1", "--image-size", "28", "--batch-size", "50", "--epochs", "1",
      "--no-baseline"]


def table(images, labels, features=FEATURES):
    """A Dataset of PNG-encoded images uint8 [N, C, H, W] (or encoded bytes) and labels."""
    cells = [{"bytes": img if isinstance(img, bytes) else encode_image(img), "path": None} for img in images]
    return Dataset.from_dict({"image": cells, "label": [int(y) for y in labels]}, features=features)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    """(train images [200, 1, 28, 28], labels, test images [100, ...], labels): MNIST's first."""
    raw = mnist_dir / "MNIST" / "raw"
    got = [read_idx(find_idx(raw, f"{split}-{kind}"), n) for split, n in (("train", N_TRAIN), ("t10k", N_TEST))
           for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    return got[0][:, None], got[1].long(), got[2][:, None], got[3].long()


@pytest.fixture(scope="module")
def saved(mnist, tmp_path_factory):
    """The images as a DatasetDict (train, test) saved with save_to_disk."""
    xtr, ytr, xte, yte = mnist
    root = tmp_path_factory.mktemp("hf") / "mnist"
    DatasetDict({"train": table(xtr, ytr), "test": table(xte, yte)}).save_to_disk(str(root))
    return root


def cached(root, name, splits):
    """Build `splits` ({split: Dataset}) into the Hugging Face cache at `root` as load_dataset
    leaves a Hub dataset there (<name>/default/0.0.0/<commit>/), through the Parquet builder."""
    import glob

    from datasets.packaged_modules.parquet.parquet import Parquet

    files = {}
    for split, ds in splits.items():
        files[split] = str(root / f"{split}.parquet")
        ds.to_parquet(files[split])
    builder = Parquet(cache_dir=str(root / "cache"), dataset_name=name, hash="0123abcd", data_files=files,
                      features=splits["train"].features)
    builder.download_and_prepare()
    (config,) = glob.glob(str(root / "cache" / name / "default-*"))
    os.rename(config, str(root / "cache" / name / "default"))  # the Hub's config folder has no data-files hash
    return root / "cache"


# -- the listing, the class names, the decoding --------------------------------------------------------

def test_the_splits_columns_and_class_names_and_decoding_equal_the_folders(mnist, saved, tmp_path):
    """Row i is sample i with its label, the class names are the ClassLabel's, and a row
    decodes to what the image folder's file of the same bytes decodes to: at the model's size, 1
    and 3 channels, and for PNG modes beyond grey (palette, grey+alpha, 16-bit, RGBA) and a JPEG."""
    xtr, ytr, xte, yte = mnist
    train, test = open_splits("hf", saved, channels=1, workers=0)
    assert (len(train), len(test), train.num_classes) == (N_TRAIN, N_TEST, 10)
    assert train.index.classes == tuple(CLASSES) and test.index.classes == tuple(CLASSES)
    assert torch.equal(train.labels, ytr) and torch.equal(test.labels, yte)
    folder = tmp_path / "folder"
    write_image_folder(folder / "train", xtr, ytr)  # the same PNG bytes as files
    order = folder_order(ytr)  # folder sample j is row order[j]
    view = View((20, 20), resize_size=24)  # a resize and a centre crop, as evaluation's
    for channels in (1, 3):
        rows = open_splits("hf", saved, channels=channels, workers=0)[0].at({"image_size": (20, 20),
                                                                            "resize_size": 24})
        files = load_folder(folder, "train", channels=channels, workers=0)
        got = rows.dataset_for().__getitems__(order[:40].tolist())["images"]
        want = files.at({"image_size": (20, 20), "resize_size": 24}).dataset_for().__getitems__(list(range(40)))
        assert rows.view == view and torch.equal(got, want["images"]), channels
    from PIL import Image as PILImage
    import io

    def encoded(img, mode, fmt="PNG"):
        buf = io.BytesIO()
        img.convert(mode).save(buf, fmt) if mode != "I;16" else PILImage.fromarray(
            (np.asarray(img.convert("L"), dtype=np.uint16) * 257)).save(buf, fmt)
        return buf.getvalue()

    rgb = PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
    kinds = [encoded(rgb, m) for m in ("P", "LA", "I;16", "RGBA")] + [encoded(rgb, "RGB", "JPEG")]
    odd = tmp_path / "odd"
    DatasetDict({s: table(kinds, [0] * len(kinds)) for s in ("train", "test")}).save_to_disk(str(odd))
    for channels in (1, 3):
        split = open_splits("hf", odd, channels=channels, workers=0)[0].at({"image_size": (8, 8)})  # no resize: the decoded pixels
        got = split.dataset_for().__getitems__(list(range(len(kinds))))["images"]
        for i, data in enumerate(kinds):
            assert torch.equal(got[i], _decode("x", channels, data)), (channels, i)


def test_hf_name_is_read_from_the_hugging_face_cache_offline(mnist, saved, tmp_path, monkeypatch, capsys):
    """--dataset hf:NAME (--data-dir: the cache) reads a dataset built into a temporary Hugging
    Face cache, offline: the same rows and classes as the saved copy; a name not there is one line."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as HF_DATASETS_OFFLINE=1 at import
    xtr, ytr, xte, yte = mnist
    cache = cached(tmp_path, "tiny_mnist", {"train": table(xtr[:60], ytr[:60]), "validation": table(xte[:30], yte[:30])})
    train, test = open_splits("hf:tiny_mnist", cache, channels=1, workers=0)
    assert (len(train), len(test), train.index.classes, test.index.split) == (60, 30, tuple(CLASSES), "validation")
    saved_train = open_splits("hf", saved, channels=1, workers=0)[0]
    rows = list(range(0, 60, 7))
    assert torch.equal(train.dataset_for().__getitems__(rows)["images"],
                       saved_train.dataset_for().__getitems__(rows)["images"])
    assert "fingerprint" in train.fingerprint() and "60 rows" in train.fingerprint()
    capsys.readouterr()  # datasets' progress bars so far
    err = cli_error(cli.distill_main, [*HF[:1], "hf:not_there", "--data-dir", cache, "--output-dir",
                                       tmp_path / "run"], capsys)
    assert "Hugging Face dataset not_there cannot be loaded" in err and "HF_DATASETS_OFFLINE" in err, err


# -- a run: the student replays the cached crops --------------------------------------------------------

@pytest.fixture(scope="module")
def hf_run(saved, tmp_path_factory):
    """distill.py from the saved dataset with a given (untrained) teacher, --augment rrc, one
    cached view, a decoding worker: (run folder, teacher file, every student batch, the consistency checks)."""
    root = tmp_path_factory.mktemp("hf_run")
    train = open_splits("hf", saved, channels=1, workers=0)[0]
    teacher_file = notebook_teacher(train, root / "teacher.safetensors")
    check, close = replay_check(teacher_file)
    out = root / "run"
    before = os.environ.get("KD_ACCEL_LATENCY_S")
    os.environ["KD_ACCEL_LATENCY_S"] = "0.01"  # the speed-up measured (briefly: its presence, not its value)
    try:
        seen = distill([*HF, "--data-dir", saved, "--augment", "rrc", "--views", "1", "--augment-seed", "5",
                        "--num-workers", "1", "--teacher", teacher_file, "--export", "onnx"], out, hooks=[check])
    finally:
        os.environ.pop("KD_ACCEL_LATENCY_S") if before is None else os.environ.update(KD_ACCEL_LATENCY_S=before)
    return out, teacher_file, seen, close


def test_a_run_from_a_hugging_face_dataset_replays_the_cached_crops(hf_run):
    """The cache holds DrawnCrops(stream_seed("cache", 5), view 0)'s crops of every row; the
    student's batches carry them, and the teacher run on the student's view gives the logits
    the student was taught."""
    out, _, seen, close = hf_run
    stored = load_file(out / "teacher_logits.rrc.1views.safetensors")
    side = torch.full((N_TRAIN,), 28)
    drawn = DrawnCrops(stream_seed("cache", 5), view=0).params(None, np.arange(N_TRAIN), side, side)
    assert torch.equal(stored["params"][0], drawn) and stored["logits"].shape == (1, N_TRAIN, 10)
    assert len(seen["student"]) == N_TRAIN // 50 and len(close) == N_TRAIN // 50 and all(close)
    for idx, _, crops in seen["student"]:
        assert torch.equal(crops, stored["params"][0][idx])
    # issue 28's one command: data in, the student out as ONNX (checked in onnxruntime), its speed-up in the table
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["deployment"]["student_vs_teacher"]["speedup"]) == {"batch_1", "batch_64"}, metrics["deployment"]
    card = (out / "export" / "README.md").read_text()
    assert (out / "export" / "student.onnx").stat().st_size > 0 and "data: hf" in card, card


def test_a_changed_dataset_is_refused_naming_its_fingerprint_and_rows(mnist, saved, hf_run, tmp_path):
    """The dataset saved again without its last 10 training rows: the reference run's cache is
    refused naming the old and new fingerprint and row count, and so is a checkpoint's stamp."""
    out, teacher_file, _, _ = hf_run
    xtr, ytr, xte, yte = mnist
    changed = tmp_path / "changed"
    DatasetDict({"train": table(xtr[:-10], ytr[:-10]), "test": table(xte, yte)}).save_to_disk(str(changed))
    old = open_splits("hf", saved, channels=1, workers=0)[0]
    new = open_splits("hf", changed, channels=1, workers=0)[0]
    said = [f"fingerprint {old.index.fingerprint}; {N_TRAIN} rows", f"fingerprint {new.index.fingerprint}; "
            f"{N_TRAIN - 10} rows"]
    assert old.index.fingerprint != new.index.fingerprint
    with pytest.raises(KDError) as e:
        run_main(cli.distill_main, [*HF, "--data-dir", changed, "--augment", "rrc", "--views", "1", "--augment-seed",
                                    "5", "--num-workers", "0", "--teacher", teacher_file, "--logits",
                                    out / "teacher_logits.rrc.1views.safetensors", "--output-dir", tmp_path / "run"])
    line = str(e.value)
    assert "training data changed" in line and all(s in line for s in said), line
    with pytest.raises(KDError) as e:
        check_stamp("student: x", {"data": old.fingerprint()}, {"data": new.fingerprint()}, "start afresh")
    assert all(s in str(e.value) for s in said), str(e.value)


# -- bad rows, splits, columns; no datasets -------------------------------------------------------------

def bad(tmp_path, how, mnist):
    """A saved dataset spoiled as `how` says; returns (its folder, the words its refusal holds)."""
    xtr, ytr, xte, yte = (t[:12] for t in mnist)
    images = [encode_image(x) for x in xtr]
    splits = {"train": table(images, ytr), "test": table(xte, yte)}
    words = []
    if how == "undecodable image":
        images[5] = b"this is not an image"
        splits["train"], words = table(images, ytr), ["cannot read image in row 5 of split 'train'"]
    elif how == "label -1":
        splits["test"] = table(xte, [-1 if i == 3 else y for i, y in enumerate(yte.tolist())])
        words = ["row 3 of split 'test'", "label -1 is outside the 10 classes", "-1 is a row without a label"]
    elif how == "label out of range":
        ints = table(images, [12 if i == 4 else y for i, y in enumerate(ytr.tolist())],
                     Features({"image": Image(), "label": Value("int64")}))
        splits["train"] = ints.cast(FEATURES)  # datasets casts 12 into a ClassLabel of 10 without a word
        words = ["row 4 of split 'train'", "label 12 is outside the 10 classes"]
    elif how == "missing column":
        splits["train"] = splits["train"].rename_column("image", "pixels")
        words = ["split 'train'", "has no image column (looked for image, img; its columns: pixels, label)",
                 "--image-column"]
    elif how == "missing split":
        del splits["test"]
        words = ["has no 'validation' or 'test' split (its splits: train)"]
    elif how == "missing image":
        splits["train"] = Dataset.from_dict({"image": [None] + [{"bytes": b, "path": None} for b in images[1:]],
                                             "label": ytr.tolist()}, features=FEATURES)
        words = ["no image in row 0 of split 'train'"]
    root = tmp_path / "bad"
    DatasetDict(splits).save_to_disk(str(root))
    return root, words


@pytest.mark.parametrize("how", ["undecodable image", "label -1", "label out of range", "missing column",
                                 "missing split", "missing image"])
def test_each_bad_row_split_or_column_is_one_line_naming_it(mnist, tmp_path, capsys, how):
    root, words = bad(tmp_path, how, mnist)
    capsys.readouterr()
    err = cli_error(cli.distill_main, [*HF, "--data-dir", root, "--num-workers", "0", "--teacher-epochs", "1",
                                       "--teacher-image-size", "28", "--output-dir", tmp_path / "run"], capsys)
    assert all(w in err for w in words), err
    assert not (tmp_path / "run" / "teacher.safetensors").exists() or how == "undecodable image"


@pytest.mark.slow  # torch then takes ~5 s per worker to stop them
def test_an_undecodable_row_met_by_a_worker_is_one_line_naming_it(mnist, tmp_path):
    root, words = bad(tmp_path, "undecodable image", mnist)
    split = open_splits("hf", root, channels=1, workers=0)[0]
    loader = folder_loader(split.dataset_for(DrawnCrops(0)), batch_size=4, workers=2, device="cpu", shuffle=True)
    with pytest.raises(KDError) as e:
        for _ in loader:
            pass
    assert "DataLoader worker" in str(e.value)
    line = worker_message(e.value)
    assert "\n" not in line and all(w in line for w in words), line


def test_without_datasets_or_with_columns_for_other_data_it_is_one_line(saved, mnist_dir, tmp_path, capsys,
                                                                        monkeypatch):
    """`datasets` not installed: one line saying how to install it; --image-column on MNIST, and
    --dataset hf without --data-dir: one line each."""
    err = cli_error(cli.distill_main, ["--data-dir", mnist_dir, "--image-column", "img", "--output-dir",
                                       tmp_path / "a"], capsys)
    assert "--image-column and --label-column are for Hugging Face datasets" in err, err
    err = cli_error(cli.distill_main, ["--dataset", "hf", "--output-dir", tmp_path / "b"], capsys)
    assert "--dataset hf needs --data-dir DIR" in err, err
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    err = cli_error(cli.distill_main, [*HF, "--data-dir", saved, "--output-dir", tmp_path / "c"], capsys)
    assert "pip install 'kd_accel[hf]'" in err, err


def test_hf_dataset_reads_as_image_folders_do():
    """The defaults and the dataset's worker-side class: --augment rrc by default (hf:NAME too),
    and HFDataset is the folder's dataset (crops, resize, flip) reading rows."""
    from kd_accel.config import layered_defaults
    from kd_accel.data.streamed import FolderDataset

    assert layered_defaults("hf", "default")["augment"] == layered_defaults("hf:x/y", "default")["augment"] == "rrc"
    assert issubclass(HFDataset, FolderDataset)


# -- 1 and 2 processes write the same cache ------------------------------------------------------------

@pytest.mark.slow
def test_one_and_two_processes_write_the_same_cache_from_a_hugging_face_dataset(saved, tmp_path):
    from conftest import run_script
    from kd_accel.cache import read_metadata
    from test_imagefolder import all_same

    train = open_splits("hf", saved, channels=3, workers=0)[0]
    teacher_file = notebook_teacher(train, tmp_path / "teacher.safetensors")
    caches = {}
    for nproc in (1, 2):  # one process: precompute_main in this one (a process spent 2-3 s on imports)
        caches[nproc] = tmp_path / f"cache{nproc}.safetensors"
        args = ["--dataset", "hf", "--data-dir", saved, "--augment", "rrc", "--views", "2", "--teacher", teacher_file,
                "--out", caches[nproc], "--output-dir", tmp_path / f"run{nproc}"]
        if nproc == 1:
            run_main(cli.precompute_main, args)
        else:
            run_script("precompute_logits.py", *args, nproc=nproc, env={"HF_DATASETS_OFFLINE": "1"})
    all_same(caches[1], caches[2])
    assert read_metadata(caches[1]) == read_metadata(caches[2])
    assert load_file(caches[1])["params"].shape == (2, N_TRAIN, 5)
