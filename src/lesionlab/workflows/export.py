"""A run (or an ensemble of runs) as one file that scores images outside Python's training stack:
ONNX (onnxruntime, any language) or TorchScript.

The graph takes uint8 RGB images (N, S, S, 3) at the run's size and returns the probability of
'malignant': normalisation, the network, calibration and the prior shift are all inside it, and
the rest of what a user needs (size, fit, threshold, ...) is in the file's metadata. A run's
test-time augmentation is in the graph too (its flips and transposes, the logits averaged, as
data/tta.py). An ensemble (a predictor with a list of `members`) is exported as the mean of its
members' probabilities, or of their logits for `--mean logit`. Every export is checked against
the torch predictor on 64 images before it is kept.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..calibration import isotonic_segments
from ..data.tta import n_views
from ..errors import BadInputError, LesionLabError, check_at_least, first_line
from ..fileio import atomic_path, make_dirs, require_file_out
from ..runs.records import ExportResult
from .onnx_predictor import EXPORT_HINT, INPUT_DOC, INPUT_NAME, OUTPUT_DOC, OUTPUT_NAME, load_onnx_predictor, metadata_props

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
N_VERIFY = 64
OPSET = 17
# metrics.logit clips probabilities to [1e-12, 1 - 1e-12]: logits beyond this bound are cut the same way
LOGIT_BOUND = math.log((1 - 1e-12) / 1e-12)
COMBINE = {"prob": "mean of the members' probabilities",
           "logit": "sigmoid of the mean of the members' logits (a geometric mean of the odds)"}


class _Member(nn.Module):
    """One network with its run's preprocessing, test-time augmentation and decision rule,
    uint8 NHWC -> probability."""

    net: nn.Module
    mean: torch.Tensor  # buffers: (1, 3, 1, 1), on the 0-255 scale
    std: torch.Tensor

    def __init__(self, predictor):
        super().__init__()
        self.net = predictor.model
        self.register_buffer("mean", torch.tensor(predictor.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(predictor.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.tta = getattr(predictor, "tta", "none") or "none"
        self.views = n_views(self.tta)
        # a run that enlarged its images for the model (input_size): the same resize inside the graph
        input_size = int(getattr(predictor, "input_size", 0) or 0)
        self.input_size = input_size if input_size and input_size != int(predictor.size) else 0
        self.interpolation = getattr(predictor, "interpolation", "bilinear")
        self.calibration = getattr(predictor, "calibration", None) or {}
        shift = getattr(predictor, "prior_shift", None)
        # the prior shift multiplies the odds by a constant: in logit space, one addition
        self.log_factor = (math.log(shift["to"] / (1 - shift["to"])) - math.log(shift["from"] / (1 - shift["from"]))
                           if shift else 0.0)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logit per image, averaged over the TTA views (data/tta.view: bit 0 of the
        view's number flips the width, bit 1 the height, bit 2 transposes), all views in one batch."""
        if self.views == 1:
            return self.net(x).reshape(-1).float()
        views = []
        for k in range(self.views):
            v = x
            if k & 1:
                v = v.flip(3)
            if k & 2:
                v = v.flip(2)
            if k & 4:
                v = v.transpose(2, 3)
            views.append(v)
        return self.net(torch.cat(views)).reshape(self.views, -1).float().mean(0)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probability, logit of that probability) per image; the logit for ensembles of --mean logit."""
        x = x.permute(0, 3, 1, 2).float()
        if self.input_size:  # as engine.runtime.resize_input, written out so that tracing sees no shape test
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=self.interpolation,
                              align_corners=False).clamp(0, 255)
        x = (x - self.mean) / self.std
        z = self._logits(x)
        method = self.calibration.get("method")
        if method == "isotonic":
            p = isotonic_segments(z, self.calibration["x"], self.calibration["y"])
            if self.log_factor:
                f = math.exp(self.log_factor)
                p = p * f / (p * f + (1 - p))
            tiny = 1e-12  # metrics.logit's clip, on each side of the odds (1 - p is exact in float32 near 0)
            return p, torch.log(p.clamp_min(tiny)) - torch.log((1 - p).clamp_min(tiny))
        if method == "temperature":
            z = z / self.calibration["temperature"] + self.calibration.get("offset", 0.0)
        s = z + self.log_factor
        return torch.sigmoid(s), s.clamp(-LOGIT_BOUND, LOGIT_BOUND)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x)[0]


class _Scorer(nn.Module):
    def __init__(self, members: list, combine: str = "prob"):
        super().__init__()
        self.members = nn.ModuleList([_Member(m) for m in members])
        self.combine = combine

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](image)
        if self.combine == "logit":  # runs.predictor.average_probabilities' 'logit' mean
            return torch.sigmoid(torch.stack([cast(_Member, m).scores(image)[1] for m in self.members]).mean(0))
        return torch.stack([m(image) for m in self.members]).mean(0)


def _combine(predictor) -> str:
    """How an ensemble averages its members: its `mean` ('prob' or 'logit'); a model predictor's
    `mean` is its normalisation instead."""
    mean = getattr(predictor, "mean", None)
    return mean if isinstance(mean, str) and mean in COMBINE else "prob"


def _members(predictor) -> list:
    members = list(getattr(predictor, "members", None) or [predictor])
    for i, m in enumerate(members):
        if not isinstance(getattr(m, "model", None), nn.Module):
            raise BadInputError(f"ensemble member {i} ({type(m).__name__}) has no torch model to export")
        if int(m.size) != int(predictor.size) or m.fit != predictor.fit:
            raise BadInputError(f"ensemble member {i} takes {m.size} px images ({m.fit}), the ensemble {predictor.size} "
                                f"px ({predictor.fit}); one exported graph needs one input size")
    return members


def _metadata(predictor, members: list, run_dir: str, fmt: str) -> dict:
    def one(m) -> dict:
        return {"model": getattr(m, "model_name", ""), "prior_shift": getattr(m, "prior_shift", None),
                "calibration": getattr(m, "calibration", None), "mean": list(m.mean), "std": list(m.std),
                "tta": getattr(m, "tta", "none") or "none", "input_size": int(getattr(m, "input_size", 0) or 0),
                "interpolation": getattr(m, "interpolation", "bilinear")}

    first = one(members[0])
    ttas = {one(m)["tta"] for m in members}
    meta = {"size": int(predictor.size), "fit": predictor.fit, "threshold": float(predictor.threshold),
            "mean": first["mean"], "std": first["std"], "input_size": first["input_size"],
            "interpolation": first["interpolation"], "prior_shift": first["prior_shift"],
            "calibration": first["calibration"], "model": first["model"], "n_members": len(members),
            "tta": first["tta"] if len(ttas) == 1 else None,  # None: each member's own (in members)
            "version": __version__, "format": fmt, "source_run": str(run_dir), "input": INPUT_DOC, "output": OUTPUT_DOC}
    if len(members) > 1:
        meta["members"] = [one(m) for m in members]
        meta["combine"] = COMBINE[_combine(predictor)]
    return meta


# ---------------------------------------------------------------- which layer failed


def _scope_to_path(scope: str) -> str:
    """A traced node's scope -> 'members.0.net.1'. torch.jit.trace writes the modules entered as
    '__module.members.0/__module.members.0.net/...' (full paths); the ONNX exporter's graph as
    'Type::name' parts, qualified below a member from the member ('net', 'net.1')."""
    parts = scope.split("/")
    if parts and parts[-1].startswith("__module."):
        return parts[-1][len("__module."):]
    names = [part.split("::", 1)[1] for part in parts if "::" in part]
    names = [n for n in names if n]
    member = next((n for n in names if re.fullmatch(r"members\.\d+", n)), None)
    if member is None:
        return names[-1] if names else ""
    last = names[-1]
    return member if last == member else f"{member}.{last}"


def _member_layer(path: str, scorer: _Scorer) -> str:
    """'members.0.net.features.3' -> "layer 'features.3' (Conv2d)"; member index said for ensembles."""
    m = re.match(r"members\.(\d+)(?:\.net\.?(.*))?$", path)
    if not m:
        return f"'{path or 'the preprocessing'}'"
    idx, layer = int(m.group(1)), m.group(2)
    where = f" of member {idx}" if len(scorer.members) > 1 else ""
    if layer is None:
        return f"the preprocessing or decision rule{where}"
    try:
        kind = type(cast(_Member, scorer.members[idx]).net.get_submodule(layer)).__name__
    except AttributeError:
        kind = "?"
    return f"layer '{layer or '(the model itself)'}' ({kind}){where}"


def failing_layer(exc: BaseException, scorer: _Scorer, example: torch.Tensor) -> str | None:
    """The layer an export failed in: the deepest module whose forward raised, or, for an operator
    the exporter does not know, the module where the traced graph uses it."""
    names = {id(mod): name for name, mod in scorer.named_modules()}
    deepest = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and names.get(id(owner)):
            deepest = names[id(owner)]
        tb = tb.tb_next
    if deepest and deepest.startswith("members.") and deepest.count(".") >= 2:
        return _member_layer(deepest, scorer)
    op = re.search(r"'(aten::\w+)'", str(exc))
    if op:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = torch.jit.trace(scorer, (example,), check_trace=False).inlined_graph
            for node in graph.nodes():
                if node.kind() == op.group(1):
                    return _member_layer(_scope_to_path(node.scopeName()), scorer)
        except Exception:  # noqa: BLE001 - best effort: the exporter's own message still says what failed
            return None
    return None


def _explain_failure(exc: BaseException, scorer: _Scorer, example: torch.Tensor, fmt: str, name: str) -> BadInputError:
    layer = failing_layer(exc, scorer, example)
    reason = first_line(exc)
    where = f" in {layer}" if layer else ""
    return BadInputError(f"model '{name}' does not export to {fmt}{where}: {reason}")


# ---------------------------------------------------------------- writing and checking


def require_exporter(fmt: str) -> None:
    """ONNX export writes with the onnx package and checks with onnxruntime (the `export` extra):
    said up front, before a missing package could look like a model that does not export."""
    if fmt != "onnx":
        return
    import importlib

    for package in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(package)
        except ImportError:
            raise BadInputError(f"export --format onnx needs the {package} package, which is not installed: "
                                f"{EXPORT_HINT}") from None


def _write_onnx(scorer: _Scorer, example: torch.Tensor, path: Path, meta: dict) -> None:
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(scorer, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    model = onnx.load(str(path))
    for key, value in metadata_props(meta).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    model.doc_string = f"lesionlab {__version__}: {OUTPUT_DOC}; input {INPUT_DOC}"
    onnx.save(model, str(path))


def _write_torchscript(scorer: _Scorer, example: torch.Tensor, path: Path, meta: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace announces its deprecation
        traced = torch.jit.trace(scorer, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"lesionlab.json": json.dumps(meta, sort_keys=True)})


def _exported_probabilities(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        return load_onnx_predictor(path).probabilities(images, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return torch.cat([loaded(torch.from_numpy(images[s:s + 16])) for s in range(0, len(images), 16)]).double().numpy()


def verification_images(run_dir: str | os.PathLike, size: int, n: int = N_VERIFY, seed: int = 0) -> tuple[np.ndarray, str]:
    """n images of the run's data set when it can be found (test images first, then validation,
    then the train pool), else n seeded random images."""
    try:
        from ..data.splits import load_split
        from ..data.store import Store
        from ..runs import load_run

        run = load_run(run_dir)
        store = Store.open(run.config["data"])
        if store.size != size:
            raise BadInputError("store size differs")
        split = load_split(store, run.config.get("split", ""))
        sides = [split.positions(store.table, side) for side in ("test", "val")]
        rest = np.setdiff1d(np.arange(len(store.table)), np.concatenate(sides))
        pos = np.concatenate(sides + [rest])[:n]
        if len(pos) == n:
            n_test = min(n, len(sides[0]))
            what = f"{n} test images" if n_test == n else f"{n} images ({n_test} test, the rest validation/train)"
            return store.pixels(np.sort(pos)), f"{what} of {run.config['data']}"
    except (LesionLabError, OSError, KeyError, ValueError):
        pass
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), f"{n} random images (seed {seed})"


def export_predictor(predictor, fmt: str, out: str | os.PathLike, images: np.ndarray, run_dir: str = "",
                     images_note: str = "", tolerance: float = TOLERANCE) -> ExportResult:
    """Write `predictor` (one model or an ensemble with `members`) to `out` and check it on `images`
    against predictor.probabilities; the file takes its name only when the check passes."""
    if fmt not in FORMATS:
        raise BadInputError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    require_exporter(fmt)
    out = Path(out)
    members = _members(predictor)
    from ..engine.runtime import resolve_runtime

    for m in members:  # the reference is fp32 on the CPU, as the exported graph computes
        m.model.float().eval().to("cpu")
        m.model.to(memory_format=torch.contiguous_format)
        if hasattr(m, "runtime"):
            m.runtime = resolve_runtime("cpu", "32", "false")
    scorer = _Scorer(members, _combine(predictor)).eval()
    example = torch.from_numpy(np.ascontiguousarray(images[:2]))
    meta = _metadata(predictor, members, run_dir, fmt)
    name = meta["model"] or type(members[0].model).__name__
    with torch.no_grad():
        expected = np.asarray(predictor.probabilities(images), dtype=np.float64)
    with atomic_path(out) as tmp:
        try:
            with torch.no_grad():
                (_write_onnx if fmt == "onnx" else _write_torchscript)(scorer, example, tmp, meta)
        except LesionLabError:
            raise
        except Exception as e:  # the exporters raise many types; say which layer and why
            raise _explain_failure(e, scorer, example, fmt, name) from None
        got = _exported_probabilities(tmp, fmt, images)
        diff = float(np.max(np.abs(got - expected))) if len(images) else 0.0
        if not diff <= tolerance:
            raise BadInputError(f"the exported {fmt} model differs from the torch model by up to {diff:.2e} on "
                                f"{len(images)} images (tolerance {tolerance:g}); not written")
    log.info("exported %s to %s: max |difference| %.2e on %s", fmt, out, diff, images_note)
    return {"out": str(out), "format": fmt, "max_abs_diff": diff, "n_images": len(images), "images": images_note,
            "bytes": out.stat().st_size, "metadata": meta}


def export(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike, overwrite: bool = False,
           n_verify: int = N_VERIFY) -> ExportResult:
    """`lesionlab export RUN_DIR|ENS_DIR --format onnx|torchscript --out FILE`."""
    from ..runs.predictor import load_image_predictor

    out = Path(out)
    require_file_out(out, overwrite)
    check_at_least(n_verify, 1, "--verify")  # an export is always checked against torch
    if fmt not in FORMATS:
        raise BadInputError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    require_exporter(fmt)
    predictor = load_image_predictor(run_dir, "cpu", "export")
    images, note = verification_images(run_dir, int(predictor.size), n_verify)
    make_dirs(out.parent)  # a new output: atomic_path creates no folders
    return export_predictor(predictor, fmt, out, images, str(run_dir), note)
