"""A run (or an ensemble of runs) as one file that scores images outside Python's training stack:
ONNX (onnxruntime, any language) or TorchScript.

The graph takes uint8 RGB images (N, S, S, 3) at the run's size and returns the probability of
'malignant': normalisation, the network, calibration and the prior shift are all inside it, and
the rest of what a user needs (size, fit, threshold, ...) is in the file's metadata. An ensemble
(a predictor with a list of `members`) is exported as the mean of its members' probabilities.
Every export is checked against the torch predictor on 64 images before it is kept.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .calibration import isotonic_segments
from .deploy import INPUT_DOC, INPUT_NAME, OUTPUT_DOC, OUTPUT_NAME, load_onnx_predictor, metadata_props
from .errors import BadInputError, ExistsError, LesionLabError, first_line
from .fileio import atomic_path

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
N_VERIFY = 64
OPSET = 17


class _Member(nn.Module):
    """One network with its run's preprocessing and decision rule, uint8 NHWC -> probability."""

    def __init__(self, predictor):
        super().__init__()
        self.net = predictor.model
        self.register_buffer("mean", torch.tensor(predictor.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(predictor.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.calibration = getattr(predictor, "calibration", None) or {}
        shift = getattr(predictor, "prior_shift", None)
        # the prior shift multiplies the odds by a constant: in logit space, one addition
        self.log_factor = (math.log(shift["to"] / (1 - shift["to"])) - math.log(shift["from"] / (1 - shift["from"]))
                           if shift else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
        z = self.net(x).reshape(-1).float()
        method = self.calibration.get("method")
        if method == "isotonic":
            p = isotonic_segments(z, self.calibration["x"], self.calibration["y"])
            if self.log_factor:
                f = math.exp(self.log_factor)
                p = p * f / (p * f + (1 - p))
            return p
        if method == "temperature":
            z = z / self.calibration["temperature"] + self.calibration.get("offset", 0.0)
        return torch.sigmoid(z + self.log_factor)


class _Scorer(nn.Module):
    def __init__(self, members: list):
        super().__init__()
        self.members = nn.ModuleList([_Member(m) for m in members])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        probs = [m(image) for m in self.members]
        return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)


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
                "calibration": getattr(m, "calibration", None), "mean": list(m.mean), "std": list(m.std)}

    first = one(members[0])
    meta = {"size": int(predictor.size), "fit": predictor.fit, "threshold": float(predictor.threshold),
            "mean": first["mean"], "std": first["std"], "prior_shift": first["prior_shift"],
            "calibration": first["calibration"], "model": first["model"], "n_members": len(members),
            "version": __version__, "format": fmt, "source_run": str(run_dir), "input": INPUT_DOC, "output": OUTPUT_DOC}
    if len(members) > 1:
        meta["members"] = [one(m) for m in members]
        meta["combine"] = "mean of the members' probabilities"
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
        kind = type(scorer.members[idx].net.get_submodule(layer)).__name__
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
        from .data.splits import load_split
        from .data.store import Store
        from .runs import load_run

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
                     images_note: str = "", tolerance: float = TOLERANCE) -> dict:
    """Write `predictor` (one model or an ensemble with `members`) to `out` and check it on `images`
    against predictor.probabilities; the file takes its name only when the check passes."""
    if fmt not in FORMATS:
        raise BadInputError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    out = Path(out)
    members = _members(predictor)
    from .engine.runtime import resolve_runtime

    for m in members:  # the reference is fp32 on the CPU, as the exported graph computes
        m.model.float().eval().to("cpu")
        m.model.to(memory_format=torch.contiguous_format)
        if hasattr(m, "runtime"):
            m.runtime = resolve_runtime("cpu", "32", "false")
    scorer = _Scorer(members).eval()
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
           n_verify: int = N_VERIFY) -> dict:
    """`lesionlab export RUN_DIR|ENS_DIR --format onnx|torchscript --out FILE`."""
    from .runs import load_predictor

    out = Path(out)
    if out.exists() and not overwrite:
        raise ExistsError(f"{out}: exists; choose another --out or pass --overwrite")
    predictor = load_predictor(run_dir, "cpu")
    images, note = verification_images(run_dir, int(predictor.size), n_verify)
    return export_predictor(predictor, fmt, out, images, str(run_dir), note)
