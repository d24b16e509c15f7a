"""kd_accel/data/folder.py (issue 19 groundwork): an image folder's identity from `stat` alone,
and bad folders refused. That it is listed as torchvision's ImageFolder lists it is checked in
tests/test_imagefolder.py (test_the_listing_and_class_order_are_torchvisions)."""
import builtins
import os

import pytest
import torch

from kd_accel.data.folder import differences, scan
from kd_accel.errors import KDError


def touch(path, size=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "train"
    for name in ("b/1.png", "b/0.JPG", "a/z.jpeg", "a/sub/y.png", "a/notes.txt", "c10/x.webp", "c2/w.bmp",
                 "c2/.hidden/v.png"):
        touch(root / name, size=len(name))
    return root


def test_the_identity_is_stat_only_and_sees_every_change(tree, monkeypatch):
    ref = scan(tree)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    again = scan(tree)
    monkeypatch.undo()
    assert opened == [] and again.fingerprint() == ref.fingerprint()  # no file's bytes read
    assert torch.equal(again.file_hashes(), ref.file_hashes()) and ref.file_hashes().dtype == torch.int64

    def changed(edit):
        edit()
        now = scan(tree)
        return now.fingerprint() != ref.fingerprint(), differences(ref.classes, ref.file_hashes(), now)

    fp, why = changed(lambda: touch(tree / "b" / "2.png"))  # added
    assert fp and why.startswith("1 files added or changed, 0 removed or changed") and why.endswith("b/2.png")
    os.remove(tree / "b" / "2.png")
    assert differences(ref.classes, ref.file_hashes(), scan(tree)) is None
    fp, why = changed(lambda: os.rename(tree / "a" / "z.jpeg", tree / "a" / "zz.jpeg"))  # renamed
    assert fp and why.startswith("1 files added or changed, 1 removed or changed") and "first differing path: a/zz.jpeg" in why
    os.rename(tree / "a" / "zz.jpeg", tree / "a" / "z.jpeg")
    fp, why = changed(lambda: touch(tree / "c2" / "w.bmp", size=99))  # same name, other size
    assert fp and "first differing path: c2/w.bmp" in why
    touch(tree / "c2" / "w.bmp", size=len("c2/w.bmp"))
    fp, why = changed(lambda: os.remove(tree / "c2" / "w.bmp"))  # removed: the file now in its place is named
    assert fp and "0 files added or changed, 1 removed" in why and why.endswith("first differing path: c2/.hidden/v.png")
    touch(tree / "c2" / "w.bmp", size=len("c2/w.bmp"))
    last = tree / "c2" / ".hidden" / "v.png"  # the last sample (torchvision walks c2 before c2/.hidden)
    fp, why = changed(lambda: os.remove(last))
    assert fp and why.endswith("first differing path: after c2/w.bmp (files removed at the end)")
    touch(last, size=len("c2/.hidden/v.png"))
    fp, why = changed(lambda: touch(tree / "d" / "q.png"))  # a new class
    assert fp and why == "the class list changed (added d)"


@pytest.mark.parametrize("make, words", [
    (lambda root: None, "not found"),
    (lambda root: touch(root, 3), "is not a folder"),
    (lambda root: touch(root / "loose.png"), "has no class folders"),
    (lambda root: (touch(root / "a" / "x.png"), touch(root / "b" / "readme.txt")), "class folder"),
])
def test_bad_folders_are_one_line(make, words, tmp_path):
    root = tmp_path / "train"
    make(root)
    with pytest.raises(KDError) as e:
        scan(root)
    assert words in str(e.value) and "\n" not in str(e.value)
