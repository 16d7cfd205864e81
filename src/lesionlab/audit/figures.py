"""The audit's two figures, drawn through plots.py: the distribution of the CAM shares by outcome with the
occlusions' probability changes, and the gallery of the images with the most evidence off the lesion."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import plots
from ..runs.format import FIGURES
from . import regions
from .measure import OCCLUSIONS, Audit, AuditSettings

SHARES = FIGURES["audit_shares"][0]
GALLERY = FIGURES["audit_gallery"][0]


def shares_figure(audit: Audit, path: Path) -> Path:
    table, block = audit.table, audit.block
    outcomes = list(block["by_outcome"])
    boxes = []
    if "skipped" not in block["cam"]:
        area = block["cam"]["area"]
        by = {o: table.loc[table["outcome"] == o, "off_lesion_share"].to_numpy() for o in outcomes}
        if area["frame"] is not None:
            boxes.append(("CAM mass in the outer frame",
                          {o: table.loc[table["outcome"] == o, "frame_share"].to_numpy() for o in outcomes}, area["frame"]))
        boxes.append(("CAM mass off the lesion", by, 1 - area["lesion"]))
    y = table["label"].to_numpy() if "label" in table else None
    scatters = [(f"{what} hidden", table["prob"].to_numpy(), table[f"prob_{key}_hidden"].to_numpy(), y)
                for key, what in OCCLUSIONS.items() if block["occlusion"][key] is not None]
    layers = ", ".join(block["settings"]["layers"]) or "no CAM"
    plots.audit_summary(boxes, scatters, path, f"shortcut audit of {block['n']} images ({block['settings']['method']} "
                                               f"on {layers})")
    return path


def gallery_figure(audit: Audit, images: np.ndarray, predictor, settings: AuditSettings, path: Path) -> Path | None:
    """Per outcome, the `settings.gallery` images with the largest CAM share off the lesion, each beside its
    overlay with the lesion mask's outline in white; None when there are no CAMs."""
    from ..workflows.explain import overlay, predictor_cams

    table = audit.table
    if "skipped" in audit.block["cam"] or not settings.gallery:
        return None
    share = table["off_lesion_share"].to_numpy(dtype=np.float64)
    picks = {}
    for outcome in audit.block["by_outcome"]:
        found = np.flatnonzero((table["outcome"] == outcome).to_numpy() & np.isfinite(share))
        picks[outcome] = found[np.argsort(-share[found], kind="stable")][:settings.gallery]
    order = np.concatenate(list(picks.values())).astype(int)
    if not len(order):
        return None
    maps, layers = predictor_cams(predictor, images[order], settings.method, settings.target_layer, settings.batch_size)
    by_pos = dict(zip(order.tolist(), maps))
    h, w = images.shape[1:3]
    frame = regions.frame_mask(h, w, settings.frame)
    rows = []
    for outcome, positions in picks.items():
        items = []
        for p in positions:
            mask, _ = regions.lesion_mask(images[p], frame)
            over = overlay(images[p], by_pos[p])
            over[regions.outline(mask)] = 255
            caption = (f"{table['id'].iloc[p]}\np = {table['prob'].iloc[p]:.3f}, off-lesion {share[p]:.0%}")
            items.append((images[p], over, caption))
        rows.append((f"{outcome} ({len(positions)} of {int((table['outcome'] == outcome).sum())})", items))
    plots.image_pair_rows(rows, path, f"most CAM mass off the lesion, per outcome ({settings.method} on {', '.join(layers)}; "
                                      "white: the lesion mask's outline)")
    return path
