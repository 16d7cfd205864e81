"""Where does the model look? Class-activation maps (Grad-CAM, Grad-CAM++, Score-CAM from the
`grad-cam` library) for new images, and the test-set gallery a run's report shows.

The target is the single 'malignant' logit (grad-cam's BinaryClassifierOutputTarget(1), the
target its documentation gives for one-output binary models), so a map shows the evidence for
malignancy, whatever the decision. The target layer comes from the model registry
(ModelSpec.cam_layer) unless --target-layer names one. Maps are computed at the model's input
size and resized back over the original image, undoing the run's fit (stretch, crop or pad).
"""
from __future__ import annotations

import contextlib
import hashlib
import html
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import ExplainConfig, validated
from ..data.images import DEFAULT_MAX_PIXELS, DecodeError, _decode_pil, decode_resize
from ..data.sources import read_source
from ..engine.runtime import Runtime, to_input
from ..errors import BadInputError, ExistsError, closest, preview
from ..fileio import check_free, staged_dir, write_csv, write_text
from ..runs.records import ExplainResult

log = logging.getLogger(__name__)

METHODS = ("gradcam", "gradcam++", "scorecam")
OUTPUT_FILES = ("index.csv", "index.html", "overlays")
HTML_TITLE = "<title>lesionlab explain</title>"
GALLERY_ROWS = (("confident", "most confident malignant"), ("missed", "missed malignant (false negatives)"),
                ("false_positive", "top false positives"))


def _cam_class(method: str):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM}
    if method not in classes:
        raise BadInputError(f"--method must be one of {', '.join(METHODS)}, got '{method}'{closest(method, METHODS)}")
    return classes[method]


def _spatial_layers(model: nn.Module, limit: int = 6) -> list[str]:
    names = [n for n, m in model.named_modules() if n and isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Sequential))]
    return names[-limit:]


def resolve_target_layer(model: nn.Module, model_name: str, override: str | None = None) -> tuple[str, nn.Module]:
    """(dotted name, module) of the layer whose activations the CAM weighs."""
    name = override
    if not name:
        from ..models import get_spec

        try:
            name = get_spec(model_name).cam_layer_of(model) if model_name else None
        except BadInputError:
            name = None
        if not name:
            raise BadInputError(
                f"model '{model_name or type(model).__name__}' has no known CAM target layer; pass --target-layer NAME "
                f"with a layer that has a spatial output, e.g. {', '.join(_spatial_layers(model)) or 'a conv layer'}")
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise BadInputError(f"--target-layer {name}: model '{model_name}' has no such layer{closest(name, names)}; "
                            f"layers near the end: {', '.join(_spatial_layers(model))}") from None


@contextlib.contextmanager
def _quiet_scorecam() -> Iterator[None]:
    # ScoreCAM draws a tqdm bar per image; the CLI prints its own progress
    from pytorch_grad_cam import score_cam

    saved = score_cam.tqdm
    score_cam.tqdm = SimpleNamespace(tqdm=lambda iterable, *a, **k: iterable)
    try:
        yield
    finally:
        score_cam.tqdm = saved


def _normalise(images: np.ndarray, mean, std, device, size: int = 0, interpolation: str = "bilinear") -> torch.Tensor:
    """The model's float32 input, contiguous NCHW (CAM libraries hook plain layouts), enlarged to
    `size` first when the run trained at another input size."""
    return to_input(torch.from_numpy(np.ascontiguousarray(images)), Runtime(device, False, False), mean, std,
                    size, interpolation)


def _to_side(maps: np.ndarray, side: int) -> np.ndarray:
    """CAMs computed at the model's input size, back at the images' size."""
    if maps.shape[-1] == side:
        return maps
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).unsqueeze(1)
    return F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False).squeeze(1).clamp(0, 1).numpy()


def cam_maps(model: nn.Module, images: np.ndarray, mean, std, layer: nn.Module, method: str = "gradcam",
             layer_name: str = "", batch_size: int = 16, input_size: int = 0,
             interpolation: str = "bilinear") -> np.ndarray:
    """(N, S, S) maps in [0, 1] for uint8 (N, S, S, 3) images: the evidence for 'malignant'. A model
    that takes another input size (input_size) sees the images enlarged, and its maps come back at S."""
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    cls = _cam_class(method)
    model.eval()
    param = next(model.parameters())
    device, dtype = param.device, param.dtype  # a --precision 64 run's model takes float64 input
    out = []
    with cls(model=model, target_layers=[layer]) as cam, (_quiet_scorecam() if method == "scorecam" else contextlib.nullcontext()):
        cam.batch_size = batch_size  # ScoreCAM's masked forward passes per batch
        for start in range(0, len(images), batch_size):
            x = _normalise(images[start:start + batch_size], mean, std, device, input_size, interpolation).to(dtype)
            try:
                maps = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)] * len(x))
            except ValueError as e:
                if "Invalid" in str(e) and "shape" in str(e):  # grad-cam's words for a layer without a 2-D map
                    raise BadInputError(f"--target-layer {layer_name}: its output is not a (N, C, H, W) feature map; "
                                        "choose a convolutional layer or stage") from None
                raise
            out.append(_to_side(np.asarray(maps, dtype=np.float32), images.shape[1]))
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.float32)


def _members(predictor) -> list:
    """The networks behind a predictor: itself, or an ensemble's members (attribute `members`)."""
    return list(getattr(predictor, "members", None) or [predictor])


def predictor_cams(predictor, images: np.ndarray, method: str = "gradcam", target_layer: str | None = None,
                   batch_size: int = 16) -> tuple[np.ndarray, list[str]]:
    """CAMs of a predictor (the mean of its members' maps for an ensemble) and the layer names used."""
    maps, layers = [], []
    for member in _members(predictor):
        name, layer = resolve_target_layer(member.model, getattr(member, "model_name", ""), target_layer)
        maps.append(cam_maps(member.model, images, member.mean, member.std, layer, method, name, batch_size,
                             getattr(member, "input_size", 0), getattr(member, "interpolation", "bilinear")))
        layers.append(name)
    return np.mean(maps, axis=0), layers


def cam_to_original(cam: np.ndarray, width: int, height: int, fit: str) -> np.ndarray:
    """A map over the model's square input, put back over the original (width x height) image."""
    size = cam.shape[0]
    if fit == "pad":
        scale = size / max(width, height)
        nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
        top, left = (size - nh) // 2, (size - nw) // 2
        cam = cam[top:top + nh, left:left + nw]
    resized = lambda c, w, h: np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))  # noqa: E731
    if fit == "crop":
        side = min(width, height)
        full = np.zeros((height, width), np.float32)
        top, left = (height - side) // 2, (width - side) // 2
        full[top:top + side, left:left + side] = resized(cam, side, side)
        return full
    return resized(cam, width, height)


def overlay(image: np.ndarray, cam: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """The CAM as a heat map over a uint8 RGB image of the same height and width."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255, np.clip(cam, 0, 1), use_rgb=True, image_weight=weight)


def _decode_original(data: bytes) -> np.ndarray:
    # the same decoding rules as prepare (16-bit, alpha, CMYK), at the full size
    return np.asarray(_decode_pil(data, 1 << 16, DEFAULT_MAX_PIXELS))


def is_explain_output(folder: Path) -> bool:
    """Whether `folder` holds an earlier explain output and nothing else (what --overwrite may replace):
    index.csv, index.html (with explain's title) and overlays/ of PNG files only."""
    try:
        names = {p.name for p in folder.iterdir()}
        if names != set(OUTPUT_FILES) or not (folder / "overlays").is_dir():
            return False
        if any(not p.is_file() or p.suffix != ".png" for p in (folder / "overlays").iterdir()):
            return False
        with open(folder / "index.html", encoding="utf-8", errors="replace") as f:
            return HTML_TITLE in f.read(4096)
    except OSError:
        return False


class OverlayNames:
    """A file name per id, unique (also where case is ignored), short and made of safe characters: the
    id itself where it is such a name, else its safe characters cut short and a hash of the whole id
    ('case 1' -> case_1-3f2a...). index.csv maps each id to its file."""

    MAX_STEM = 80

    def __init__(self):
        self.used: set[str] = set()

    def __call__(self, image_id: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", image_id).strip("._")[: self.MAX_STEM] or "image"
        stem = safe
        if safe != image_id or safe.lower() in self.used:
            stem = f"{safe}-{hashlib.sha1(image_id.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"
        k = 1
        while stem.lower() in self.used:  # a hash that collides, or an id that looks like a hashed name
            k += 1
            stem = f"{safe}-{hashlib.sha1(f'{image_id}#{k}'.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"
        self.used.add(stem.lower())
        return f"{stem}.png"


def explain(run_dir: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike, method: str = "gradcam",
            target_layer: str | None = None, fmt: str = "auto", overwrite: bool = False, batch_size: int = 16,
            device: str = "auto", progress: Callable[[int, int], None] | None = None) -> ExplainResult:
    """Overlays (PNG, at each image's own size) for one image, a folder or a manifest, with
    index.csv and index.html; the folder appears only when complete. `overwrite` replaces an
    earlier explain output at `out`, and nothing else."""
    from ..runs.predictor import load_image_predictor

    # the settings checked by the command's config model: the same one-line errors as the CLI's flags
    validated(ExplainConfig, {"method": method, "format": fmt, "batch_size": batch_size})
    replace = is_explain_output if overwrite else None
    if not overwrite and Path(out).is_dir() and is_explain_output(Path(out)):
        raise ExistsError(f"{out}: exists and holds an earlier explain output; choose another --out or pass --overwrite to replace it")
    check_free(out, what="explain output", replace=replace)
    predictor = load_image_predictor(run_dir, device, "explain")
    for member in _members(predictor):  # a missing target layer is refused before any work
        resolve_target_layer(member.model, getattr(member, "model_name", ""), target_layer)
    src = read_source(source, fmt, require_labels=False, metadata=False)
    table = src.table
    rows: list[dict] = []
    bad: list[str] = []
    layers: list[str] = []
    name_of = OverlayNames()
    with staged_dir(out, what="explain output", replace=replace) as staging:
        (staging / "overlays").mkdir()
        for start in range(0, len(table), batch_size):
            chunk = table.iloc[start:start + batch_size]
            originals, inputs, kept = [], [], []
            for _, row in chunk.iterrows():
                try:
                    data = src.reader.read(row["locator"])
                    inputs.append(decode_resize(data, predictor.size, predictor.fit))
                    originals.append(_decode_original(data))
                    kept.append(row)
                except (DecodeError, OSError, KeyError) as e:
                    bad.append(f"{row['id']} ({e})")
            if not kept:
                continue
            x = np.stack(inputs)
            probs = predictor.probabilities(x)
            cams, layers = predictor_cams(predictor, x, method, target_layer, batch_size)
            for row, image, cam, prob in zip(kept, originals, cams, probs):
                h, w = image.shape[:2]
                name = name_of(str(row["id"]))
                Image.fromarray(overlay(image, cam_to_original(cam, w, h, predictor.fit))).save(staging / "overlays" / name)
                record = {"id": row["id"], "prob": float(prob), "decision": int(prob >= predictor.threshold),
                          "width": w, "height": h, "overlay": f"overlays/{name}"}
                if "label" in row and not pd.isna(row["label"]):
                    record["label"] = int(row["label"])
                rows.append(record)
            if progress:
                progress(min(start + batch_size, len(table)), len(table))
        if not rows:
            raise BadInputError(f"{src.location}: no readable images ({preview(bad)})")
        index = pd.DataFrame(rows)
        write_csv(staging / "index.csv", index, float_format="%.6g")
        write_text(staging / "index.html", _index_html(index, method, layers, str(run_dir), predictor.threshold))
    return {"n": len(rows), "skipped": bad, "method": method, "layers": layers, "out": str(out)}


def _index_html(index: pd.DataFrame, method: str, layers: list[str], run: str, threshold: float) -> str:
    cards = []
    for r in index.itertuples():
        label = f", label {r.label}" if "label" in index.columns else ""
        cards.append(f"<figure><img src='{html.escape(r.overlay)}' alt='{html.escape(str(r.id))}' loading='lazy'>"
                     f"<figcaption>{html.escape(str(r.id))}: p = {r.prob:.3f}, "
                     f"{'malignant' if r.decision else 'benign'}{label}</figcaption></figure>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{HTML_TITLE}<style>"
            "body{font-family:system-ui,sans-serif;margin:1.5em}.g{display:flex;flex-wrap:wrap;gap:12px}"
            "figure{margin:0;width:260px}img{max-width:100%;height:auto}figcaption{font-size:.8em;color:#444}"
            f"</style></head><body><h1>{html.escape(method)} of {html.escape(run)}</h1>"
            f"<p>Target: the malignant logit; layer(s) {html.escape(', '.join(layers))}; decision threshold "
            f"{threshold:.3g}. Red marks the regions that raise the malignant score most.</p>"
            f"<div class='g'>{''.join(cards)}</div></body></html>\n")


# ---------------------------------------------------------------- the report's test-set gallery


def gallery_picks(y: np.ndarray, prob: np.ndarray, threshold: float, k: int = 4) -> dict[str, np.ndarray]:
    """Positions of the k most confident malignant images, the k most confidently missed malignant
    ones (false negatives at the threshold) and the k top false positives."""
    y, prob = np.asarray(y).astype(int), np.asarray(prob, dtype=np.float64)
    mal = np.flatnonzero(y == 1)
    missed = mal[prob[mal] < threshold]
    fp = np.flatnonzero((y == 0) & (prob >= threshold))
    return {"confident": mal[np.argsort(-prob[mal], kind="stable")][:k],
            "missed": missed[np.argsort(prob[missed], kind="stable")][:k],
            "false_positive": fp[np.argsort(-prob[fp], kind="stable")][:k]}


def write_gallery(model: nn.Module, model_name: str, images: np.ndarray, ids: np.ndarray, y: np.ndarray,
                  prob: np.ndarray, threshold: float, path: Path, mean, std, method: str = "gradcam",
                  k: int = 4, input_size: int = 0, interpolation: str = "bilinear") -> dict:
    """The gallery figure of a run's test set; returns what it shows (ids per row, layer)."""
    from .. import plots

    picks = gallery_picks(y, prob, threshold, k)
    name, layer = resolve_target_layer(model, model_name)
    order = np.concatenate(list(picks.values())).astype(int)
    maps = (cam_maps(model, images[order], mean, std, layer, method, name, input_size=input_size,
                     interpolation=interpolation) if len(order) else np.zeros((0, 1, 1)))
    by_pos = dict(zip(order.tolist(), maps))
    rows = []
    for key, title in GALLERY_ROWS:
        items = [(images[p], overlay(images[p], by_pos[p]), f"{ids[p]}\np = {prob[p]:.3f}") for p in picks[key]]
        rows.append((f"{title} ({len(picks[key])})", items))
    plots.cam_gallery(rows, path, f"{method} on layer {name}; threshold {threshold:.3g}")
    return {"method": method, "layer": name, "k": k, **{key: [str(ids[p]) for p in picks[key]] for key, _ in GALLERY_ROWS}}
