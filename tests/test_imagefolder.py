"""Image folders (issue 19), streamed through DataLoader workers: listed as torchvision's
ImageFolder lists them; crops a pure function of (seed, view, index) in any worker and batch;
and a folder trained through distill.py gives, bit for bit, what the same images in the same
order give from memory (teacher, cache, student, baseline). A K-view cache made from a folder
replays each view for the student, is the same from 1 or 2 processes, and a killed precompute or
training run resumes to the uninterrupted result.

The real images are Fashion-MNIST's (Debian's dataset-fashion-mnist), MNIST's where it is not
installed (a warning says so); a few hundred of them, written as PNG files."""
import gzip
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kd_accel import cli, training
from kd_accel.augment import stream_seed
from kd_accel.cache import CacheKey, compress_topk, open_cache, read_metadata, save_cache
from kd_accel.cache import CacheWriter
from kd_accel.config import from_flags
from kd_accel.data import EpochPermutation, load_folder
from kd_accel.data.folder import scan
from kd_accel.data.streamed import DrawnCrops, FolderDataset, View, crop_pixels, folder_loader
from kd_accel.models import save_model
from kd_accel.roles import build

from conftest import (encode_image, folder_order, precompute_killed_and_resumed, replay_check, run_main,
                      write_image_folder)

FASHION = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 300, 100
# distill.py from the folder and from memory: 6 steps an epoch (300 / 50)
COMMON = ["--epochs", "2", "--teacher-epochs", "1", "--batch-size", "50", "--augment", "none", "--image-size", "28",
          "--teacher-image-size", "28", "--seed", "3"]
FOLDER = ["--dataset", "imagefolder", "--channels", "1", "--num-workers", "2"]


def read_idx(path, n):
    """The first n items of an IDX file (gzipped or not): uint8 [n, ...]."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        _, _, ndim = struct.unpack(">HBB", f.read(4))
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = f.read(n * int(np.prod(shape[1:], dtype=np.int64)))
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(n, *shape[1:])


def write_idx(path, t):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">HBB", 0, 8, t.dim()) + struct.pack(f">{t.dim()}I", *t.shape) + t.numpy().tobytes())


def find_idx(folder, name):
    return next(p for p in (folder / name, folder / f"{name}.gz") if p.exists())


@pytest.fixture(scope="module")
def images(request):
    """(train images [300, 1, 28, 28], labels, test images [100, ...], labels): the first
    images of Fashion-MNIST, or of MNIST where Debian's package is not installed (with a warning)."""
    if (FASHION / "train-images-idx3-ubyte.gz").exists():
        raw = FASHION
    else:
        warnings.warn("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): "
                      "test_imagefolder.py uses MNIST's images instead")
        raw = request.getfixturevalue("mnist_dir") / "MNIST" / "raw"
    got = [read_idx(find_idx(raw, f"{split}-{kind}"), n) for split, n in (("train", N_TRAIN), ("t10k", N_TEST))
           for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    return got[0][:, None], got[1].long(), got[2][:, None], got[3].long()


@pytest.fixture(scope="module")
def folder(images, tmp_path_factory):
    """The images as an ImageFolder of PNG files: DIR/train/c<label>/, DIR/val/c<label>/."""
    xtr, ytr, xte, yte = images
    root = tmp_path_factory.mktemp("folder")
    write_image_folder(root / "train", xtr, ytr)
    write_image_folder(root / "val", xte, yte)
    return root


@pytest.fixture(scope="module")
def memory_copy(images, tmp_path_factory):
    """The same images in the folder's sample order, as MNIST's IDX files: the in-memory path of
    distill.py (--dataset mnist) over the same data in the same order."""
    xtr, ytr, xte, yte = images
    root = tmp_path_factory.mktemp("idx")
    raw = root / "MNIST" / "raw"
    for split, x, y in (("train", xtr, ytr), ("t10k", xte, yte)):
        order = folder_order(y)
        write_idx(raw / f"{split}-images-idx3-ubyte", x[order][:, 0].contiguous())
        write_idx(raw / f"{split}-labels-idx1-ubyte", y[order].to(torch.uint8))
    return root


def distill(args, out, hooks=(), seen=None):
    """distill.py in-process; returns (and fills `seen`, if given, also when it fails) {phase:
    [(idx, images, crops or None) of every training batch]}."""
    seen = {} if seen is None else seen

    def record(label, batch):
        crops = batch.get("crops")
        seen.setdefault(label, []).append((batch["idx"].clone(), batch["images"].clone(),
                                           None if crops is None else crops.clone()))

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.HOOKS, "batch", [record, *hooks])
        # the same training threads for every run compared here: a folder run on CPU otherwise
        # leaves its decoding workers their cores (threads.share_with_workers), and another
        # thread count sums in another order (other last bits)
        mp.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        try:
            run_main(cli.distill_main, [*args, "--output-dir", out])
        finally:
            torch.set_num_threads(threads)
    return seen


@pytest.fixture(scope="module")
def folder_run(folder, tmp_path_factory):
    """One uninterrupted distill.py run from the folder (2 workers): the reference."""
    out = tmp_path_factory.mktemp("folder_run") / "run"
    return out, distill([*FOLDER, "--data-dir", folder, *COMMON], out)


def same_tensors(a, b):
    """{name: equal?} over the union of two safetensors files' tensors (bit for bit)."""
    ta, tb = load_file(a), load_file(b)
    return {k: k in ta and k in tb and ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in {*ta, *tb}}


def all_same(a, b, skip=()):
    diff = {k: v for k, v in same_tensors(a, b).items() if k not in skip and not v}
    assert not diff, f"{a} and {b} differ in {sorted(diff)}"


def notebook_teacher(train, path, seed=0):
    """An untrained notebook teacher for `train` (a folder split) at 28x28, saved as a teacher file."""
    torch.manual_seed(seed)
    model, record = build(from_flags(teacher_image_size=28).teacher, train, "teacher", log=lambda line: None)
    save_model(model, path, "teacher", train.num_classes, record=record)
    return path


# -- 1. the listing --------------------------------------------------------------------------------

def test_the_listing_and_class_order_are_torchvisions(tmp_path):
    """scan/load_folder list exactly what torchvision.datasets.ImageFolder lists: classes sorted
    as strings (upper case first, c10 before c2), files walked in sorted order into nested and
    hidden folders, extensions matched case-insensitively, other files left out; every file
    decodes, and the pixels of the lossless formats (PNG, BMP, TIFF) are those of ImageFolder's
    PIL loader."""
    from torchvision.datasets import ImageFolder

    root = tmp_path / "train"
    g = torch.Generator().manual_seed(0)
    names = ["b/1.PNG", "b/0.Jpg", "b/B.png", "b/a.png", "Zebra/z.jpeg", "Zebra/deep/er/x.png", "Zebra/deep/y.PNG",
             "Zebra/aa/w.png", "apple/v.webp", "apple/sub/u.bmp", "apple/q.tif", "c10/x.webp", "c2/w.bmp",
             "c2/.hidden/v.png"]
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g)
        suffix = path.suffix.lower()
        if suffix == ".png":
            path.write_bytes(encode_image(img))
        elif suffix in (".jpg", ".jpeg"):
            path.write_bytes(encode_image(img, "jpg", quality=75))
        else:  # webp, bmp, tif: written by PIL
            from PIL import Image

            Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "apple" / "README").write_text("not an image")
    (root / "Zebra" / "deep" / "x.png.txt").write_text("not an image")

    tv = ImageFolder(str(root))
    index = scan(root)
    assert tv.classes == ["Zebra", "apple", "b", "c10", "c2"] and list(index.classes) == tv.classes
    assert {c: i for i, c in enumerate(index.classes)} == tv.class_to_idx
    assert [(str(root / p), int(c)) for p, c in zip(index.paths, index.labels)] == tv.samples
    assert len(index) == len(names)  # every image, no .txt, no README
    assert "b/notes.txt" not in index.paths and "b/0.Jpg" in index.paths and "c2/.hidden/v.png" in index.paths
    split = load_folder(tmp_path, "train", channels=3, workers=0)
    assert list(split.index.paths) == list(index.paths) and split.labels.tolist() == tv.targets
    assert split.num_classes == 5
    batch = split.at({"image_size": [8, 8]}).dataset_for().__getitems__(list(range(len(split))))
    for i, (path, _) in enumerate(tv.samples):
        if path.lower().endswith((".png", ".bmp", ".tif")):
            want = torch.from_numpy(np.array(tv.loader(path))).permute(2, 0, 1)
            assert torch.equal(batch["images"][i], want), path


# -- 2. crops: a pure function of (seed, view, index) ---------------------------------------------

@pytest.fixture(scope="module")
def odd_sizes(tmp_path_factory):
    """40 noise images of five sizes (portrait, landscape, square) in 3 classes."""
    root = tmp_path_factory.mktemp("sizes") / "train"
    g = torch.Generator().manual_seed(1)
    sizes = [(28, 28), (40, 30), (30, 44), (33, 35), (64, 20)]
    for i in range(40):
        h, w = sizes[i % len(sizes)]
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        path = root / f"k{i % 3}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_image(img))
    return root


def test_crops_are_the_same_in_any_worker_and_batch_and_epoch_e_is_view_e(odd_sizes):
    """folder_loader with 0 or 2 workers and batches of 7, 16 or 5 gives each sample the same
    crop and the same pixels; epoch e's order is EpochPermutation's and its crops are
    DrawnCrops' view e (drawn in the main process here); the pixels are torchvision's
    resized_crop of the decoded file with those crops (and flip)."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    index = scan(odd_sizes)
    seed, n, epochs = 1234, len(index), 3
    ds = FolderDataset(index, 3, View((24, 24)), DrawnCrops(seed))
    runs = {}
    for workers, batch_size in ((0, 7), (2, 16), (2, 5)):
        loader = folder_loader(ds, batch_size, workers, "cpu", shuffle=True, seed=77)
        got = []
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch)
            batches = list(loader)
            idx = torch.cat([b["idx"] for b in batches])
            assert torch.equal(idx, EpochPermutation(n, 77).permutation(epoch)), (workers, batch_size, epoch)
            assert all(b["crops"].dtype == torch.uint16 for b in batches)
            crops, imgs = torch.empty(n, 5, dtype=torch.int32), torch.empty(n, 3, 24, 24, dtype=torch.uint8)
            crops[idx] = torch.cat([b["crops"] for b in batches]).to(torch.int32)  # torch has no uint16 index_put
            imgs[idx] = torch.cat([b["images"] for b in batches])
            got.append((crops, imgs))
        runs[workers, batch_size] = got
    ref = runs[0, 7]
    for key, got in runs.items():
        for epoch in range(epochs):
            assert torch.equal(got[epoch][0], ref[epoch][0]) and torch.equal(got[epoch][1], ref[epoch][1]), (key, epoch)

    # the files are RGB PNGs: PIL's pixels are any lossless decoder's, [3, H, W]
    decoded = [torch.from_numpy(np.array(Image.open(Path(index.root) / p))).permute(2, 0, 1) for p in index.paths]
    heights = torch.tensor([d.shape[-2] for d in decoded])
    widths = torch.tensor([d.shape[-1] for d in decoded])
    for epoch in range(epochs):
        view = DrawnCrops(seed, view=epoch).params(None, np.arange(n), heights, widths)
        assert torch.equal(ref[epoch][0], view.to(torch.int32)), epoch
    assert not torch.equal(ref[0][0], ref[1][0]) and not torch.equal(ref[1][0], ref[2][0])  # a fresh view per epoch
    for i in range(n):  # the reference pipeline, sample by sample
        crops = ref[1][0][i]
        top, left, h, w = crop_pixels(crops, *decoded[i].shape[-2:])
        want = F.resized_crop(decoded[i], top, left, h, w, [24, 24], antialias=True)
        want = F.horizontal_flip(want) if int(crops[4]) else want
        assert torch.equal(ref[1][1][i], want), i


# -- 3. the folder trains as the same data in memory ------------------------------------------------

@pytest.mark.slow  # end to end twice: a folder run and the in-memory run of the same images (5 s)
def test_a_folder_trains_bit_for_bit_as_the_same_images_in_memory(images, folder, memory_copy, folder_run, tmp_path):
    """distill.py from the PNG folder (2 decoding workers) and from the same images in the
    same order held in memory (IDX files, --dataset mnist): every phase draws the same samples
    in the same order (EpochPermutation of the seed), with the same pixels (the folder's batch
    images are the in-memory images[idx]); the teacher, its logits cache, the distilled student
    and the baseline are equal bit for bit, and so are the test accuracies."""
    xtr, ytr, _, _ = images
    out, seen = folder_run
    mem_out = tmp_path / "memory"
    mem_seen = distill(["--dataset", "mnist", "--data-dir", memory_copy, *COMMON], mem_out)
    in_memory = xtr[folder_order(ytr)]  # the Split's images: sample i = the folder's file i
    steps = {"teacher": 6, "student": 12, "baseline": 12}
    assert {k: len(v) for k, v in seen.items()} == steps and {k: len(v) for k, v in mem_seen.items()} == steps
    for phase in steps:
        for step, ((idx, imgs, crops), (midx, mimgs, _)) in enumerate(zip(seen[phase], mem_seen[phase])):
            assert torch.equal(idx, midx) and torch.equal(imgs, mimgs), (phase, step)
            assert torch.equal(imgs, in_memory[idx]) and crops is None, (phase, step)
        for epoch in range(len(seen[phase]) // 6):
            order = torch.cat([b[0] for b in seen[phase][6 * epoch:6 * epoch + 6]])
            assert torch.equal(order, EpochPermutation(N_TRAIN, 3).permutation(epoch)), (phase, epoch)
    for phase in ("teacher", "student", "baseline"):
        all_same(out / f"{phase}.safetensors", mem_out / f"{phase}.safetensors")
    all_same(out / "teacher_logits.safetensors", mem_out / "teacher_logits.safetensors",
             skip=("file_hashes", "content", "file_paths", "file_path_offsets"))  # the folder's identity columns
    assert "file_hashes" in load_file(out / "teacher_logits.safetensors")  # the folder's cache names its files
    metrics, mem_metrics = (json.loads((o / "metrics.json").read_text()) for o in (out, mem_out))
    for phase in ("teacher", "student", "baseline"):
        assert metrics[phase]["test_accuracy"] == mem_metrics[phase]["test_accuracy"], phase


# -- 4. a K-view cache from a folder replays ------------------------------------------------------

def test_a_k_view_cache_from_a_folder_replays_view_e_mod_k(folder, tmp_path):
    """distill.py --augment rrc --views 2 with a given teacher (the folder's first 100 images):
    the crops stored in the cache are DrawnCrops(stream_seed("cache", augment seed), view v)'s;
    the student's batches of epoch e carry view e mod 2's crops (epoch 2 replays view 0), and
    the teacher run on the student's actual input gives the logits the student was taught
    (fp16 rounding)."""
    n = 100  # 2 steps an epoch
    train = load_folder(folder, "train", channels=1, workers=0)
    teacher_file = notebook_teacher(train, tmp_path / "teacher.safetensors")
    check, close = replay_check(teacher_file)
    out = tmp_path / "run"
    seen = distill([*FOLDER, "--data-dir", folder, "--limit-train", n, "--limit-test", "50", "--image-size", "28",
                    "--augment", "rrc", "--views", "2", "--augment-seed", "5", "--epochs", "3", "--batch-size", "50",
                    "--teacher", teacher_file, "--no-baseline"], out, hooks=[check])
    stored = load_file(out / "teacher_logits.rrc.2views.safetensors")
    params = stored["params"]
    assert params.dtype == torch.uint16 and params.shape == (2, n, 5)
    assert stored["logits"].shape == (2, n, 10) and stored["logits"].dtype == torch.float16
    side = torch.full((n,), 28)
    for v in range(2):
        drawn = DrawnCrops(stream_seed("cache", 5), view=v).params(None, np.arange(n), side, side)
        assert torch.equal(params[v], drawn), v
    assert not torch.equal(params[0], params[1])
    assert len(seen["student"]) == 3 * 2 and len(close) == 3 * 2 and all(close)
    for step, (idx, _, crops) in enumerate(seen["student"]):
        assert torch.equal(crops, params[(step // 2) % 2][idx]), step


def test_a_cache_recomputed_in_the_same_process_is_the_one_replayed(folder, tmp_path):
    """Two distill.py runs in one process (as tests, notebooks or a study call it) in one run
    folder, decoding in the main process (--num-workers 0): the second, with another
    --augment-seed, recomputes the K-view cache at the same path, and its student replays the
    new cache's crops, on which the teacher gives the logits it is taught, not the old file's."""
    n = 100
    teacher_file = notebook_teacher(load_folder(folder, "train", channels=1), tmp_path / "teacher.safetensors")
    out = tmp_path / "run"
    for seed in ("5", "6"):
        check, close = replay_check(teacher_file)
        seen = distill(["--dataset", "imagefolder", "--channels", "1", "--num-workers", "0", "--data-dir", folder,
                        "--limit-train", n, "--limit-test", "50", "--image-size", "28", "--augment", "rrc", "--views",
                        "2", "--augment-seed", seed, "--epochs", "1", "--batch-size", "50", "--teacher", teacher_file,
                        "--no-baseline"], out, hooks=[check])
        params = load_file(out / "teacher_logits.rrc.2views.safetensors")["params"]
        for step, (idx, _, crops) in enumerate(seen["student"]):
            assert torch.equal(crops, params[0][idx]), (seed, step)
        assert len(close) == 2 and all(close), seed


# -- 5. 1 and 2 processes write the same K-view cache --------------------------------------------

@pytest.mark.slow
def test_one_and_two_processes_write_the_same_k_view_cache(folder, tmp_path):
    """launch/precompute_logits.py on the folder (RRC, 2 views) under 2 processes (accelerate
    launch, gloo) and its main in this one (a process of its own spent 2-3 s on its imports):
    every tensor of the two caches and their metadata are equal.
    RGB (3 channels, the default): the script has no --channels yet
    (test_the_folder_flags_reach_every_script_that_reads_a_folder)."""
    from conftest import run_script

    teacher_file = notebook_teacher(load_folder(folder, "train", channels=3), tmp_path / "teacher.safetensors")
    caches = {}
    for nproc in (1, 2):
        caches[nproc] = tmp_path / f"cache{nproc}.safetensors"
        args = ["--dataset", "imagefolder", "--data-dir", folder, "--augment", "rrc", "--views", "2", "--teacher",
                teacher_file, "--out", caches[nproc], "--output-dir", tmp_path / f"run{nproc}"]
        if nproc == 1:
            run_main(cli.precompute_main, args)
        else:
            run_script("precompute_logits.py", *args, nproc=nproc)
    all_same(caches[1], caches[2])
    assert read_metadata(caches[1]) == read_metadata(caches[2])
    assert load_file(caches[1])["params"].shape == (2, N_TRAIN, 5)


# -- 6. resume, with workers ------------------------------------------------------------------------

class Crash(Exception):
    pass


@pytest.mark.slow
def test_a_killed_folder_run_resumes_to_the_uninterrupted_weights(folder, folder_run, tmp_path):
    """distill.py from the folder with 2 workers and --checkpoint-every 4, stopped after the
    teacher's step 5 and resumed (--resume latest) from its step 4, mid-epoch; stopped again
    after the student's step 9 and resumed from step 8, mid-epoch 2: the teacher, cache,
    student and baseline equal the uninterrupted run's bit for bit."""
    ref, _ = folder_run
    out = tmp_path / "run"
    args = [*FOLDER, "--data-dir", folder, *COMMON, "--checkpoint-every", "4"]
    batches = []  # of each run, by phase
    for stop, extra in (("teacher:5", []), ("student:9", ["--resume", "latest"]), (None, ["--resume", "latest"])):
        def crash(label, global_step, stop=stop):
            if f"{label}:{global_step}" == stop:
                raise Crash(stop)

        seen = {}
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(training.HOOKS, "step", [crash])
            if stop is None:
                distill([*args, *extra], out, seen=seen)
            else:
                with pytest.raises(Crash):
                    distill([*args, *extra], out, seen=seen)
        batches.append({k: len(v) for k, v in seen.items()})
    # the teacher resumed at its step 4 of 6, the student at its step 8 of 12
    assert batches == [{"teacher": 5}, {"teacher": 6 - 4, "student": 9}, {"student": 12 - 8, "baseline": 12}]
    for name in ("teacher.safetensors", "teacher_logits.safetensors", "student.safetensors", "baseline.safetensors"):
        all_same(ref / name, out / name)


@pytest.mark.slow
def test_a_killed_folder_precompute_resumes_at_the_next_view(accelerator, folder, tmp_path, monkeypatch, capsys):
    """A 3-view precompute from the folder (2 workers) stopped after view 0 keeps view 0,
    computes views 1 and 2 only, and writes the cache an uninterrupted precompute writes."""
    train = load_folder(folder, "train", channels=1, workers=2)
    teacher_file = notebook_teacher(train, tmp_path / "teacher.safetensors")
    cfg = from_flags(dataset="imagefolder", channels=1, augment="rrc", views=3)
    whole, out, computed, printed = precompute_killed_and_resumed(accelerator, cfg, teacher_file, train, tmp_path,
                                                                  monkeypatch, capsys, crash_after=0)
    assert computed == [1, 2] and "1 of 3 views kept from an interrupted precompute" in printed
    all_same(whole, out)
    assert read_metadata(whole) == read_metadata(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "teacher.safetensors", "whole.safetensors"]


# -- 7. top-k storage written row by row ------------------------------------------------------------

@pytest.mark.parametrize("classes, k, index_dtype", [(1000, 5, torch.int16), (10, 3, torch.uint8)])
def test_top_k_written_row_by_row_is_save_caches(classes, k, index_dtype, tmp_path):
    """CacheWriter (rows in shuffled batches, view by view) stores what save_cache stores for
    the same logits: topk_index in the smallest type (int16 for 1000 classes, uint8 for 10),
    the top-k log-probabilities and classes of compress_topk, the same metadata; and
    open_cache reads it back (checksums verified)."""
    views, n = 2, 64
    g = torch.Generator().manual_seed(classes)
    logits = torch.randn(views, n, classes, generator=g) * 4
    labels = torch.randint(0, classes, (n,), generator=g)
    key = CacheKey("imagefolder", "train", n, classes, "teacher", "data", "rrc", 0, "28x28")
    written, saved = tmp_path / "written.safetensors", tmp_path / "saved.safetensors"
    writer = CacheWriter(written, key, views, labels, "fp16", k)
    for v in range(views):
        order = torch.randperm(n, generator=g)
        for rows in order.split(9):
            writer.write(v, rows, logits[v, rows])
        writer.view_done(v)
    writer.finish()
    save_cache(saved, logits, labels, key, "fp16", topk=k)
    t = load_file(written)
    assert t["topk_index"].dtype == index_dtype and t["topk_logp"].dtype == torch.float16
    assert t["topk_index"].shape == t["topk_logp"].shape == (views, n, k)
    all_same(written, saved)
    assert read_metadata(written) == read_metadata(saved)
    logp, index = compress_topk(logits, k)
    assert torch.equal(t["topk_index"].long(), index) and torch.equal(t["topk_logp"], logp.half())
    soft = open_cache(written, key, views=views)
    rows = torch.arange(n)
    assert soft.storage == f"top{k}" and torch.equal(soft.gather(1, rows), open_cache(saved, key).gather(1, rows))


# -- the folder flags -------------------------------------------------------------------------------

def test_the_folder_flags_reach_every_script_that_reads_a_folder():
    """train_teacher.py and precompute_logits.py read --dataset imagefolder too: they need
    --channels (a grey folder's teacher and cache are 1-channel, and the cache key's data
    fingerprint says the channels) and --num-workers, as distill.py and compare.py have them."""
    for script, parser in cli.PARSERS.items():
        if script == "inspect_logits.py":
            continue
        flags = {s for a in parser()._actions for s in a.option_strings}
        assert {"--dataset", "--data-dir"} <= flags, script
        missing = {"--channels", "--num-workers"} - flags
        assert not missing, f"{script} has no {', '.join(sorted(missing))}"


def test_evaluation_and_precompute_leave_no_worker_behind(folder, accelerator):
    """The training loader keeps its workers for the next epoch; an evaluation's stop when it
    ends. (The Accelerator keeps every loader it prepared until the next phase: persistent
    evaluation workers piled up, two more idle processes per epoch.)"""
    import multiprocessing

    from kd_accel.evaluation import evaluate

    prep = {"image_size": [28, 28], "resize_size": None, "interpolation": "bilinear"}
    split = load_folder(folder, "test", channels=1, workers=2).at(prep)
    model = build(from_flags(arch="notebook:student").student, split, "student", log=lambda line: None)[0]
    before = set(multiprocessing.active_children())
    for _ in range(2):
        evaluate(accelerator, model, split)
    assert set(multiprocessing.active_children()) <= before
    train = load_folder(folder, "train", channels=1, workers=2).at(prep)
    loader = train.train_data().loader(accelerator, 50, seed=0)
    next(iter(loader))
    assert len(set(multiprocessing.active_children()) - before) == 2  # the training loader's, kept


@pytest.mark.slow
def test_memory_does_not_grow_with_the_folder(tmp_path):
    """Issue 19, item 5, small: 1000 classes, N = 1,000 and 10,000 tiny grey PNGs; distill.py
    (teacher, full fp32 cache, student) in a fresh process each, decoding in-process, malloc's
    defaults. The cache at N = 10,000 holds 40 MB of logits, and an [N, C] float32 anywhere would
    add 36 MB between the two: each phase's peak anonymous memory may grow by less than half of
    that (the folder's listing, 8-byte hashes and per-sample bookkeeping are a few MB)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    def run(n):
        root = tmp_path / f"n{n}"
        g = torch.Generator().manual_seed(n)
        x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
        write_image_folder(root / "train", x, torch.arange(n) % 1000)
        write_image_folder(root / "val", x[:1000], torch.arange(1000))
        env = {**os.environ, "KD_ACCEL_KEEP_FREED_MEMORY": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "folder_memory.py"), str(root),
                               str(tmp_path / f"run{n}")], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    small, big = run(1000), run(10000)
    assert big["cache_bytes"] > 40e6 > 10 * small["cache_bytes"] / 1.2  # the caches do scale with N
    for phase in ("teacher", "precompute", "student"):  # each phase's own peak: one cannot hide another's
        assert big["peak"][phase] - small["peak"][phase] < 18, (phase, small, big)
