"""Issue 25, as a rule: every change to an image folder (a file's bytes, its name, its size, the
class list, the split it is in) is caught and named correctly, before anything trained on stale
logits is kept.

One reference run (teacher, 1-view cache) on a folder whose images all have one size (noise PNGs
of 28x28 do), so that a swap or a rewrite keeps every path and size: only the bytes tell. Each kind
of change is made on a copy of the folder, which is then used two ways: with the reference's
teacher and cache in a fresh run folder (`--logits`: the cache's own record names the change),
and in a copy of the reference run folder (its teacher reused: its listing and its ledger of the
bytes read name the change)."""
import os
import shutil

import pytest

from conftest import run_main, write_image_folder
from kd_accel import cli
from kd_accel.data import load_folder
from kd_accel.errors import KDError, worker_message
from test_folder_errors import FOLDER, TEACHING, images

import torch


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(data folder, run folder) of a finished distill run: teacher, cache, student."""
    root = tmp_path_factory.mktemp("changes")
    data = root / "data"
    write_image_folder(data / "train", images(60), torch.arange(60) % 3)
    write_image_folder(data / "val", images(30, seed=1), torch.arange(30) % 3)
    sizes = {p.stat().st_size for p in (data / "train").rglob("*.png")}
    assert len(sizes) == 1, "the reference needs images of one size, so that a swap keeps every size"
    run = root / "run"
    run_main(cli.distill_main, [*TEACHING, "--data-dir", data, "--output-dir", run, "--augment", "none",
                                "--num-workers", "2"])  # the workers write the ledger
    return data, run


def _restamp(path, stat):
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the change leaves the mtime as it was


def change(data, how):
    """Change DIR/train (or DIR/val) as `how` says; returns the words a refusal must hold."""
    train = data / "train"
    c1 = sorted((train / "c1").iterdir())
    if how == "added":
        shutil.copy(c1[0], train / "c1" / "00000extra.png")
        return ["c1/00000extra.png (added)", "1 added"]
    if how == "removed":
        c1[2].unlink()
        return [f"c1/{c1[2].name} (removed)", "1 removed"]
    if how == "renamed":
        c1[2].rename(c1[2].with_name("zz.png"))
        return [f"c1/{c1[2].name} (removed)", "1 removed, 1 added"]
    if how == "resized":
        c1[2].write_bytes(c1[2].read_bytes() + b"\0")
        return [f"c1/{c1[2].name} (changed in size)"]
    if how == "moved to another class":
        c1[2].rename(train / "c2" / c1[2].name)
        return [f"c1/{c1[2].name} (removed)", "1 removed, 1 added"]
    if how == "class renamed":  # in both splits (renamed in train/ alone, val/ would hold a class train/ lacks)
        for split in (train, data / "val"):
            (split / "c1").rename(split / "d1")
        return ["class list changed (added d1; removed c1)"]
    if how == "rewritten, same size and mtime":
        stat = c1[2].stat()
        c1[2].write_bytes(c1[0].read_bytes())
        _restamp(c1[2], stat)
        return [f"c1/{c1[2].name} changed since", "same path and size, other bytes"]
    if how == "two images swapped":
        a, b = c1[1].read_bytes(), c1[2].read_bytes()
        sa, sb = c1[1].stat(), c1[2].stat()
        c1[1].write_bytes(b)
        c1[2].write_bytes(a)
        _restamp(c1[1], sa)
        _restamp(c1[2], sb)
        return [("changed since",), (f"c1/{c1[1].name}", f"c1/{c1[2].name}")]  # whichever is read first
    raise ValueError(how)


STAT_KINDS = ["added", "removed", "renamed", "resized", "moved to another class", "class renamed"]
CONTENT_KINDS = ["rewritten, same size and mtime", "two images swapped"]


def _holds(line, words):
    """Every entry of `words` in `line`: a string, or a tuple of which one will do."""
    return all(any(w in line for w in ((word,) if isinstance(word, str) else word)) for word in words)


def _refusal(args):
    with pytest.raises(KDError) as e:
        run_main(cli.distill_main, args)
    return worker_message(e.value)


@pytest.mark.parametrize("how", STAT_KINDS + CONTENT_KINDS)
def test_every_change_is_refused_by_the_cache_naming_the_file(reference, tmp_path, how):
    data, run = reference
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    words = change(copy, how)
    out = tmp_path / "other"
    line = _refusal([*FOLDER, "--data-dir", copy, "--output-dir", out, "--augment", "none", "--num-workers", "0",
                     "--teacher", run / "teacher.safetensors", "--logits", run / "teacher_logits.safetensors"])
    assert "\n" not in line and _holds(line, words), line
    assert not (out / "student.safetensors").exists()  # nothing trained on the stale logits is kept


@pytest.mark.parametrize("how", ["renamed", "rewritten, same size and mtime",
                                 pytest.param("two images swapped", marks=pytest.mark.slow),
                                 pytest.param("resized", marks=pytest.mark.slow)])
def test_every_change_is_refused_in_the_run_folder_that_read_it(reference, tmp_path, how):
    """The run folder's own teacher is reused (the stamp names a listing change) or its ledger
    names the file whose bytes changed, in the first pass that reads it (here the student's
    first epoch: the cache hits), before the batch holding it is trained."""
    data, run = reference
    copy, run_copy = tmp_path / "data", tmp_path / "run"
    shutil.copytree(data, copy)
    shutil.copytree(run, run_copy)
    words = change(copy, how)
    line = _refusal([*TEACHING, "--data-dir", copy, "--output-dir", run_copy, "--augment", "none", "--num-workers", "0"])
    if how in CONTENT_KINDS:
        assert "\n" not in line and _holds(line, words), line
    else:
        assert "teacher" in line and words[0] in line, line
    assert not (run_copy / "teacher_logits.safetensors").exists() or \
        (run_copy / "teacher_logits.safetensors").read_bytes() == (run / "teacher_logits.safetensors").read_bytes()


def test_a_ledger_records_what_workers_read_and_a_copied_folder_still_hits(reference, tmp_path):
    """The ledger is filled by the DataLoader workers that read the files (the reference ran 2),
    and a byte-for-byte copy of the folder elsewhere (new inodes and mtimes) is the same folder."""
    import numpy as np

    data, run = reference
    ledgers = sorted((run / ".folders").glob("*.content"))
    assert len(ledgers) == 2  # train and val
    for ledger in ledgers:
        assert (np.fromfile(ledger, dtype="<i8") != 0).all(), ledger  # every file read was recorded
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "other"
    run_main(cli.distill_main, [*FOLDER, "--data-dir", copy, "--output-dir", out, "--augment", "none", "--num-workers",
                                "0", "--teacher", run / "teacher.safetensors", "--logits", run / "teacher_logits.safetensors"])
    assert (out / "student.safetensors").exists()
    split = load_folder(copy, "train")
    assert split.fingerprint() == load_folder(data, "train").fingerprint()


def test_the_decoders_version_is_part_of_the_fingerprint(reference, monkeypatch):
    """A change to the pixels a file decodes to is a change of the data: caches, checkpoints and
    models made under another decoder are refused as made from other data."""
    from kd_accel.data import streamed

    data, _ = reference
    before = load_folder(data, "train").fingerprint()
    monkeypatch.setattr(streamed, "DECODER_VERSION", streamed.DECODER_VERSION + 1)
    assert load_folder(data, "train").fingerprint() != before


def test_a_cache_made_from_other_bytes_than_the_run_folder_read_is_refused(tmp_path):
    """The ledger's merge of a cache's record: a file the run folder read with other bytes than
    the cache's precompute read is refused up front, naming it; unknown rows are taken."""
    import numpy as np

    from kd_accel.data.content import Ledger

    ledger = Ledger.open(tmp_path / "x.content", 4)
    ledger.check(np.array([0, 1]), np.array([11, 12]), str)  # the run folder read files 0 and 1
    name = lambda i: f"file{i}.png"  # noqa: E731
    with pytest.raises(KDError, match="1 files differ, first file1.png"):
        ledger.merge(np.array([11, 99, 13, 14]), "logits cache C", name)
    ledger.merge(np.array([11, 12, 13, 14]), "logits cache C", name)  # the same bytes: taken
    assert np.fromfile(tmp_path / "x.content", dtype="<i8").tolist() == [11, 12, 13, 14]
