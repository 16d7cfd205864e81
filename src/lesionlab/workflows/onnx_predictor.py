"""Scoring images with an exported ONNX model, without torch: numpy, Pillow and onnxruntime only.

The graph `lesionlab export` writes takes uint8 RGB images (N, S, S, 3) at the run's size and
returns the probability of 'malignant' with everything the run decided inside it (normalisation,
calibration, prior shift); the model's metadata_props say how to feed it and where to decide:

    lesionlab            JSON with all of the below (what this module reads)
    lesionlab.size, lesionlab.fit, lesionlab.mean, lesionlab.std, lesionlab.input_size (the model's side:
    the graph enlarges the images itself), lesionlab.interpolation, lesionlab.threshold,
    lesionlab.prior_shift, lesionlab.calibration, lesionlab.version, lesionlab.input, lesionlab.output

This module must import nothing that imports torch: `predict --engine onnxruntime` runs where
torch is not installed (a test blocks `import torch` and runs it).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..choices import FITS, INTERPOLATIONS, TTA_MODES
from ..errors import BadInputError, first_line, shown

META_KEY = "lesionlab"
INPUT_NAME = "image"
OUTPUT_NAME = "prob"
INPUT_DOC = "uint8 RGB images, shape (N, size, size, 3), decoded and resized with the run's fit"
OUTPUT_DOC = "probability of malignant, shape (N,): calibrated and prior-shifted as the run decided"
MAX_SIZE = 8192  # pixels per side: far above any model lesionlab trains, far below what would exhaust memory
EXPORT_HINT = "pip install 'lesionlab[export]'"


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
        raise BadInputError(f"the onnxruntime package is not installed (ONNX models are scored with it): {EXPORT_HINT}") from None
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise BadInputError(f"{path}: not an ONNX model onnxruntime can load ({first_line(e)})") from None


def _graph_size(session, path: Path) -> int:
    """The side S of the graph's input, which must be uint8 images (N, S, S, 3) named 'image', with an
    output named 'prob': what `lesionlab export` writes."""
    inputs = {i.name: i for i in session.get_inputs()}
    image = inputs.get(INPUT_NAME)
    shape = list(getattr(image, "shape", None) or [])
    if (image is None or image.type != "tensor(uint8)" or len(shape) != 4 or shape[3] != 3
            or not all(isinstance(d, int) for d in shape[1:3]) or shape[1] != shape[2]
            or OUTPUT_NAME not in {o.name for o in session.get_outputs()}):
        found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs.values())
        raise BadInputError(f"{path}: its graph does not take '{INPUT_NAME}' as uint8 images (N, S, S, 3) and give "
                            f"'{OUTPUT_NAME}' (it takes {found}); not a model `lesionlab export` wrote")
    return int(shape[1])


def check_metadata(meta: object, graph_size: int, path: Path) -> dict:
    """lesionlab's metadata of an ONNX model, every field checked (type and range) before any is used:
    a damaged or altered file must not, say, make predict decode images at 100000 px."""
    again = "the file is damaged or was altered; export the run again"
    if not isinstance(meta, dict):
        raise BadInputError(f"{path}: lesionlab's metadata is a JSON {type(meta).__name__}, expected a JSON object; {again}")

    def refuse(key: str, expected: str):
        return BadInputError(f"{path}: lesionlab metadata '{key}' must be {expected}, got {shown(meta.get(key))}; {again}")

    for key in ("size", "fit", "threshold"):
        if key not in meta:
            raise BadInputError(f"{path}: lesionlab's metadata has no '{key}'; {again}")
    size = meta["size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise refuse("size", f"a whole number of pixels from 1 to {MAX_SIZE}")
    if size != graph_size:
        raise BadInputError(f"{path}: lesionlab metadata 'size' {size} does not match the graph's input "
                            f"({graph_size} px); {again}")
    if not isinstance(meta["fit"], str) or meta["fit"] not in FITS:
        raise refuse("fit", "one of " + ", ".join(FITS))
    threshold = meta["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise refuse("threshold", "a probability from 0 to 1")  # NaN fails the range test too
    for key in ("mean", "std"):
        v = meta.get(key)
        if v is not None and not (isinstance(v, list) and len(v) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            raise refuse(key, "a list of 3 numbers")
    if meta.get("tta") is not None and meta["tta"] not in TTA_MODES:
        raise refuse("tta", "one of " + ", ".join(TTA_MODES))
    input_size = meta.get("input_size")  # the graph enlarges its input to this side itself (0: it does not)
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or not 0 <= input_size <= MAX_SIZE):
        raise refuse("input_size", f"a whole number of pixels from 0 to {MAX_SIZE}")
    if meta.get("interpolation") is not None and meta["interpolation"] not in INTERPOLATIONS:
        raise refuse("interpolation", "one of " + ", ".join(INTERPOLATIONS))
    members = meta.get("n_members")
    if members is not None and (isinstance(members, bool) or not isinstance(members, int) or members < 1):
        raise refuse("n_members", "a whole number of at least 1")
    return meta


def read_metadata(session, path: Path) -> dict:
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise BadInputError(f"{path}: an ONNX model without lesionlab's metadata (size, fit, threshold); "
                            "export it with `lesionlab export RUN_DIR --format onnx --out FILE`")
    try:
        meta = json.loads(props[META_KEY])
    except ValueError as e:  # json.JSONDecodeError; also a number too large to read
        raise BadInputError(f"{path}: lesionlab's metadata is not valid JSON ({first_line(e, 100)}); the file is damaged "
                            "or was altered; export the run again") from None
    return check_metadata(meta, _graph_size(session, path), path)


@dataclass
class OnnxPredictor:
    """The Predictor interface (size, fit, threshold, probabilities) over an exported model."""

    session: Any  # an onnxruntime.InferenceSession (onnxruntime is imported only where it is used)
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
        try:
            out = [self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images[s:s + batch_size])})[0]
                   for s in range(0, len(images), batch_size)]
        except Exception as e:  # onnxruntime's own exception types: a graph that is damaged inside
            raise BadInputError(f"{self.source}: onnxruntime could not score images with it ({first_line(e, 200)})") from None
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
    return OnnxPredictor(session, meta["size"], meta["fit"], float(meta["threshold"]), meta, str(path))
