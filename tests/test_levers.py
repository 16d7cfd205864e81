"""The imbalance toolkit: losses, samplers, augmentation, backbones, schedules, prior shift."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lesionlab.data.augment import POLICIES, Augmenter, get_policy
from lesionlab.data.sampling import EpochSampler
from lesionlab.engine.losses import TrainingLoss
from lesionlab.engine.optim import make_ema, make_optimizer, make_scheduler
from lesionlab.errors import BadInputError
from lesionlab.metrics import precision_at_prevalence, prior_shift
from lesionlab.models import create_model

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


# ---------------------------------------------------------------- samplers


def _labels_draw():
    labels = np.array([1] * 30 + [0] * 300)
    pool = np.arange(330)
    draw = np.r_[np.arange(20), np.arange(30, 70)]  # 20 malignant, 40 benign
    return labels, pool, draw


def test_redraw_keeps_malignant_and_draws_fresh_benign():
    labels, pool, draw = _labels_draw()
    s = EpochSampler("redraw", labels, draw, pool, seed=0)
    e0, e1 = s.epoch(0), s.epoch(1)
    for e in (e0, e1):
        assert sorted(e[labels[e] == 1]) == list(range(20)) and (labels[e] == 0).sum() == 40
        assert len(set(e)) == len(e)
    assert set(e0[labels[e0] == 0]) != set(e1[labels[e1] == 0])
    seen = set().union(*(set(s.epoch(k)) for k in range(10)))
    assert len([i for i in seen if labels[i] == 0]) > 200  # many more distinct benign images than 40
    assert np.array_equal(s.epoch(3), EpochSampler("redraw", labels, draw, pool, seed=0).epoch(3))


def test_balanced_is_class_weighted():
    labels, pool, draw = _labels_draw()
    s = EpochSampler("balanced", labels, draw, pool, seed=1)
    share = np.mean([labels[s.epoch(k)].mean() for k in range(30)])
    assert abs(share - 0.5) < 0.05 and s.train_prevalence == 0.5
    assert set(np.concatenate([s.epoch(k) for k in range(5)])) <= set(draw)


@pytest.mark.parametrize("kind", ["none", "redraw", "balanced"])
def test_ddp_shards_are_disjoint_and_cover_the_epoch(kind):
    labels, pool, draw = _labels_draw()
    draw = draw[:-1]  # 59 images: not divisible by 2 or 4
    for world in (2, 4):
        shards = [EpochSampler(kind, labels, draw, pool, seed=0, rank=r, world=world).epoch(2) for r in range(world)]
        full = EpochSampler(kind, labels, draw, pool, seed=0).full_epoch(2)
        assert len({len(s) for s in shards}) == 1  # same number of steps on every process
        positions = [k for r in range(world) for k in range(r, len(shards[0]) * world, world)]
        assert len(positions) == len(set(positions))  # disjoint slots of one epoch order
        merged = np.empty(len(shards[0]) * world, dtype=int)
        for r in range(world):
            merged[r::world] = shards[r]
        assert np.array_equal(merged[: len(full)], full)  # together they are the epoch's draw


def test_unknown_sampler():
    labels, pool, draw = _labels_draw()
    with pytest.raises(BadInputError, match="none, redraw, balanced"):
        EpochSampler("oversample", labels, draw, pool, 0)


# ---------------------------------------------------------------- augmentation


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("policy", POLICIES)
def test_policies_keep_shape_and_dtype(batch, policy):
    out = Augmenter(policy, seed=0)(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    if policy == "none":
        assert torch.equal(out, batch)
    else:
        assert not torch.equal(out, batch)


def test_light_only_moves_pixels(batch):
    out = Augmenter("light", seed=3)(batch)
    for a, b in zip(out, batch):  # flips and quarter turns: the same pixels, rearranged
        assert torch.equal(torch.sort(a.reshape(-1, 3), dim=0).values, torch.sort(b.reshape(-1, 3), dim=0).values)


def test_augmentation_is_seeded(batch):
    a, b = Augmenter("heavy", seed=5), Augmenter("heavy", seed=5)
    a.set_epoch(5, 2)
    b.set_epoch(5, 2)
    assert torch.equal(a(batch), b(batch))
    b.set_epoch(5, 3)
    a.set_epoch(5, 2)
    assert not torch.equal(a(batch), b(batch))


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


def test_medium_keeps_image_statistics(batch):
    smooth = torch.nn.functional.avg_pool2d(batch.permute(0, 3, 1, 2).float(), 5, 1, 2).round().to(torch.uint8)
    smooth = smooth.permute(0, 2, 3, 1).contiguous()
    out = Augmenter("medium", seed=0)(smooth)
    assert abs(out.float().mean() - smooth.float().mean()) < 20  # warps and jitter, not a different image


def test_unknown_policy_lists_the_known_ones():
    with pytest.raises(BadInputError, match="none, light, medium, heavy"):
        get_policy("extreme")


# ---------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "convnextv2_nano"])
def test_timm_backbones_from_scratch(name):
    model = create_model(name, image_size=64)
    model.eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_pretrained_from_a_local_file(tmp_path):
    import timm

    source = timm.create_model("resnet18")
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 1  # the ImageNet head is replaced


def test_pretrained_file_nested_or_safetensors_loads(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18")
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, tmp_path / "n.pth")
    save_file(source.state_dict(), str(tmp_path / "r18.safetensors"))
    for name in ("n.pth", "r18.safetensors"):
        model = create_model("resnet18", pretrained=str(tmp_path / name))
        assert torch.equal(model.layer4[0].conv1.weight, source.layer4[0].conv1.weight), name


def test_pretrained_file_that_would_run_code_is_refused(tmp_path):
    from test_fileio import plant_hostile_checkpoint

    marker = tmp_path / "ran"
    plant_hostile_checkpoint(tmp_path / "weights.pth", marker)
    with pytest.raises(BadInputError, match=r"weights\.pth: holds Python objects that lesionlab does not load"):
        create_model("resnet18", pretrained=str(tmp_path / "weights.pth"))
    assert not marker.exists()
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(BadInputError, match=r"empty\.pth: expected a state dict of tensors"):
        create_model("resnet18", pretrained=str(tmp_path / "empty.pth"))


def test_pretrained_offline_without_file_is_a_clear_error(monkeypatch):
    from lesionlab.models import timm_models

    monkeypatch.setattr(timm_models, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-lesionlab-cache")
    with pytest.raises(BadInputError, match="did not answer and no copy is cached locally, and no installed weights "
                       "package covers 'resnet18'.*lesionlab\\[weights\\].*pass a local weights file"):
        create_model("resnet18", pretrained=True)
    with pytest.raises(BadInputError, match="no such weights file"):
        create_model("resnet18", pretrained="/nonexistent/weights.pth")
    with pytest.raises(BadInputError, match="has no pretrained weights"):
        create_model("simple_cnn", pretrained=True)


# ---------------------------------------------------------------- optimisation


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


# ---------------------------------------------------------------- prevalence


def test_prior_shift_by_hand():
    # trained at 1/3 malignant, deployed at 1/21: odds scale by (1/20) / (1/2) = 0.1
    p = np.array([0.5, 0.9])
    shifted = prior_shift(p, 1 / 3, 1 / 21)
    assert shifted[0] == pytest.approx(0.1 / 1.1) and shifted[1] == pytest.approx(0.9 / (0.9 + 1.0))
    assert np.allclose(prior_shift(shifted, 1 / 21, 1 / 3), p)


def test_expected_precision_at_prevalence():
    # sensitivity 0.8, specificity 0.9 at 5%: 0.04 / (0.04 + 0.095)
    assert precision_at_prevalence(0.8, 0.9, 0.05) == pytest.approx(0.04 / 0.135)
    assert precision_at_prevalence(0.8, 0.9, 0.00098) < 0.01
