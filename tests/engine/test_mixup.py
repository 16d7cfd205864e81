"""Mixup and CutMix (engine/mixup.py), by hand."""
import pytest
import torch


def test_mixup_blends_images_and_targets_by_hand():
    import numpy as np

    from lesionlab.engine.mixup import Mixup

    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1.0, 0, 0, 1, 0, 0])
    m = Mixup(0.4, seed=2)
    m.set_epoch(2, 3)
    mixed_x, mixed_y = m(x, y)
    rng = np.random.default_rng([2, 3])  # the same draws, in the same order: weights, then partners
    lam, other = rng.beta(0.4, 0.4, 6), rng.permutation(6)
    for i in range(6):
        assert torch.allclose(mixed_x[i], lam[i] * x[i] + (1 - lam[i]) * x[other[i]], atol=1e-6)
        assert mixed_y[i].item() == pytest.approx(lam[i] * y[i].item() + (1 - lam[i]) * y[other[i]].item(), abs=1e-6)
    m.set_epoch(2, 3)
    assert torch.equal(m(x, y)[0], mixed_x)  # seeded per (seed, epoch)
    same = torch.zeros(6)
    assert torch.equal(m(x, same)[1], same)  # benign with benign stays benign
    off = Mixup(0.0)
    assert off(x, y)[0] is x and off(x, y)[1] is y
