"""Image folders in torchvision's ImageFolder layout, listed and fingerprinted from `stat` alone.

The listing and the identity of a folder; streamed.py decodes its files in DataLoader workers.

    ROOT/<class>/**/<file>.<ext>      (ROOT is DIR/train or DIR/val)

Classes are the sub-folders of ROOT in sorted order (torchvision's find_classes); the files of a
class are those under it with an image extension, case-insensitive, walked in sorted order
(torchvision's make_dataset), so sample i is the i-th file of that order, the key of every
index-keyed cache. A folder's identity is its class list and its files' relative paths and
sizes: `stat` only, no image byte is read, so it is fast enough to check on every run. Each
file is also hashed to 8 bytes (FolderIndex.file_hashes, [N] int64: 10 MB for ImageNet), which
a cache can keep beside its logits so that a folder changed since is refused naming how many
files differ and the first differing path (differences).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import KDError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class PathList:
    """N relative paths held as one UTF-8 buffer and N+1 offsets: two numpy arrays, not N
    Python strings (1.28M of those are ~150 MB per process, copied into every worker and
    touched by its reference counts); indexable and iterable like a tuple of str."""

    def __init__(self, paths: Iterable[str]) -> None:
        encoded = [p.encode() for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices, IndexError
        return self.buffer[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def head(self, n: int) -> PathList:
        return PathList(self[:n])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(buffer uint8 [bytes], offsets int64 [N+1]): how a listing or a cache stores the paths."""
        return torch.from_numpy(self.buffer.copy()), torch.from_numpy(self.offsets.copy())


@dataclass(frozen=True, eq=False)
class FolderIndex:
    root: str
    classes: tuple  # class names, sorted; label c is classes[c]
    paths: PathList  # relative to root, "/"-separated, in sample order
    labels: np.ndarray  # [N] int64: class index of each path
    sizes: np.ndarray  # [N] int64: bytes of each file

    def __len__(self):
        return len(self.paths)

    def head(self, n: int | None) -> FolderIndex:
        """The first n files (--limit-train/--limit-test): indices stay 0..n-1."""
        if n is None or n >= len(self):
            return self
        return FolderIndex(self.root, self.classes, self.paths.head(n), self.labels[:n], self.sizes[:n])

    def file_hashes(self) -> torch.Tensor:
        """[N] int64: 8 bytes of sha256 over (relative path, size) per file, in sample order."""
        digests = b"".join(hashlib.sha256(f"{p}\0{s}".encode()).digest()[:8]
                           for p, s in zip(self.paths, self.sizes.tolist()))
        return torch.from_numpy(np.frombuffer(digests, dtype="<i8").copy())

    def fingerprint(self) -> str:
        """sha256 (32 hex digits) over the class list and every file's relative path, size and label."""
        h = hashlib.sha256("\0".join(self.classes).encode() + b"\1")
        for p, s, c in zip(self.paths, self.sizes.tolist(), self.labels.tolist()):
            h.update(f"{p}\0{s}\0{c}\n".encode())
        return h.hexdigest()[:32]


def _check_utf8(name, path, what):
    """One line when `name` (a part of `path`) is not valid UTF-8: os gives such bytes as lone surrogates."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise KDError(f"{what} {os.fsencode(path)!r} has a name that is not valid UTF-8; kd_accel writes its paths "
                      "into JSON and safetensors metadata, which need UTF-8: rename it") from None


def _dangling(path):
    return KDError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist (or cannot be reached): "
                   "what it stands for cannot be known (a missing file would stop the run later; a missing folder "
                   "would leave images out and shift the samples after them): remove the link or restore its target")


_NOT_REGULAR = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                (stat.S_ISSOCK, "socket"))


def _walk(class_dir):
    """[(folder, [file DirEntry])] under class_dir, every folder once, in torchvision's order (its
    make_dataset walks os.walk(followlinks=True), sorted): links to folders are followed, but one
    pointing back at a folder that holds it is refused (os.walk would follow it until the kernel's
    link limit, listing every image under it once per level); a folder that cannot be listed,
    or a dangling link, is one line (os.walk skips both silently: images left out)."""
    out = []
    top = os.path.realpath(class_dir)
    stack = [(os.fspath(class_dir), top, frozenset([top]))]
    while stack:
        folder, real, chain = stack.pop()  # real: its path without links; chain: those of it and the folders above
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            raise KDError(f"cannot list folder {folder}: {e.strerror or e} (its images would be left out, shifting the "
                          "samples after them)") from None
        files = []
        for e in entries:
            try:
                is_dir = e.is_dir()  # follows links, as os.walk(followlinks=True) does
            except OSError:
                is_dir = False
            if is_dir:
                inner = os.path.realpath(e.path) if e.is_symlink() else os.path.join(real, e.name)
                if inner in chain:
                    raise KDError(f"{e.path} is a symbolic link to {os.readlink(e.path)}, a folder that holds it: "
                                  "following it would list the same images again at every level (torchvision's "
                                  "ImageFolder does); remove the link")
                stack.append((e.path, inner, chain | {inner}))
            elif e.is_symlink() and not os.path.exists(e.path):
                raise _dangling(e.path)
            else:
                files.append(e)
        out.append((folder, files))
    return sorted(out, key=lambda t: t[0])


def scan(root: str | Path, extensions: tuple[str, ...] = IMG_EXTENSIONS,
         classes: Sequence[str] | None = None) -> FolderIndex:
    """The FolderIndex of ROOT, or one line saying what is wrong: not a folder, no class
    folders, or a training class folder without a single image (torchvision refuses it too: an
    empty class would shift every label after it); a name that is not valid UTF-8, a dangling symbolic link,
    a link looping back to a folder above it, a folder that cannot be listed, an image name on
    something that is not a regular file (a named pipe would block a worker for ever): each named
    at scan time, before any work.

    `classes`: the training split's class list, when ROOT is the validation split: its labels are
    then the training split's indices of its class folders' names, whose list the index keeps
    (so the model's outputs and the labels agree), ROOT may lack some of them, and a class
    folder the training split lacks is one line (the model has no output for it)."""
    root = Path(root)
    if not root.is_dir():
        raise KDError(f"image folder {root} {'is not a folder' if root.exists() else 'not found'}")
    found = []
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            _check_utf8(e.name, e.path, "class folder")
            found.append(e.name)
        elif e.is_symlink() and not os.path.exists(e.path):  # perhaps a class folder: its class would vanish
            raise _dangling(e.path)
    if not found:
        raise KDError(f"image folder {root} has no class folders (expected {root}/<class>/<image files>)")
    validation = classes is not None
    classes = classes if validation else found
    extra = sorted(set(found) - set(classes))
    if extra:
        them = "them" if len(extra) > 1 else "it"
        raise KDError(f"{root} has class folder{'s' * (len(extra) > 1)} {', '.join(extra[:3])}"
                      f"{' ...' if len(extra) > 3 else ''} that the training split lacks: the model has no output for "
                      f"{them}; remove {them} from {root} or add {them} to the training split")
    label = {name: c for c, name in enumerate(classes)}
    paths, labels, sizes = [], [], []
    for name in found:
        before = len(paths)
        for folder, files in _walk(root / name):  # torchvision's order
            for e in sorted(files, key=lambda e: e.name):
                if not e.name.lower().endswith(extensions):
                    continue
                rel = Path(os.path.relpath(e.path, root)).as_posix()
                if not rel.isascii():
                    _check_utf8(rel, e.path, "image file")
                try:
                    st = e.stat()
                except OSError as err:
                    raise KDError(f"cannot read {e.path}: {err.strerror or err}") from None
                if not stat.S_ISREG(st.st_mode):
                    kind = next((k for test, k in _NOT_REGULAR if test(st.st_mode)), "special file")
                    raise KDError(f"{e.path} is a {kind}, not a regular file: reading it could block or never end; "
                                  "remove it")
                paths.append(rel)
                labels.append(label[name])
                sizes.append(st.st_size)
        if len(paths) == before and not validation:  # validation: a class it lacks keeps training's labels
            raise KDError(f"class folder {root / name} holds no image file ({', '.join(extensions)}); "
                          "remove it or add its images: an empty class would shift every label after it")
    return FolderIndex(str(root), tuple(classes), PathList(paths), np.asarray(labels, dtype=np.int64),
                       np.asarray(sizes, dtype=np.int64))


def paths_from_tensors(buffer: np.ndarray | torch.Tensor, offsets: np.ndarray | torch.Tensor) -> PathList:
    """A PathList from its stored form (PathList.tensors)."""
    paths = PathList([])
    paths.buffer = np.asarray(buffer, dtype=np.uint8)
    paths.offsets = np.asarray(offsets, dtype=np.int64)
    return paths


def differences(old_classes: Sequence[str], old_hashes: torch.Tensor | np.ndarray, index: FolderIndex,
                old_paths: PathList | None = None) -> str | None:
    """None if `index` (a folder now) is the folder that `old_classes` and `old_hashes`
    (FolderIndex.file_hashes, stored) describe; otherwise one line: the class list's change, or
    how many files differ and the first that did, by name: removed, added, or changed in size
    (`old_paths`, a PathList of the stored listing, names removed files; without it, stores made
    before paths were kept, the first position that differs is named)."""
    if tuple(old_classes) != index.classes:
        added = sorted(set(index.classes) - set(old_classes))
        removed = sorted(set(old_classes) - set(index.classes))
        parts = ([f"added {', '.join(added[:3])}"] if added else []) + \
                ([f"removed {', '.join(removed[:3])}"] if removed else [])
        return f"the class list changed ({'; '.join(parts) or 'reordered'})"
    new = index.file_hashes()
    old = torch.as_tensor(old_hashes, dtype=torch.int64)
    if len(old) == len(new) and torch.equal(old, new):
        return None
    counts = f"({len(old)} files then, {len(new)} now)"
    if old_paths is not None and len(old_paths) == len(old):
        then = dict(zip(old_paths, old.tolist()))
        now = dict(zip(index.paths, new.tolist()))
        removed = sorted(set(then) - set(now))
        added = sorted(set(now) - set(then))
        changed = sorted(p for p in set(then) & set(now) if then[p] != now[p])
        kinds = [(removed, "removed"), (added, "added"), (changed, "changed in size")]
        first = min((names[0], word) for names, word in kinds if names) if any(n for n, _ in kinds) else None
        said = ", ".join(f"{len(names)} {word}" for names, word in kinds if names)
        if first is None:  # the same files in another order: a label or sample order changed
            return f"the files were reordered {counts}"
        return f"{said} {counts}; first: {first[0]} ({first[1]})"
    old_set, new_set = set(old.tolist()), set(new.tolist())
    added, removed = len(new_set - old_set), len(old_set - new_set)
    n = min(len(old), len(new))
    first = int((old[:n] != new[:n]).nonzero()[0]) if bool((old[:n] != new[:n]).any()) else n
    where = index.paths[first] if first < len(index) else f"after {index.paths[-1]} (files removed at the end)"
    # a file changed in place is both: its new (path, size) is added, its old one removed
    return (f"{added} files added or changed, {removed} removed or changed ({len(old)} then, {len(new)} now); "
            f"first differing path: {where}")


def save_listing(path: str | Path, index: FolderIndex) -> None:
    """Keep a folder's class list, file hashes and relative paths (some 50 bytes per file) at
    `path`, atomically: what `differences` compares a later folder with, naming the files."""
    from safetensors.torch import save_file

    from ..io import atomic_path

    buffer, offsets = index.paths.tensors()
    with atomic_path(path) as tmp:
        save_file({"file_hashes": index.file_hashes(), "file_paths": buffer, "file_path_offsets": offsets}, str(tmp),
                  metadata={"classes": json.dumps(list(index.classes))})


def load_listing(path: str | Path) -> tuple[list[str], torch.Tensor, PathList | None] | None:
    """(classes, file hashes [N] int64, paths: a PathList or None for listings saved before paths
    were kept) saved by save_listing, or None when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            paths = (paths_from_tensors(f.get_tensor("file_paths").numpy(), f.get_tensor("file_path_offsets").numpy())
                     if {"file_paths", "file_path_offsets"} <= names else None)
            return json.loads(f.metadata()["classes"]), f.get_tensor("file_hashes"), paths
    except Exception:  # noqa: BLE001 - missing or damaged: the change is then named by fingerprint only
        return None
