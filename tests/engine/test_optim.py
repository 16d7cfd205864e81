"""Schedules and the weights' moving average (engine/optim.py)."""
import numpy as np
import pytest
import torch

from lesionlab.engine.optim import make_ema, make_optimizer, make_scheduler
from lesionlab.errors import BadInputError


def _lr_trace(opt, sched, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_schedule_with_warmup():
    opt = make_optimizer(torch.nn.Linear(2, 1).parameters(), "adamw", lr=1.0, weight_decay=0.01)
    lrs = _lr_trace(opt, make_scheduler(opt, "cosine", total_steps=100, warmup_steps=10), 100)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.02


def test_onecycle_rises_then_falls():
    opt = make_optimizer(torch.nn.Linear(2, 1).parameters(), "sgd", lr=0.5)
    lrs = _lr_trace(opt, make_scheduler(opt, "onecycle", total_steps=50, warmup_steps=10), 50)
    peak = int(np.argmax(lrs))
    assert 5 <= peak <= 15 and max(lrs) == pytest.approx(0.5) and lrs[-1] < 0.01


def test_ema_averages_weights():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = make_ema(model, 0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update_parameters(model)
    assert ema.module.weight.item() == pytest.approx(2.0)
    with pytest.raises(BadInputError, match="--ema"):
        make_ema(model, 1.5)
