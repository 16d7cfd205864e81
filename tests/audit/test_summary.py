"""The audit's summary numbers (audit/summary.py), by hand and against scikit-learn."""
import numpy as np
import pandas as pd
import pytest


def test_summary_numbers_by_hand_and_against_scikit_learn():
    from sklearn.metrics import roc_auc_score

    from lesionlab.audit.measure import AuditSettings, summarise

    rng = np.random.default_rng(0)
    n = 40
    y = np.r_[np.ones(15, int), np.zeros(25, int)]
    prob = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)
    decision = (prob >= 0.5).astype(int)
    off = np.where(decision == 1, 0.2, 0.9)  # flagged images look at the lesion, the others (noise) do not
    off[-1] = np.nan  # an empty map
    table = pd.DataFrame({"id": [f"i{k}" for k in range(n)], "label": y, "prob": prob, "decision": decision,
                          "outcome": np.select([(y == 1) & (decision == 1), (y == 0) & (decision == 1), y == 1],
                                               ["TP", "FP", "FN"], "TN"),
                          "lesion_area": np.where(decision == 1, 0.3, 0.1), "mask": ["otsu"] * (n - 2) + ["flat", "speck"],
                          "prob_frame_hidden": np.clip(prob - 0.3 * y * rng.uniform(0, 1, n), 0, 1),
                          "prob_off_lesion_hidden": prob, "frame_share": 1 - off, "off_lesion_share": off,
                          "dark_corners": np.arange(n) % 4 == 0, "border_lines": False, "frame": False})
    block = summarise(table, 0.5, AuditSettings(n_boot=200), ["features.14"], None, 64, [], "image")
    flagged = decision == 1
    assert block["cam"]["on_lesion"]["over"] == "flagged" and block["cam"]["on_lesion"]["n"] == flagged.sum()
    assert block["on_lesion_share"] == pytest.approx(0.8)  # not diluted by the unflagged images' noise
    assert block["cam"]["area"]["lesion"] == pytest.approx(0.3)  # a uniform map over the same images
    lo, hi = block["cam"]["on_lesion"]["ci95"]
    assert lo <= 0.8 <= hi
    frame = block["occlusion"]["frame"]["roc_auc"]
    assert frame["original"] == pytest.approx(roc_auc_score(y, prob))
    assert frame["hidden"] == pytest.approx(roc_auc_score(y, table["prob_frame_hidden"]))
    assert block["frame_auc_drop"] == pytest.approx(roc_auc_score(y, prob) - roc_auc_score(y, table["prob_frame_hidden"]))
    assert frame["ci95"][0] <= frame["drop"] <= frame["ci95"][1]
    assert block["occlusion"]["off_lesion"]["mean_abs_change"] == 0 and block["occlusion"]["off_lesion"]["decisions_changed"] == 0
    corners = block["artifacts"]["dark_corners"]
    sel = np.arange(n) % 4 == 0
    assert corners["n_with"] == sel.sum() and corners["with"]["roc_auc"] == pytest.approx(roc_auc_score(y[sel], prob[sel]))
    assert corners["without"]["roc_auc"] == pytest.approx(roc_auc_score(y[~sel], prob[~sel]))
    assert block["mask_fallback"] == {"n": 2, "share": 0.05, "by_reason": {"flat": 1, "none_central": 0, "speck": 1}}
    tp = block["by_outcome"]["TP"]
    assert tp["n"] == ((y == 1) & flagged).sum() and tp["off_lesion_share"]["median"] == pytest.approx(0.2)
    # no flagged image with a map: the headline falls back to every image, and says so
    table["decision"] = 0
    block = summarise(table, 0.5, AuditSettings(n_boot=0), ["features.14"], None, 64, [], "image")
    assert block["cam"]["on_lesion"]["over"] == "all" and any("over all images" in note for note in block["notes"])
    assert block["on_lesion_share"] == pytest.approx(np.nanmean(1 - off))
