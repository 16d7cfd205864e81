"""The shortcut audit: a lesion mask and artifact detectors on hand-made images; models trained where the label
is drawn only in the border, or only in the lesion, told apart; `lesionlab audit` writing its folder and
recording the run's number honestly; a model without a CAM layer; institution strata on the ISIC 2024 layout;
the audit in compare and the report."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import cli
from lesionlab.audit import artifacts, regions

SIZE = 32
SKIN = np.array([205, 160, 140])
TRAIN = ["--model", "upgraded_cnn", "--epochs", "8", "--n-malignant", "all", "--ratio", "natural", "--lr", "3e-3",
         "--batch-size", "16", "--bootstrap", "100", "--num-threads", "1"]


def skin_image(size: int = 64, lesion_radius: float = 0.2, seed: int = 0, colour=(90, 55, 40)) -> np.ndarray:
    """Skin with a darker, round lesion in the middle and a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.ones((size, size, 3)) * SKIN
    if lesion_radius:
        img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (lesion_radius * size) ** 2] = colour
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def vignette(img: np.ndarray, radius: float = 0.56) -> np.ndarray:
    """The dermoscope's rim: black outside a centred circle."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    out = img.copy()
    out[(yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2 > (radius * size) ** 2] = [8, 6, 6]
    return out


# ---------------------------------------------------------------- regions and detectors on hand-made images


def test_the_lesion_mask_is_the_central_dark_component_not_the_dark_rim():
    # a light-brown lesion (luminance 120, skin 170) inside a black rim that runs all round and outweighs it:
    # Otsu over the whole image would split black from the rest, and the largest dark component is the rim
    img = vignette(skin_image(64, 0.2, colour=(150, 110, 95)), radius=0.48)
    img[28:36, 28:36] = SKIN  # a bright patch inside the lesion (regression, a globule): still lesion
    frame = regions.frame_mask(64, 64)
    mask, source = regions.lesion_mask(img, frame)
    yy, xx = np.mgrid[0:64, 0:64]
    truth = (yy - 32) ** 2 + (xx - 32) ** 2 < (0.2 * 64) ** 2
    assert source == "otsu" and mask[28:36, 28:36].all()
    assert (mask & truth).sum() / truth.sum() > 0.95  # the whole lesion
    assert (mask & ~truth).sum() < 0.8 * truth.sum()  # grown by 3% of the side, not out to the rim
    assert not mask[:6, :6].any() and not mask[-6:, -6:].any()  # the black corners are not lesion
    skin = regions.skin_colour(img, mask, frame)
    assert np.abs(skin.astype(int) - SKIN).max() < 8  # the skin's own colour, not the rim's black


def test_masks_that_find_nothing_fall_back_to_the_centre_and_say_why():
    frame = regions.frame_mask(64, 64)
    flat = np.full((64, 64, 3), 180, np.uint8)  # and below, skin with its noise but no lesion: no two tones
    lit = (skin_image(64, 0) + np.linspace(0, 30, 64)[None, :, None]).astype(np.uint8)  # lit from one side: two
    # halves 15 levels apart (a 30-level range, but no lesion)
    off_centre = skin_image(64, 0)
    off_centre[11:54, 11:16] = 30  # dark, inside the frame, but not in the central window (rows/columns 16..47)
    speck = skin_image(64, 0)
    speck[31:33, 31:33] = 30  # 4 px of 4096: under 0.5% of the image
    for img, reason in ((flat, "flat"), (skin_image(64, 0), "flat"), (lit, "flat"), (off_centre, "none_central"),
                        (speck, "speck")):
        mask, source = regions.lesion_mask(img, frame)
        assert source == reason
        assert np.array_equal(mask, regions.centre_disc(64, 64))


def test_the_frame_and_mass_shares():
    frame = regions.frame_mask(100, 100)
    assert frame[:15].all() and frame[-15:].all() and not frame[15:85, 15:85].any()
    assert frame.mean() == pytest.approx(1 - 0.7 ** 2)
    assert regions.mass_share(np.ones((100, 100)), frame) == pytest.approx(frame.mean())  # a uniform map
    assert regions.mass_share(frame.astype(float), frame) == 1.0
    assert np.isnan(regions.mass_share(np.zeros((100, 100)), frame))  # no evidence anywhere
    assert regions.frame_mask(3, 3) is None  # 15% of 3 px is under one pixel
    assert regions.min_side_for_frame(0.15) == 4 and regions.frame_mask(4, 4) is not None


def test_artifact_detectors_on_hand_made_images():
    band = regions.frame_width(64)
    plain = skin_image(64)
    ringed = vignette(plain)
    lined = plain.copy()
    lined[3, :] = [20, 20, 20]  # a drawn line along the top, inside the frame
    banded = plain.copy()
    banded[:, :7] = [110, 50, 160]  # a dark ink band along the left side: its corners are dark, but it is no vignette
    framed = plain.copy()
    framed[:6], framed[-6:], framed[:, :6], framed[:, -6:] = [40, 90, 200], [40, 90, 200], [40, 90, 200], [40, 90, 200]
    black = vignette(plain, radius=0.4)  # a small optic: near black all round
    spill = skin_image(64, 0.75)  # a dark lesion that runs off the image on every side: no frame
    found = {}
    for name, img in (("plain", plain), ("vignette", ringed), ("line", lined), ("band", banded), ("frame", framed),
                      ("black", black), ("spill", spill)):
        mask, _ = regions.lesion_mask(img, regions.frame_mask(64, 64))
        found[name] = artifacts.detect(img, regions.skin_colour(img, mask, regions.frame_mask(64, 64)), band)
    assert found["plain"] == {"dark_corners": False, "border_lines": False, "frame": False}
    assert found["vignette"] == {"dark_corners": True, "border_lines": False, "frame": False}
    assert found["line"] == {"dark_corners": False, "border_lines": True, "frame": False}
    assert found["band"] == {"dark_corners": False, "border_lines": True, "frame": False}
    assert found["frame"]["frame"] and found["frame"]["border_lines"]  # a blue frame, and its straight inner edge
    assert found["black"] == {"dark_corners": True, "border_lines": False, "frame": True}  # a small optic: both
    assert not found["spill"]["frame"] and not found["spill"]["dark_corners"]
    assert not artifacts.border_lines(lined, 0)  # no frame band to search


# ---------------------------------------------------------------- models trained on a shortcut, or on the lesion


def synthetic_image(rng: np.random.Generator, where: str, label: int) -> np.ndarray:
    """32 px skin with a central lesion. where='border': the label is only a purple ink band along one side
    inside the outer frame (the lesion says nothing); where='centre': the label is only the lesion (large
    and dark when malignant, small and light when benign), and bands appear at random in both classes."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    img = np.ones((SIZE, SIZE, 3)) * (SKIN + rng.normal(0, 8, 3))
    c = SIZE / 2 + rng.normal(0, SIZE / 20, 2)
    if where == "centre":
        r = SIZE * (0.22 if label else 0.12) * rng.uniform(0.85, 1.15)
        colour = np.array([70, 40, 30]) if label else np.array([150, 110, 90])
    else:
        r, colour = SIZE * rng.uniform(0.1, 0.22), np.array([150, 100, 80]) * rng.uniform(0.5, 1.0)
    img[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r ** 2] = colour
    if (label if where == "border" else rng.random() < 0.5):
        fw = regions.frame_width(SIZE)
        width = int(rng.integers(2, fw))
        offset = int(rng.integers(0, fw - width + 1))
        band = np.zeros((SIZE, SIZE), bool)
        band[offset:offset + width] = True
        img[np.rot90(band, int(rng.integers(4)))] = [110, 50, 160]
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def synthetic_data(root: Path, where: str, n_malignant: int = 100, n_benign: int = 150) -> Path:
    from lesionlab.data.sources import read_source
    from lesionlab.data.splits import make_split, save_split, split_path
    from lesionlab.data.store import Store, prepare

    rng = np.random.default_rng(0 if where == "border" else 1)
    (root / "raw" / "images").mkdir(parents=True)
    rows = []
    for i, label in enumerate([1] * n_malignant + [0] * n_benign):
        path = f"images/{where}_{i:04d}.png"
        Image.fromarray(synthetic_image(rng, where, label)).save(root / "raw" / path)
        rows.append({"path": path, "label": label})
    pd.DataFrame(rows).to_csv(root / "raw" / "manifest.csv", index=False)
    prepare(read_source(root / "raw" / "manifest.csv"), root / "data", size=SIZE, workers=1)
    store = Store.open(root / "data")
    save_split(make_split(store, (15, 25), (25, 40), seed=0), split_path(root / "data"))
    return root / "data"


@pytest.fixture(scope="module")
def shortcut_runs(tmp_path_factory) -> dict[str, Path]:
    runs = {}
    for where in ("border", "centre"):
        root = tmp_path_factory.mktemp(where)
        data = synthetic_data(root, where)
        r = cli("train", "--data", data, "--out", root / "run", "--name", where, *TRAIN)
        assert "Shortcut audit (test): CAM mass on the lesion" in r.output
        runs[where] = root / "run"
    return runs


def _audit(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["audit"]


def test_the_audit_tells_a_border_shortcut_from_a_lesion_model(shortcut_runs):
    border, centre = _audit(shortcut_runs["border"]), _audit(shortcut_runs["centre"])
    for a in (border, centre):  # both models learnt their task
        assert a["occlusion"]["frame"]["roc_auc"]["original"] > 0.95
        assert a["recorded"]["by"] == "train" and a["settings"]["layers"] == ["features.14"]
    # hiding the border in skin colour takes the shortcut model to chance and leaves the lesion model alone
    assert border["frame_auc_drop"] > 0.3 and border["occlusion"]["frame"]["roc_auc"]["hidden"] < 0.7
    assert abs(centre["frame_auc_drop"]) < 0.05
    assert border["occlusion"]["off_lesion"]["roc_auc"]["drop"] > 0.3
    assert abs(centre["occlusion"]["off_lesion"]["roc_auc"]["drop"]) < 0.05
    assert border["occlusion"]["frame"]["mean_abs_change"] > 5 * centre["occlusion"]["frame"]["mean_abs_change"]
    # where the evidence lies, over the flagged images
    assert border["cam"]["on_lesion"]["over"] == centre["cam"]["on_lesion"]["over"] == "flagged"
    assert centre["on_lesion_share"] > border["on_lesion_share"] + 0.15
    assert centre["on_lesion_share"] > 1.5 * centre["cam"]["area"]["lesion"]  # well above a uniform map
    assert border["on_lesion_share"] < 1.5 * border["cam"]["area"]["lesion"]  # no better than a uniform map
    assert border["cam"]["frame"]["mean"] > centre["cam"]["frame"]["mean"] + 0.1
    assert border["by_outcome"]["TP"]["off_lesion_share"]["median"] > 0.75
    # the per-image table and the figures the block names
    table = pd.read_csv(shortcut_runs["border"] / "audit.csv", dtype={"id": str})
    assert len(table) == border["n"] == 65 and set(table["mask"]) <= {"otsu", *regions.FALLBACK_REASONS}
    for path in border["figures"].values():
        assert (shortcut_runs["border"] / path).stat().st_size > 5_000


def test_audit_command_writes_its_folder_and_records_honestly(shortcut_runs, tmp_path):
    run = shortcut_runs["centre"]
    before = _audit(run)
    r = cli("audit", run, "--out", tmp_path / "a1", "--n-boot", "20")
    assert "CAM mass on the lesion" in r.output and "recorded in" in r.output
    assert {p.name for p in (tmp_path / "a1").iterdir()} == {"audit.json", "audit.csv", "audit.md", "figures"}
    doc = json.loads((tmp_path / "a1" / "audit.json").read_text())
    assert doc["input"]["kind"] == "test" and doc["n"] == before["n"]
    assert "## Hidden in the image's own skin colour" in (tmp_path / "a1" / "audit.md").read_text()
    after = _audit(run)
    assert after["recorded"]["by"] == "audit" and after["folder"] == str((tmp_path / "a1").resolve())
    assert after["settings"]["n_boot"] == 20 and Path(after["figures"]["gallery"]).exists()
    assert [p["recorded"]["by"] for p in after["previous"]] == ["train"]  # what it replaced, kept in brief
    assert after["previous"][0]["on_lesion_share"] == before["on_lesion_share"]
    # the same images and weights: the same number (only the resamples differ)
    assert after["on_lesion_share"] == pytest.approx(before["on_lesion_share"], abs=1e-6)
    # not recorded: --no-record, and other images than the run's test set (here unlabelled)
    cli("audit", run, "--out", tmp_path / "a2", "--frame", "0.01", "--n-boot", "0", "--gallery", "0", "--no-record")
    doc = json.loads((tmp_path / "a2" / "audit.json").read_text())
    assert doc["frame_auc_drop"] is None and doc["occlusion"]["frame"] is None
    assert any("32 px are too small for a 1% frame" in n for n in doc["notes"])
    cli("audit", run, "--out", tmp_path / "a2", "--overwrite", "--n-boot", "0", "--gallery", "0", "--no-record")
    assert json.loads((tmp_path / "a2" / "audit.json").read_text())["settings"]["frame"] == 0.15  # an audit replaced
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.fromarray(skin_image(48, 0.2, seed=i)).save(images / f"x{i}.png")
    r = cli("audit", run, images, "--out", tmp_path / "a3", "--n-boot", "0")
    doc = json.loads((tmp_path / "a3" / "audit.json").read_text())
    assert "recorded" not in r.output and doc["n"] == 3 and doc["input"]["kind"] == "input"
    assert any("no labels" in n for n in doc["notes"]) and set(doc["by_outcome"]) == {"positive", "negative"}
    assert _audit(run) == after
    # refused: an existing folder, a folder inside the run, a bad frame
    for args, message in (([tmp_path / "a1"], "holds an earlier audit; choose another --out or pass --overwrite"),
                          ([tmp_path / "imgs", "--overwrite"], "is not an earlier audit; --overwrite replaces only that"),
                          ([run / "x"], "inside the run folder"),
                          ([tmp_path / "a5", "--frame", "0.6"], "--frame must be a share of the side in (0, 0.5)")):
        r = cli("audit", run, "--out", *args, ok=False)
        assert r.exit_code == 2 and message in r.output
    assert not (tmp_path / "a5").exists() and not (run / "x").exists() and not list(run.glob(".x*"))


def test_a_re_audit_keeps_the_trail_of_what_it_replaced(tmp_path):
    from lesionlab.audit.command import record

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"test": {"roc_auc": 0.8}}))
    for k, by in enumerate(("train", "audit", "audit")):
        record(run, {"on_lesion_share": 0.1 * k, "frame_auc_drop": 0.0, "n": 5, "recorded": {"by": by}, "settings": {}})
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] == {"roc_auc": 0.8}  # the rest untouched
    assert metrics["audit"]["on_lesion_share"] == pytest.approx(0.2)
    assert [(p["recorded"]["by"], p["on_lesion_share"]) for p in metrics["audit"]["previous"]] == [("train", 0.0), ("audit", 0.1)]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".metrics")]  # no temporary file left


def test_compare_and_report_show_the_audit(shortcut_runs, tmp_path):
    from lesionlab.audit.summary import side, side_text
    from lesionlab.runs import Run

    r = cli("compare", shortcut_runs["border"], shortcut_runs["border"], "--n-boot", "20")
    a = _audit(shortcut_runs["border"])
    line = f"CAM mass on the lesion {a['on_lesion_share']:.3f} [{a['cam']['on_lesion']['ci95'][0]:.3f}, "
    assert f"A: {line}" in r.output and f"B: {line}" in r.output and f"frame hidden {a['frame_auc_drop']:+.3f}" in r.output
    unaudited = Run.load(shortcut_runs["border"])
    del unaudited.metrics["audit"]
    assert side_text(side([unaudited])).startswith("not audited")
    assert "± " in side_text(side([Run.load(shortcut_runs["border"]), Run.load(shortcut_runs["centre"])]))  # seeds
    runs = tmp_path / "runs"
    runs.mkdir()
    for name, path in shortcut_runs.items():
        shutil.copytree(path, runs / name)
    cli("report", runs, "--out", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md[md.index("## Shortcut audit"):md.index("## border")]
    assert "| border | 1 of 1 |" in section and "| centre | 1 of 1 |" in section
    assert "Shortcut audit: CAM mass on the lesion" in md
    assert sorted(p.name for p in (tmp_path / "rep" / "figures").glob("*audit_*")) == [
        "border_seed0_audit_gallery.png", "border_seed0_audit_shares.png",
        "centre_seed0_audit_gallery.png", "centre_seed0_audit_shares.png"]


def test_a_model_without_a_cam_layer_is_audited_without_cams(shortcut_runs, tmp_path, monkeypatch):
    import dataclasses

    from lesionlab import models

    monkeypatch.setitem(models._REGISTRY, "upgraded_cnn", dataclasses.replace(models._REGISTRY["upgraded_cnn"], cam_layer=None))
    r = cli("audit", shortcut_runs["border"], "--out", tmp_path / "a", "--n-boot", "0", "--no-record")
    assert "CAM shares skipped (model 'upgraded_cnn' has no known CAM target layer" in r.output
    doc = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert "skipped" in doc["cam"] and doc["on_lesion_share"] is None and doc["settings"]["layers"] == []
    assert doc["frame_auc_drop"] > 0.3  # the occlusion still runs, and still finds the shortcut
    assert doc["artifacts"]["border_lines"]["n_with"] > 0 and doc["figures"]["gallery"] is None
    assert pd.read_csv(tmp_path / "a" / "audit.csv")["off_lesion_share"].isna().all()
    r = cli("audit", shortcut_runs["border"], "--out", tmp_path / "b", "--target-layer", "nope", ok=False)
    assert "--target-layer nope: model 'upgraded_cnn' has no such layer" in r.output  # named by the user: an error


def test_metrics_by_institution_on_the_isic2024_layout(tmp_path):
    from isic2024_fixture import write_isic2024
    from lesionlab.data.sources import read_source
    from lesionlab.data.splits import make_split, save_split, split_path
    from lesionlab.data.store import Store, prepare

    write_isic2024(tmp_path / "isic", n=90, n_patients=30, n_positive=25, size_range=(40, 60))
    prepare(read_source(tmp_path / "isic"), tmp_path / "data", size=SIZE, workers=1)
    store = Store.open(tmp_path / "data")
    save_split(make_split(store, (5, 10), (8, 20), seed=0), split_path(tmp_path / "data"))
    cli("train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--epochs", "1", "--n-malignant", "8",
        "--bootstrap", "20", "--num-threads", "1", "--batch-size", "16")
    audit = _audit(tmp_path / "run")
    test = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"id": str}).query("split == 'test'")
    meta = pd.read_csv(tmp_path / "isic" / "train-metadata.csv").set_index("isic_id").loc[test["id"]]
    by = audit["strata"]["attribution"]
    assert {k: v["n"] for k, v in by.items()} == meta["attribution"].value_counts().to_dict()
    assert {k: v["n_malignant"] for k, v in by.items()} == meta.groupby("attribution")["target"].sum().to_dict()
    assert audit["settings"]["ci95_unit"] == "patient_id"
    assert all("roc_auc" in v and "ci95" in v for v in by.values())
    r = cli("audit", tmp_path / "run", "--out", tmp_path / "a", "--strata", "attribution,sex", "--n-boot", "0",
            "--gallery", "0", "--no-record")
    assert "## By sex" in (tmp_path / "a" / "audit.md").read_text()
    r = cli("audit", tmp_path / "run", "--out", tmp_path / "b", "--strata", "atribution", ok=False)
    assert r.exit_code == 2 and "--strata atribution: " in r.output and "(did you mean 'attribution'?)" in r.output
