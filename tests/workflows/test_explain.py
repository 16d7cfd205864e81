"""Class-activation maps: overlays at the image's own size, maps that find a known hot spot,
target layers from the registry (or --target-layer), the test-set gallery of every run."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from conftest import SAMPLE, cli
from lesionlab.engine.runtime import resolve_runtime
from lesionlab.errors import BadInputError
from lesionlab.runs import ModelPredictor
from lesionlab.workflows.explain import cam_to_original, gallery_picks, predictor_cams, resolve_target_layer


@pytest.fixture(scope="module")
def run_dir(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "r"
    cli("train", "--data", small_data, "--out", out, "--threshold", "val-f1", *FLAGS)
    return out


class Masked(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x):
        return torch.relu(x) * self.mask


class HotSpot(nn.Module):
    """Features (layer `spot`) are the input's first channel inside a fixed square (rows/cols 4..11
    of 32) and zero elsewhere; the logit is their mean. Any CAM of `spot` must light up that square only."""

    def __init__(self):
        super().__init__()
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., 4:12, 4:12] = 1
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0] = 1.0
            self.conv.bias.fill_(3.0)  # positive activations everywhere before the mask
        self.spot = Masked(mask)
        self.head = nn.Linear(2, 1)
        with torch.no_grad():
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.spot(self.conv(x)).mean((2, 3)))


def _hot_predictor() -> ModelPredictor:
    return ModelPredictor(HotSpot().eval(), 32, "stretch", 0.5, resolve_runtime("cpu", "32", "false"),
                          (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam"])
def test_cam_finds_a_known_hot_spot(method):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    maps, layers = predictor_cams(_hot_predictor(), images, method, target_layer="spot")
    assert maps.shape == (3, 32, 32) and layers == ["spot"]
    inside = np.zeros((32, 32), bool)
    inside[4:12, 4:12] = True
    for m in maps:
        assert m.std() > 0.1  # not constant
        assert m[inside].min() > 0.1 and m[~inside].max() < 0.05


def test_cam_is_resized_back_over_the_original_image():
    cam = np.zeros((8, 8), np.float32)
    cam[:, :4] = 1  # the left half
    stretched = cam_to_original(cam, 30, 20, "stretch")
    assert stretched.shape == (20, 30) and stretched[:, :12].min() > 0.9 and stretched[:, 18:].max() < 0.1
    cropped = cam_to_original(cam, 30, 20, "crop")  # the model saw the central 20x20 square
    assert cropped.shape == (20, 30) and cropped[:, :5].max() == 0 and cropped[:, 7:12].min() > 0.9
    padded = cam_to_original(np.pad(cam[2:6], ((2, 2), (0, 0))), 30, 15, "pad")  # rows 2..5 held the image
    assert padded.shape == (15, 30) and padded[:, :12].min() > 0.9


def test_gallery_picks_follow_the_threshold():
    y = np.array([1, 1, 1, 0, 0, 0, 1])
    p = np.array([0.9, 0.2, 0.6, 0.7, 0.1, 0.95, 0.05])
    picks = gallery_picks(y, p, threshold=0.5, k=2)
    assert picks["confident"].tolist() == [0, 2]
    assert picks["missed"].tolist() == [6, 1]  # false negatives, most confidently missed first
    assert picks["false_positive"].tolist() == [5, 3]


def test_target_layers_come_from_the_registry():
    from lesionlab.models import create_model

    for name, layer in (("simple_cnn", "relu1"), ("upgraded_cnn", "features.14"), ("resnet18", "layer4"),
                        ("efficientnet_b0", "blocks.6"), ("mobilenetv3_small_100", "blocks.5")):
        model = create_model(name, image_size=32)
        assert resolve_target_layer(model, name)[0] == layer


def test_explain_writes_overlays_at_each_images_size(run_dir, sample_manifest, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for p in sample_manifest["path"].iloc[:3]:
        (src / p.split("/")[-1]).write_bytes((SAMPLE / p).read_bytes())
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (41, 67, 3), dtype=np.uint8)).save(src / "odd.png")
    out = tmp_path / "cam"
    r = cli("explain", run_dir, src, "--out", out, "--method", "gradcam++")
    assert "4 overlay(s) (gradcam++ on relu1)" in r.output
    index = pd.read_csv(out / "index.csv", dtype={"id": str})
    assert len(index) == 4 and set(index.columns) >= {"id", "prob", "decision", "overlay", "width", "height"}
    for row in index.itertuples():
        original = Image.open(next(src.glob(f"{row.id}.*")))
        overlay = Image.open(out / row.overlay)
        assert overlay.size == original.size == (row.width, row.height)
        assert np.asarray(overlay).std() > 1
    assert "<img src='overlays/" in (out / "index.html").read_text()
    again = cli("explain", run_dir, src, "--out", out, ok=False)
    assert again.exit_code == 2 and "exists" in again.output


def test_explain_a_manifest_with_labels(run_dir, tmp_path):
    out = tmp_path / "cam"
    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str).iloc[:3]
    manifest["path"] = [str(SAMPLE / p) for p in manifest["path"]]
    manifest.to_csv(tmp_path / "m.csv", index=False)
    cli("explain", run_dir, tmp_path / "m.csv", "--out", out, "--target-layer", "conv1")
    index = pd.read_csv(out / "index.csv", dtype={"id": str})
    assert index["label"].tolist() == manifest["label"].astype(int).tolist()


def test_a_model_without_a_known_target_layer_is_named_with_the_flag(run_dir, tmp_path, monkeypatch):
    from lesionlab import models

    monkeypatch.setitem(models._REGISTRY, "simple_cnn", dataclasses.replace(models._REGISTRY["simple_cnn"], cam_layer=None))
    img = SAMPLE / pd.read_csv(SAMPLE / "manifest.csv")["path"].iloc[0]
    r = cli("explain", run_dir, img, "--out", tmp_path / "x", ok=False)
    assert r.exit_code == 2 and "model 'simple_cnn' has no known CAM target layer; pass --target-layer NAME" in r.output
    assert not (tmp_path / "x").exists()
    cli("explain", run_dir, img, "--out", tmp_path / "y", "--target-layer", "relu1")
    r = cli("explain", run_dir, img, "--out", tmp_path / "z", "--target-layer", "relu2", ok=False)
    assert "--target-layer relu2: model 'simple_cnn' has no such layer (did you mean 'relu1'?)" in r.output
    with pytest.raises(BadInputError, match="not a .N, C, H, W. feature map"):
        predictor_cams(_hot_predictor(), np.zeros((1, 32, 32, 3), np.uint8), target_layer="head")


def test_every_run_has_a_test_set_gallery(run_dir):
    import json

    info = json.loads((run_dir / "run.json").read_text())
    g = info["cam_gallery"]
    assert g["layer"] == "relu1" and g["method"] == "gradcam"
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"id": str})
    test = preds[preds["split"] == "test"].set_index("id")
    assert all(test.loc[i, "label"] == 1 and test.loc[i, "prob"] < info["threshold"] for i in g["missed"])
    assert all(test.loc[i, "label"] == 0 and test.loc[i, "prob"] >= info["threshold"] for i in g["false_positive"])
    assert (run_dir / "figures" / "cam_gallery.png").stat().st_size > 10_000


def test_explain_reads_every_layout_that_predict_reads():
    from lesionlab.choices import FORMATS
    from lesionlab.cli import main

    fmt = next(p for p in main.commands["explain"].params if "--format" in p.opts)
    assert tuple(fmt.type.choices) == FORMATS
