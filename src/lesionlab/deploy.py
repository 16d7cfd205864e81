"""Scoring images with an exported ONNX model, without torch: numpy, Pillow and onnxruntime only.

The graph `lesionlab export` writes takes uint8 RGB images (N, S, S, 3) at the run's size and
returns the probability of 'malignant' with everything the run decided inside it (normalisation,
calibration, prior shift); the model's metadata_props say how to feed it and where to decide:

    lesionlab            JSON with all of the below (what this module reads)
    lesionlab.size, lesionlab.fit, lesionlab.mean, lesionlab.std, lesionlab.threshold,
    lesionlab.prior_shift, lesionlab.calibration, lesionlab.version, lesionlab.input, lesionlab.output

This module must import nothing that imports torch: `predict --engine onnxruntime` runs where
torch is not installed (a test blocks `import torch` and runs it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BadInputError, first_line

META_KEY = "lesionlab"
INPUT_NAME = "image"
OUTPUT_NAME = "prob"
INPUT_DOC = "uint8 RGB images, shape (N, size, size, 3), decoded and resized with the run's fit"
OUTPUT_DOC = "probability of malignant, shape (N,): calibrated and prior-shifted as the run decided"


def metadata_props(meta: dict) -> dict[str, str]:
    """The key/value strings stored in the ONNX model (one JSON, and each field for people reading it)."""
    props = {META_KEY: json.dumps(meta, sort_keys=True)}
    for key, value in meta.items():
        props[f"{META_KEY}.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return props


def _session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise BadInputError("--engine onnxruntime needs the onnxruntime package: pip install onnxruntime") from None
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise BadInputError(f"{path}: not an ONNX model onnxruntime can load ({first_line(e)})") from None


def read_metadata(session, path: Path) -> dict:
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise BadInputError(f"{path}: an ONNX model without lesionlab's metadata (size, fit, threshold); "
                            "export it with `lesionlab export RUN_DIR --format onnx --out FILE`")
    return json.loads(props[META_KEY])


@dataclass
class OnnxPredictor:
    """The Predictor interface (size, fit, threshold, probabilities) over an exported model."""

    session: object
    size: int
    fit: str
    threshold: float
    meta: dict = field(default_factory=dict)
    source: str = ""

    def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3) or images.dtype != np.uint8:
            raise BadInputError(f"{self.source}: expects uint8 images of shape (N, {self.size}, {self.size}, 3), "
                                f"got {images.dtype} {images.shape}")
        out = [self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images[s:s + batch_size])})[0]
               for s in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float64).reshape(-1) if out else np.zeros(0)


def load_onnx_predictor(path: str | os.PathLike) -> OnnxPredictor:
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{path}: --engine onnxruntime takes the .onnx file that `lesionlab export` wrote, "
                            "not a run folder")
    if not path.is_file():
        raise BadInputError(f"{path}: no such ONNX model file")
    session = _session(path)
    meta = read_metadata(session, path)
    return OnnxPredictor(session, int(meta["size"]), str(meta["fit"]), float(meta["threshold"]), meta, str(path))
