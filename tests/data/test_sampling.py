"""Training draws and epoch samplers (data/sampling.py): redraw, balanced, sharded."""
import numpy as np
import pytest

from lesionlab.data.sampling import EpochSampler
from lesionlab.errors import BadInputError


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
