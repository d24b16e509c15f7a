"""Issue 20, what a CPU can check of the GPU path: where a batch's indices live, which batch-norm
sync each backend gets, fused Adam on CUDA, deterministic kernels, NCCL's lost peer in one line."""
import pytest
import torch
from torch import nn

from conftest import tiny_split
from kd_accel.data import IndexedTensors, make_loader
from kd_accel.distributed import SyncBatchNorm2d, sync_batchnorm
from kd_accel.errors import KDError, run_cli
from kd_accel.training import TrainSpec, adam
from kd_accel.data import TensorData


def test_a_batch_is_gathered_with_indices_on_the_columns_device():
    """Columns on the meta device (a stand-in for a GPU: no data, but every tensor says where it
    is): the batch's indices and every gathered column are made there, none on the host."""
    columns = {"images": torch.empty(10, 1, 4, 4, dtype=torch.uint8, device="meta"),
               "labels": torch.empty(10, dtype=torch.long, device="meta")}
    batch = next(iter(make_loader(columns, 4, shuffle=True, seed=0)))
    assert {k: v.device.type for k, v in batch.items()} == {"images": "meta", "labels": "meta", "idx": "meta"}
    cpu = IndexedTensors(x=torch.arange(5)).__getitems__([3, 1])
    assert cpu["idx"].tolist() == [3, 1] and cpu["x"].tolist() == [3, 1]


def test_a_training_batch_is_a_slice_of_the_epochs_order_on_the_device():
    """Issue 20: the epoch's permutation lives on the columns' device and each batch's indices
    are a slice of it (the same storage: nothing copied from the host per step); the samples are
    EpochPermutation's, epoch by epoch; only a padded, non-consecutive batch copies positions."""
    from kd_accel.data import EpochPermutation

    n, seed = 23, 5
    loader = make_loader({"x": torch.arange(n) * 10}, 4, shuffle=True, seed=seed)
    dataset = loader.dataset
    for epoch in (0, 3):
        loader.sampler.set_epoch(epoch)
        order, seen = dataset.order, []
        for batch in loader:
            assert batch["idx"].untyped_storage().data_ptr() == order.untyped_storage().data_ptr()
            assert torch.equal(batch["x"], batch["idx"] * 10)
            seen.append(batch["idx"])
        assert torch.equal(torch.cat(seen), EpochPermutation(n, seed).permutation(epoch))
    padded = dataset.__getitems__([21, 22, 0, 1])  # what Accelerate's even_batches makes of a last batch
    assert padded["idx"].tolist() == dataset.order[[21, 22, 0, 1]].tolist()


def norms(model):
    return {type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_each_backend_gets_its_batch_norm_sync():
    import timm

    from kd_accel.models import build_model

    assert norms(sync_batchnorm(build_model("teacher"), "nccl")) == {"SyncBatchNorm"}  # torch's: GPU kernels
    assert norms(sync_batchnorm(build_model("teacher"), "gloo")) == {"SyncBatchNorm2d"}  # kd_accel's, any backend
    assert norms(sync_batchnorm(timm.create_model("test_efficientnet"), "nccl")) == {"SyncBatchNormAct"}
    assert norms(sync_batchnorm(timm.create_model("test_efficientnet"), "gloo")) == {"SyncBatchNormAct2d"}
    synced = sync_batchnorm(build_model("student"), "gloo")
    assert isinstance(synced.features[1], SyncBatchNorm2d) and norms(sync_batchnorm(synced, "gloo")) == {"SyncBatchNorm2d"}
    for backend in ("gloo", "nccl"):  # a batch norm with no synced version: one line, not a silent difference
        with pytest.raises(KDError, match="BatchNorm1d at 1 has no batch norm synchronised"):
            sync_batchnorm(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), backend)


def test_fused_adam_on_cuda_and_its_updates_against_the_default():
    assert adam([nn.Parameter(torch.zeros(2))], 1e-3, "cuda").defaults["fused"]
    assert not adam([nn.Parameter(torch.zeros(2))], 1e-3, "cpu").defaults["fused"]
    # fused (what CUDA runs get) against foreach (CPU's): the same updates within float rounding
    torch.manual_seed(0)
    a, b = nn.Linear(64, 10), nn.Linear(64, 10)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.Adam(a.parameters(), 1e-3), torch.optim.Adam(b.parameters(), 1e-3, fused=True)
    for _ in range(50):
        x = torch.randn(32, 64)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    diff = max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))
    assert 0 <= diff < 1e-6, diff


def test_deterministic_kernels_on_and_off(accelerator):
    """On a CPU the weights are the same either way (its kernels are deterministic already);
    the switch sets torch's flags and puts torch's defaults back."""
    from kd_accel.config import from_flags
    from kd_accel.determinism import set_deterministic
    from kd_accel.models import build_model
    from kd_accel.pipeline import columns
    from kd_accel.training import fit, make_objective

    train, cfg = tiny_split(60), from_flags(epochs=1, batch_size=20)

    def trained():
        torch.manual_seed(0)
        model, _ = fit(accelerator, build_model("student"), TensorData(columns(train)), None, TrainSpec.of(cfg.student, cfg.run), make_objective("ce"), "student")
        return model.state_dict()

    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.allow_tf32
        on = trained()
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.allow_tf32
    off = trained()
    assert all(torch.equal(on[k], off[k]) for k in on)


@pytest.mark.parametrize("error, code, words", [
    (torch.distributed.DistBackendError("NCCL communicator was aborted on rank 1"), 1,
     "lost contact with another process, which stopped first"),
    (RuntimeError("upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation, but you set "
                  "'torch.use_deterministic_algorithms(True)'.\nmore"), 2,
     "--deterministic: upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation"),
])
def test_gpu_errors_are_one_line(error, code, words, capsys):
    def main(argv):
        raise error

    with pytest.raises(SystemExit) as e:
        run_cli(main, [])
    err = capsys.readouterr().err.strip()
    assert e.value.code == code and "\n" not in err and words in err, err


# Issue 20, part 3 (bash bench/gpu.sh from a bare copy of the tree, in a fresh venv without the
# package installed): tests/test_bench.py, in the one run of gpu.sh's CPU dry run.
