"""The training loss (engine/losses.py): weighted BCE, label smoothing and focal loss against torch and by
hand."""
import pytest
import torch
import torch.nn.functional as F

from lesionlab.engine.losses import TrainingLoss
from lesionlab.errors import BadInputError

# ---------------------------------------------------------------- losses


def test_bce_pos_weight_and_smoothing_match_torch():
    torch.manual_seed(0)
    z, y = torch.randn(50), (torch.rand(50) < 0.3).float()
    assert torch.allclose(TrainingLoss("bce", pos_weight=3.0)(z, y),
                          F.binary_cross_entropy_with_logits(z, y, pos_weight=torch.tensor(3.0)))
    assert torch.allclose(TrainingLoss("bce", label_smoothing=0.1)(z, y),
                          F.binary_cross_entropy_with_logits(z, y * 0.9 + 0.05))


def test_focal_loss_by_hand():
    z, y = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(z)
    p_t = torch.tensor([p[0], 1 - p[1], 1 - p[2]])
    alpha_t = torch.tensor([0.25, 0.75, 0.75])
    expected = (-alpha_t * (1 - p_t) ** 2 * torch.log(p_t)).mean()
    assert torch.allclose(TrainingLoss("focal", focal_alpha=0.25, focal_gamma=2.0)(z, y), expected)
    # gamma 0 and alpha 0.5 is half the BCE
    assert torch.allclose(TrainingLoss("focal", focal_alpha=0.5, focal_gamma=0.0)(z, y),
                          0.5 * F.binary_cross_entropy_with_logits(z, y))


@pytest.mark.parametrize("kw,msg", [({"focal_gamma": -1}, "focal-gamma"), ({"pos_weight": 0}, "pos-weight"),
                                    ({"kind": "focal", "pos_weight": 2.0}, "focal-alpha"),
                                    ({"label_smoothing": 0.6}, "label-smoothing"), ({"kind": "dice"}, "--loss")])
def test_loss_bad_input(kw, msg):
    with pytest.raises(BadInputError, match=msg):
        TrainingLoss(**kw)
