"""The one sha256-over-tensors helper must give, byte for byte, the digests the three hand-written
ones gave (cache checksums, weight fingerprints, data fingerprints): caches and stamps already on
disk carry them. Expected values are computed here with hashlib directly, as the old code did."""
import hashlib

import torch

from kd_accel import cache, hashing
from kd_accel.data import Split
from kd_accel.models import Student, state_fingerprint


def sha(*chunks):
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:32]


def raw(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def fixed_state():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 4, generator=g).t(),  # non-contiguous: hashed as its row-major values
            "half": torch.randn(5, generator=g).to(torch.bfloat16),
            "count": torch.tensor(7),  # 0-dim int64, as BatchNorm's num_batches_tracked
            "empty": torch.zeros(0, 2)}


def test_cache_checksum_is_the_old_one():
    logits = torch.arange(60, dtype=torch.float32).reshape(6, 10) / 7
    labels = torch.arange(6) % 10
    assert cache._checksum(logits) == sha(logits.numpy().tobytes())
    assert cache._checksum(labels) == sha(labels.numpy().tobytes())
    assert cache._checksum(logits.half()) == sha(logits.half().numpy().tobytes())


def test_streaming_in_pieces_changes_nothing(monkeypatch):
    t = torch.arange(1000, dtype=torch.int64)
    whole = hashing.tensor_digest(t)
    monkeypatch.setattr(hashing, "CHUNK", 7)  # 8000 bytes in 1143 pieces, the last one short
    assert hashing.tensor_digest(t) == whole == sha(t.numpy().tobytes())


def test_weight_fingerprint_is_the_old_one():
    state = fixed_state()
    want = sha(*[c for name in sorted(state) for c in
                 (f"{name}:{tuple(state[name].shape)}:{state[name].dtype}".encode(), raw(state[name]))])
    assert state_fingerprint(state) == want
    model = Student().state_dict()
    assert state_fingerprint(model) == sha(*[c for name in sorted(model) for c in
                                             (f"{name}:{tuple(model[name].shape)}:{model[name].dtype}".encode(),
                                              raw(model[name]))])


def test_data_fingerprint_is_the_old_one():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (9, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (9,), generator=g)
    split = Split("mnist", "train", images, labels, 10)
    want = sha(b"mnist/train/(9, 1, 28, 28)", images.numpy().tobytes(), labels.numpy().tobytes())
    assert split.fingerprint() == want
    assert split.subset(5).fingerprint() == sha(b"mnist/train/(5, 1, 28, 28)", images[:5].numpy().tobytes(),
                                                labels[:5].numpy().tobytes())
