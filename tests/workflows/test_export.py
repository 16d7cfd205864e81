"""Export: ONNX and TorchScript with the run's preprocessing and decision rule inside, checked
against torch; ensembles as the mean of their members; predict --engine onnxruntime without torch."""
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import RUN_FLAGS as FLAGS  # the tiny runs' flags, one list for every file
from conftest import SAMPLE, cli
from lesionlab.engine.runtime import resolve_runtime
from lesionlab.errors import BadInputError
from lesionlab.runs import ModelPredictor, load_predictor
from lesionlab.workflows.export import export_predictor

onnxruntime = pytest.importorskip("onnxruntime")


NO_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm", "pytorch_grad_cam"):
                raise ImportError(f"{name} is blocked: this path must run without torch")

    sys.meta_path.insert(0, NoTorch())
    from lesionlab.cli import main

    try:
        main(sys.argv[1:], standalone_mode=False)
    finally:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm"))
        print("TORCH_MODULES", loaded)
""")


@pytest.fixture(scope="module")
def run_dir(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "r"
    cli("train", "--data", small_data, "--out", out, "--model", "upgraded_cnn", "--calibrate", "temperature",
        "--prevalence", "0.5%", *FLAGS)
    return out


@pytest.fixture(scope="module")
def onnx_file(run_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    r = cli("export", run_dir, "--format", "onnx", "--out", path)
    assert "max |difference| to torch" in r.output and "64 images (50 test, the rest validation/train)" in r.output
    return path


def _images(n=64, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _fp32(predictor):
    predictor.runtime = resolve_runtime("cpu", "32", "false")
    return predictor


def test_onnx_parity_on_64_images_and_metadata(run_dir, onnx_file, small_data):
    from lesionlab.data.store import Store

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    info = json.loads(meta["lesionlab"])
    run = json.loads((run_dir / "run.json").read_text())
    assert info["size"] == 32 and info["fit"] == "stretch" and info["threshold"] == pytest.approx(run["threshold"])
    assert info["calibration"]["method"] == "temperature" and info["prior_shift"]["to"] == pytest.approx(0.005)
    assert info["mean"] == pytest.approx([0.485, 0.456, 0.406]) and info["version"]
    assert json.loads(meta["lesionlab.threshold"]) == pytest.approx(run["threshold"])
    (inp,), (output,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and inp.shape[1:] == [32, 32, 3]
    assert output.name == "prob" and output.type == "tensor(float)"
    images = Store.open(small_data).pixels(np.arange(64))
    got = session.run(["prob"], {"image": images})[0]
    expected = _fp32(load_predictor(run_dir, "cpu")).probabilities(images)
    assert got.shape == (64,) and np.abs(got - expected).max() <= 1e-4


def test_torchscript_parity(run_dir, tmp_path):
    path = tmp_path / "model.pt"
    cli("export", run_dir, "--format", "torchscript", "--out", path)
    files = {"lesionlab.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=files)
    assert json.loads(files["lesionlab.json"])["format"] == "torchscript"
    images = _images()
    with torch.no_grad():
        got = loaded(torch.from_numpy(images)).numpy()
    assert np.abs(got - _fp32(load_predictor(run_dir, "cpu")).probabilities(images)).max() <= 1e-4
    r = cli("export", run_dir, "--format", "torchscript", "--out", path, ok=False)
    assert r.exit_code == 2 and "exists" in r.output


@dataclass
class TwoMembers:
    """A hand-built ensemble: what runs/ will load for an ensemble run (members averaged)."""

    members: list
    threshold: float = 0.3

    size = 32
    fit = "stretch"

    def probabilities(self, images, batch_size=256):
        return np.mean([m.probabilities(images, batch_size) for m in self.members], axis=0)


def test_an_ensemble_exports_as_the_mean_of_its_members(run_dir, tmp_path):
    a = _fp32(load_predictor(run_dir, "cpu"))
    b = _fp32(load_predictor(run_dir, "cpu"))
    b.model = replace_weights(b.model, seed=1)
    z = np.linspace(-6, 6, 50)
    b.calibration = {"method": "isotonic", "x": z.tolist(), "y": (1 / (1 + np.exp(-z / 2))).tolist()}
    b.prior_shift = None
    ens = TwoMembers([a, b])
    images = _images()
    result = export_predictor(ens, "onnx", tmp_path / "ens.onnx", images, "ENS_DIR")
    assert result["max_abs_diff"] <= 1e-4 and result["metadata"]["n_members"] == 2
    got = onnxruntime.InferenceSession(str(tmp_path / "ens.onnx")).run(["prob"], {"image": images})[0]
    assert np.abs(got - ens.probabilities(images)).max() <= 1e-4
    assert np.abs(a.probabilities(images) - b.probabilities(images)).max() > 1e-2  # the members differ


def replace_weights(model: nn.Module, seed: int) -> nn.Module:
    import copy

    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


class Odd(nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=1)[0]  # no ONNX operator for this


def test_a_model_that_does_not_export_names_the_layer(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Odd(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)).eval()
    predictor = ModelPredictor(model, 32, "stretch", 0.5, resolve_runtime("cpu", "32", "false"), (0.5,) * 3, (0.25,) * 3,
                               model_name="odd_cnn")
    with pytest.raises(BadInputError, match=r"model 'odd_cnn' does not export to onnx in layer '1' \(Odd\): .*aten::cummax"):
        export_predictor(predictor, "onnx", tmp_path / "odd.onnx", _images(4))
    assert not (tmp_path / "odd.onnx").exists() and not list(tmp_path.iterdir())


def test_an_export_that_disagrees_with_torch_is_not_written(run_dir, tmp_path):
    predictor = _fp32(load_predictor(run_dir, "cpu"))

    class Shifted:  # the reference the export is compared with says something else
        members = [predictor]
        size, fit, threshold = 32, "stretch", 0.5

        def probabilities(self, images, batch_size=256):
            return predictor.probabilities(images) + 1e-3

    with pytest.raises(BadInputError, match="differs from the torch model by up to 1.00e-03"):
        export_predictor(Shifted(), "onnx", tmp_path / "x.onnx", _images(8))
    assert not (tmp_path / "x.onnx").exists()


def test_predict_with_onnxruntime_imports_no_torch(onnx_file, run_dir, tmp_path, sample_manifest):
    import pandas as pd

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sample_manifest["path"].iloc[:5]:
        (folder / Path(p).name).write_bytes((SAMPLE / p).read_bytes())
    out = tmp_path / "preds.csv"
    script = tmp_path / "no_torch.py"
    script.write_text(NO_TORCH)
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, str(script), "predict", str(onnx_file), str(folder), "--out", str(out),
                           "--engine", "onnxruntime", "--workers", "1"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH_MODULES []" in proc.stdout
    preds = pd.read_csv(out, dtype={"id": str})
    assert len(preds) == 5 and set(preds.columns) == {"id", "prob", "decision"}
    from lesionlab.data.images import decode_resize

    images = np.stack([decode_resize((folder / f"{i}.jpg").read_bytes(), 32, "stretch") for i in preds["id"]])
    expected = _fp32(load_predictor(run_dir, "cpu")).probabilities(images)
    assert np.abs(preds["prob"].to_numpy() - expected).max() < 1e-5  # 6 significant digits in the CSV
    meta = json.loads(onnxruntime.InferenceSession(str(onnx_file)).get_modelmeta().custom_metadata_map["lesionlab"])
    assert (preds["decision"] == (preds["prob"] >= meta["threshold"]).astype(int)).all()


def test_onnxruntime_engine_refuses_a_run_folder_and_a_foreign_model(run_dir, tmp_path):
    img = SAMPLE / "images" / "ISIC_0024318.jpg"
    r = cli("predict", run_dir, img, "--out", tmp_path / "p.csv", "--engine", "onnxruntime", ok=False)
    assert r.exit_code == 2 and "takes the .onnx file that `lesionlab export` wrote" in r.output
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(nn.Linear(2, 1), (torch.zeros(1, 2),), str(plain), dynamo=False)
    r = cli("predict", plain, img, "--out", tmp_path / "p.csv", "--engine", "onnxruntime", ok=False)
    assert r.exit_code == 2 and "without lesionlab's metadata" in r.output


def test_traced_scopes_name_the_layer():
    from lesionlab.workflows.export import _scope_to_path

    assert _scope_to_path("__module.members.0/__module.members.0.net/__module.members.0.net.features.3") == \
        "members.0.net.features.3"
    assert _scope_to_path("pkg._Scorer::/pkg._Member::members.1/torch.nn.Sequential::net/mod.Odd::net.1") == \
        "members.1.net.1"
    assert _scope_to_path("pkg._Scorer::/pkg._Member::members.0") == "members.0"
