"""Several processes: DDP on CPU (gloo) against one process, torchrun, and sweep workers.

Why 1 and 2 processes are compared in float64 end to end, and in float32 and bf16 only up to the
gradient: the two compute the same sums in a different order (batches of 16 against 2 x 8, other
kernels' blocking), so float32 results differ by rounding, and Adam amplifies that rounding. A
conv bias feeding BatchNorm has a true gradient of exactly 0 (BN subtracts the batch mean), so its
computed gradient is rounding noise: ~1e-7 in float32, above Adam's eps of 1e-8, so Adam moves it
by about +-lr per step with a sign chosen by rounding (in float64 the noise is ~1e-16, far below
eps, and the step ~lr * 1e-8). Measured on the AVX-512 CPU, 2 epochs of the flags below: float32
1 vs 2 processes differ by 3.5e-5 in probability, 1 process with 1 vs 2 threads by 1.3e-5, and
with SGD (no amplification) 1 vs 2 processes by 1e-6. bf16 autocast, which precision auto picks on
CPUs with native bf16 (AVX512-BF16, AMX), rounds every conv and linear output to 8 bits: there 1 vs
2 processes differed by 1.7e-3 (and bf16 vs float32 by 2.4e-3), so no tolerance argued from
float32 could hold there.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import cli
from lesionlab.config import ExperimentConfig
from lesionlab.data.parallel import cpu_count
from lesionlab.engine.distributed import World, _CpuSyncBatchNorm, spawn
from lesionlab.engine.losses import TrainingLoss
from lesionlab.engine.runtime import Runtime, to_input
from lesionlab.engine.trainer import Batches, _step
from lesionlab.models import create_model
from lesionlab.workflows.train import _inputs

# a draw of 16 malignant + 32 benign = 48 images: 3 global batches of 16, 8 per process with 2
DDP_FLAGS = ["--epochs", "2", "--batch-size", "16", "--n-malignant", "16", "--bootstrap", "50", "--num-threads", "1",
             "--precision", "64"]

# Unit roundoff of each precision (2^-p for p significant bits)
U = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8}

# End to end in float64, 6 Adam steps (lr 1e-4, eps 1e-8). Gradients agree to GRAD_TOL[float64]
# ~1e-12 relative (below); a parameter with a non-zero gradient g then takes steps that differ by
# ~lr * 1e-12. A zero-gradient parameter (a conv bias before BN) has gradient noise d <= 1e-12 *
# |gradient of its conv's weights| (~0.4 here), so its step lr * d / (|d| + eps) <= 1e-4 * 4e-13 /
# 1e-8 = 4e-9, 2.4e-8 over 6 steps: parameters agree to PARAM_TOL. Measured: 7e-12 (that bias),
# 2e-14 (the rest). The probabilities pass through maps that are O(1)-Lipschitz in those parameters
# here (BN scaled by ~1, a 8192 -> 256 -> 1 head of norm < 1), so they agree to well under PROB_TOL;
# predictions.csv rounds to 6 significant digits, 5e-7 per value, so its column gets 1e-6 more.
# Real bugs are far outside: measured with BatchNorm left unsynchronised, parameters differed by
# 6e-4 and probabilities by 2e-2; with gradients summed instead of averaged (which Adam almost
# hides: probabilities within 1e-6), parameters differed by 3.7e-5.
PARAM_TOL = 1e-7
PROB_TOL = 1e-6


GRAD_TOL = {"64": 1e4 * U[torch.float64], "32": 1e4 * U[torch.float32], "bf16": 6 * U[torch.bfloat16]}
ZERO_GRADIENT = {"conv1.bias"}
PRECISIONS = {"64": (torch.float64, False), "32": (torch.float32, False), "bf16": (torch.float32, True)}


def _same_run(a: Path, b: Path) -> None:
    pa, pb = pd.read_csv(a / "predictions.csv"), pd.read_csv(b / "predictions.csv")
    assert (pa["id"] == pb["id"]).all() and (pa["label"] == pb["label"]).all()
    assert np.abs(pa["prob"] - pb["prob"]).max() < PROB_TOL + 1e-6
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    for side in ("val", "test"):
        for k in ("loss", "accuracy", "f1", "roc_auc", "average_precision", "pauc_80"):
            assert ma[side][k] == pytest.approx(mb[side][k], abs=PROB_TOL), (side, k)
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    assert np.allclose(ha["train_loss"], hb["train_loss"], rtol=0, atol=PROB_TOL)
    assert np.allclose(ha["val_loss"], hb["val_loss"], rtol=0, atol=PROB_TOL)
    sa = torch.load(a / "checkpoint.pt", weights_only=False)["state_dict"]
    sb = torch.load(b / "checkpoint.pt", weights_only=False)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype
        assert (sa[k].double() - sb[k].double()).abs().max() <= PARAM_TOL, k
    assert pd.read_csv(a / "train_draw.csv").equals(pd.read_csv(b / "train_draw.csv"))


@pytest.mark.skipif(cpu_count() < 2, reason="needs 2 cores")
@pytest.mark.slow
def test_two_processes_match_one(small_data, tmp_path):
    cli("train", "--data", small_data, "--out", tmp_path / "one", *DDP_FLAGS)
    cli("train", "--data", small_data, "--out", tmp_path / "two", *DDP_FLAGS, "--devices", "2")
    _same_run(tmp_path / "one", tmp_path / "two")
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["speed"]["processes"] == 2
    assert "error" not in info["cam_gallery"]  # the CAM takes float64 input in a --precision 64 run
    assert not list(tmp_path.glob(".two.partial*"))  # rank 0 alone wrote, and finished


@pytest.mark.skipif(cpu_count() < 2, reason="needs 2 cores")
@pytest.mark.slow
def test_torchrun_launch_matches_too(small_data, tmp_path):
    cli("train", "--data", small_data, "--out", tmp_path / "one", *DDP_FLAGS)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "lesionlab", "train", "--data", str(small_data),
           "--out", str(tmp_path / "tr"), *DDP_FLAGS, "--devices", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_run(tmp_path / "one", tmp_path / "tr")


# Gradient after DDP's all-reduce against one process's, on the default kernels. A sum of n terms in
# precision u is off by ~sqrt(n) * u * kappa relative with high probability (Higham & Mary 2019,
# probabilistic rounding error analysis), kappa = sum |terms| / |sum|. The longest sums here are over
# batch x pixels, n = 16 * 32 * 32, sqrt(n) = 128; an error passes ~6 of them (conv, BN, two linear
# layers, forward and back) with kappa <= ~10: 6 * 10 * 128 < 1e4, so GRAD_TOL = 1e4 * u. bf16 autocast
# rounds only the inputs and outputs of convs and linear layers to 8 bits (sums stay float32); equal
# values round equally in both runs, so a difference needs a float32 sum that lands on the other side of
# a rounding boundary, changing that element by 1 bf16 ulp, 2^-8 relative; even if every element of the
# ~6 rounded outputs flipped, the gradient moves by <= 6 * 2^-8 relative. Bugs are far outside: with BN
# unsynchronised the gradients differed by 3e-2 to 6e-1 relative in every precision, and a gradient
# summed instead of averaged differs by 1 (it is twice as large).
# a bias feeding BatchNorm: its true gradient is 0, its computed one rounding (the reason for the above)


def _first_step_gradients(data: str, out: str, world: World | None = None) -> None:
    """The gradients of the first training batch after DDP's all-reduce, in each precision, through
    the trainer's own step (an SGD of lr 0 leaves them in place); rank 0 saves them to `out`."""
    world = world or World()
    cfg = ExperimentConfig(data=data, n_malignant=16, batch_size=16)
    inp = _inputs(cfg, world)
    batches = Batches(inp.images.pixels, inp.labels, inp.sampler, cfg.batch_size // world.size)
    images, labels = batches.load(batches.positions(0)[0])
    grads = {}
    for name, (dtype, bf16) in PRECISIONS.items():
        torch.manual_seed(0)
        model = create_model("simple_cnn", image_size=inp.store.size).to(dtype)
        rt = Runtime(torch.device("cpu"), bf16, False, dtype)
        net = world.wrap(model, rt.device)
        _step(net, TrainingLoss().to(dtype=dtype), torch.optim.SGD(model.parameters(), lr=0.0),
              to_input(images, rt), labels, rt)
        grads[name] = {k: p.grad.double() for k, p in model.named_parameters()}
    if world.is_main:
        torch.save(grads, out)


@pytest.mark.slow
@pytest.mark.skipif(cpu_count() < 2, reason="needs 2 cores")
def test_all_reduced_gradient_is_the_one_process_gradient(small_data, tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _first_step_gradients(str(small_data), str(tmp_path / "one.pt"))
    finally:
        torch.set_num_threads(threads)
    spawn(_first_step_gradients, (str(small_data), str(tmp_path / "two.pt")), 2, "cpu")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for prec, tol in GRAD_TOL.items():
        g1, g2 = one[prec], two[prec]
        for k in g1:
            if k in ZERO_GRADIENT:  # rounding only, in both: tiny against its conv's weight gradient
                scale = g1[k.replace("bias", "weight")].norm()
                assert g1[k].norm() <= tol * scale and g2[k].norm() <= tol * scale, (prec, k)
                continue
            err = ((g2[k] - g1[k]).norm() / g1[k].norm()).item()
            assert err <= tol, f"{prec} {k}: 2 processes' gradient is {err:.2g} off, relative (tolerance {tol:.2g})"


def _reference_bn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return nn.functional.batch_norm(x, None, None, weight, bias, training=True)


@pytest.fixture
def world_of_one(tmp_path):
    """A gloo group of this process alone, for the synchronised BatchNorm."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    _CpuSyncBatchNorm.group = dist.new_group(backend="gloo")
    yield
    _CpuSyncBatchNorm.group = None
    dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mean,sd", [(0.0, 1.0), (3.0, 0.5), (10.0, 0.5), (30.0, 0.5)])
def test_synchronised_batchnorm_is_as_accurate_as_batchnorm(world_of_one, dtype, mean, sd):
    """Activations with |mean| >> sd happen (a conv's bias drifts); the one-pass E[x^2] - E[x]^2 of
    the earlier version lost their variance to cancellation: at mean 10, sd 0.5 off by 2e-4 in float32
    and by 650 in bf16 (its statistics were kept in bf16) where BatchNorm2d was off by 3e-6 and 0.07."""
    torch.manual_seed(0)
    x = (torch.randn(8, 32, 16, 16, dtype=torch.float64) * sd + mean).to(dtype)
    exact = _reference_bn(x.double(), None, None)  # the same (rounded) input, in float64
    native, synced = nn.BatchNorm2d(32), nn.BatchNorm2d(32)
    synced.__class__ = _CpuSyncBatchNorm
    if dtype == torch.float64:
        native, synced = native.double(), synced.double()
    y_native, y_synced = native(x), synced(x)
    assert y_synced.dtype == y_native.dtype == dtype
    # as accurate as torch's own BatchNorm (two passes, float32 sums at least): within twice its error,
    # plus the synced version's own rounding: one rounding of y to dtype, and its sums over n = 8 * 16 * 16
    # values in the accumulating precision, ~sqrt(n) = 45 ulps in the probabilistic model (64 allowed),
    # of the mean (which reaches y divided by sd) and of y itself
    accum = torch.float64 if dtype == torch.float64 else torch.float32
    native_err = (y_native.double() - exact).abs().max().item()
    synced_err = (y_synced.double() - exact).abs().max().item()
    y_max = exact.abs().max().item()
    own = U[dtype] * y_max + 64 * U[accum] * (abs(mean) / sd + y_max)
    assert synced_err <= 2 * native_err + own, (synced_err, native_err)
    stat_tol = 1e4 * U[accum]
    for buf in ("running_mean", "running_var"):
        ref = getattr(native, buf).double()
        assert (getattr(synced, buf).double() - ref).abs().max() <= stat_tol * (1 + ref.abs().max()), buf


def test_synchronised_batchnorm_backward_is_batchnorms(world_of_one):
    """In float64 (no rounding to speak of) the gradients through the all-reduced statistics are
    exactly BatchNorm2d's: input, weight and bias."""
    torch.manual_seed(0)
    x = torch.randn(8, 32, 16, 16, dtype=torch.float64) * 0.5 + 3
    native, synced = nn.BatchNorm2d(32).double(), nn.BatchNorm2d(32).double()
    synced.__class__ = _CpuSyncBatchNorm
    with torch.no_grad():
        for m in (native, synced):
            m.weight.copy_(torch.linspace(0.5, 2, 32))
            m.bias.copy_(torch.linspace(-1, 1, 32))
    upstream = torch.randn(8, 32, 16, 16, dtype=torch.float64)
    grads = []
    for m in (native, synced):
        xi = x.clone().requires_grad_()
        (m(xi) * upstream).sum().backward()
        grads.append((xi.grad, m.weight.grad, m.bias.grad))
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e4 * U[torch.float64] * a.abs().max()


def test_devices_beyond_the_machine_and_uneven_batches(small_data, tmp_path):
    r = cli("train", "--data", small_data, "--out", tmp_path / "r", *DDP_FLAGS, "--devices", "999", ok=False)
    assert r.exit_code == 2 and "--devices 999: this machine has" in r.output
    r = cli("train", "--data", small_data, "--out", tmp_path / "r", *DDP_FLAGS, "--num-nodes", "2", ok=False)
    assert "torchrun" in r.output
    if cpu_count() >= 2:
        r = cli("train", "--data", small_data, "--out", tmp_path / "r", *DDP_FLAGS, "--devices", "2",
                "--batch-size", "15", ok=False)
        assert "must divide evenly" in r.output
    assert not (tmp_path / "r").exists()
