"""Augmentation policies (data/augment.py)."""
import pytest
import torch

from conftest import cli
from lesionlab.data.augment import POLICIES, Augmenter, get_policy
from lesionlab.errors import BadInputError


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


def test_medium_keeps_image_statistics(batch):
    smooth = torch.nn.functional.avg_pool2d(batch.permute(0, 3, 1, 2).float(), 5, 1, 2).round().to(torch.uint8)
    smooth = smooth.permute(0, 2, 3, 1).contiguous()
    out = Augmenter("medium", seed=0)(smooth)
    assert abs(out.float().mean() - smooth.float().mean()) < 20  # warps and jitter, not a different image


def test_unknown_policy_lists_the_known_ones():
    with pytest.raises(BadInputError, match="none, light, medium, heavy"):
        get_policy("extreme")


def test_augment_preview(small_data, tmp_path):
    cli("augment-preview", small_data, "--policy", "heavy", "--out", tmp_path / "g.png", "--rows", "4", "--columns", "3")
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size == (3 * 34 + 2, 4 * 34 + 2)
    assert cli("augment-preview", small_data, "--out", tmp_path / "g.png", ok=False).exit_code == 2
