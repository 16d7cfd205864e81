"""Test-time augmentation (data/tta.py): the eight symmetries of the square."""
import numpy as np
import pytest
import torch

from lesionlab.data.tta import n_views, tta_logits, view
from lesionlab.errors import BadInputError


def test_tta_views_are_the_eight_symmetries_and_an_invariant_model_is_unchanged(small_data):
    from lesionlab.engine.runtime import MEAN, STD, resolve_runtime
    from lesionlab.runs.predictor import ModelPredictor

    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert n_views("flip") == 4 and n_views("d4") == 8
    assert len({view(x, k).tobytes() for k in range(8)}) == 8
    assert np.array_equal(tta_logits(lambda v: v.reshape(len(v), -1).mean(1), x, "d4"), x.reshape(3, -1).mean(1))

    torch.manual_seed(0)
    # global pooling makes the network invariant to every flip and quarter turn
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 1))
    images = np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    pred = ModelPredictor(net.eval(), 32, "stretch", 0.5, resolve_runtime("cpu", "32", "false"), MEAN, STD)
    plain = pred.probabilities(images)
    for mode in ("flip", "d4"):
        pred.set_tta(mode)
        assert np.abs(pred.probabilities(images) - plain).max() < 1e-6
    with pytest.raises(BadInputError, match="--tta"):
        pred.set_tta("d8")
