"""Writers of the official layouts, for tests and benchmarks: data in exactly the form lesionlab
reads from others (ISIC 2024 metadata + HDF5, ISIC 2019/2020 CSV + JPEG folder, manifests)."""
from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from lesionlab.data.sources import ISIC2024_COLUMNS, ISIC2024_TEXT_COLUMNS

_SITES = ["posterior torso", "lower extremity", "anterior torso", "upper extremity", "head/neck"]
_LOCATIONS = ["Torso Back Top Third", "Left Leg - Lower", "Torso Front Top Half", "Right Arm - Upper", "Head & Neck"]
_INSTITUTIONS = ["Memorial Sloan Kettering Cancer Center", "ViDIR Group, Department of Dermatology, Medical University of Vienna",
                 "Department of Dermatology, Hospital Clínic de Barcelona", "University Hospital of Basel",
                 "Frazer Institute, The University of Queensland, Dermatology Research Centre",
                 "ACEMID MIA", "Department of Dermatology, University of Athens, Andreas Syggros Hospital"]
_LICENSES = ["CC-BY", "CC-BY-NC", "CC-0"]


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def lesion_image(rng: np.random.Generator, h: int, w: int, malignant: bool) -> np.ndarray:
    """A skin-coloured crop with a darker blob; malignant blobs are larger and more irregular,
    so a classifier can learn something from them."""
    yy, xx = np.mgrid[0:h, 0:w]
    skin = np.array([200, 160, 140]) + rng.normal(0, 10, 3)
    img = np.ones((h, w, 3)) * skin
    cy, cx = h / 2 + rng.normal(0, h / 10), w / 2 + rng.normal(0, w / 10)
    r = min(h, w) * (0.3 if malignant else 0.18) * rng.uniform(0.8, 1.2)
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + (0.25 if malignant else 0.05) * np.sin(angle * rng.integers(3, 7) + rng.uniform(0, 6))
    inside = ((yy - cy) ** 2 + (xx - cx) ** 2) < (r * wobble) ** 2
    colour = np.array([90, 55, 40]) if malignant else np.array([140, 100, 80])
    img[inside] = colour + rng.normal(0, 12, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def isic2024_metadata(n: int, n_patients: int, n_positive: int, seed: int = 0) -> pd.DataFrame:
    """train-metadata.csv rows with all 55 columns, in order, with plausible values."""
    rng = np.random.default_rng(seed)
    ids = [f"ISIC_{i:07d}" for i in rng.choice(9_999_999, size=n, replace=False)]
    patients = np.array([f"IP_{i:07d}" for i in rng.choice(9_999_999, size=n_patients, replace=False)])
    # uneven patients, as in the real data (some have hundreds of crops, some a few)
    weights = rng.pareto(1.5, n_patients) + 1
    patient = patients[rng.choice(n_patients, size=n, p=weights / weights.sum())]
    target = np.zeros(n, np.int64)
    target[rng.choice(n, size=min(n_positive, n), replace=False)] = 1
    cols: dict[str, object] = {}
    for c in ISIC2024_COLUMNS:
        if c not in ISIC2024_TEXT_COLUMNS:
            cols[c] = np.round(rng.normal(20, 8, n), 4)
    cols.update({
        "isic_id": ids, "target": target, "patient_id": patient,
        "age_approx": rng.choice(np.arange(20, 90, 5), size=n).astype(float),
        "sex": rng.choice(["male", "female", ""], size=n, p=[0.5, 0.45, 0.05]),
        "anatom_site_general": rng.choice(_SITES + [""], size=n),
        "clin_size_long_diam_mm": np.round(rng.gamma(2, 2, n) + 1, 2),
        "image_type": "TBP tile: close-up",
        "tbp_tile_type": rng.choice(["3D: white", "3D: XP"], size=n),
        "tbp_lv_location": rng.choice(_LOCATIONS, size=n), "tbp_lv_location_simple": rng.choice(_SITES, size=n),
        "tbp_lv_nevi_confidence": np.round(rng.uniform(0, 100, n), 4),
        "tbp_lv_dnn_lesion_confidence": np.round(rng.uniform(0, 100, n), 4),
        "attribution": rng.choice(_INSTITUTIONS, size=n), "copyright_license": rng.choice(_LICENSES, size=n),
        "lesion_id": np.where(target == 1, [f"IL_{i:07d}" for i in rng.integers(0, 9_999_999, n)], ""),
        "iddx_full": np.where(target == 1, "Malignant::Malignant epidermal proliferations::Basal cell carcinoma", "Benign"),
        "iddx_1": np.where(target == 1, "Malignant", "Benign"),
        "iddx_2": np.where(target == 1, "Malignant epidermal proliferations", ""),
        "iddx_3": np.where(target == 1, "Basal cell carcinoma", ""), "iddx_4": "", "iddx_5": "",
        "mel_mitotic_index": "", "mel_thick_mm": np.nan,
    })
    return pd.DataFrame(cols)[list(ISIC2024_COLUMNS)]


def _crops(seed: int, start: int, targets: list[int], size_range: tuple[int, int], square: bool) -> list[bytes]:
    """JPEG bytes of crops start, start+1, ...; each crop's randomness depends only on (seed, index)."""
    out = []
    for k, t in enumerate(targets):
        rng = np.random.default_rng([seed, start + k])
        side = int(rng.integers(*size_range))
        other = side if square else side + int(rng.integers(-4, 5))
        out.append(jpeg_bytes(lesion_image(rng, side, other, bool(t))))
    return out


def write_isic2024(folder: Path, n: int = 60, n_patients: int = 12, n_positive: int = 15, seed: int = 0,
                   images: str = "hdf5", size_range: tuple[int, int] = (100, 160), prefix: str = "train",
                   labels: bool = True, workers: int = 1, progress=None) -> Path:
    """`{prefix}-metadata.csv` with `{prefix}-image.hdf5` (images='hdf5') or `{prefix}-image/image/`.
    Images are made in chunks on `workers` processes, so 400k crops take minutes, not hours."""
    from lesionlab.data.parallel import map_ordered

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = isic2024_metadata(n, n_patients, n_positive, seed)
    targets = meta["target"].tolist()
    ids = meta["isic_id"].tolist()
    if not labels:  # the test files carry neither labels nor label-derived columns
        meta = meta.drop(columns=["target", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4",
                                  "iddx_5", "mel_mitotic_index", "mel_thick_mm"])
    chunk = 2000
    starts = range(0, n, chunk)
    tasks = ((seed, s, targets[s:s + chunk], size_range, images != "hdf5") for s in starts)
    crops = map_ordered(_crops, tasks, workers)
    if images == "hdf5":
        with h5py.File(folder / f"{prefix}-image.hdf5", "w") as f:
            for s, batch in zip(starts, crops):
                for isic_id, data in zip(ids[s:s + chunk], batch):
                    f.create_dataset(isic_id, data=np.bytes_(data))  # a scalar of the JPEG file's bytes
                if progress:
                    progress(s + len(batch), n)
    else:
        img_dir = folder / f"{prefix}-image" / "image"
        img_dir.mkdir(parents=True, exist_ok=True)
        for s, batch in zip(starts, crops):
            for isic_id, data in zip(ids[s:s + chunk], batch):
                (img_dir / f"{isic_id}.jpg").write_bytes(data)
            if progress:
                progress(s + len(batch), n)
    meta.to_csv(folder / f"{prefix}-metadata.csv", index=False)
    return folder


# ---------------------------------------------------------------- the ISIC Archive's permissive release

PERMISSIVE = "ISIC_2024_Permissive_Training"
SUPPLEMENT_COLUMNS = ["isic_id", "attribution", "copyright_license", "lesion_id", "iddx_full", "iddx_1", "iddx_2",
                      "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence"]
_PERMISSIVE_SOURCES = [("Memorial Sloan Kettering Cancer Center", "CC-BY"), ("ACEMID MIA", "CC-0"),
                       ("Frazer Institute, The University of Queensland, Dermatology Research Centre", "CC-BY")]
_MALIGNANT_IDDX = [
    ("Malignant::Malignant epidermal proliferations::Basal cell carcinoma", "Basal cell carcinoma", "", "", ""),
    ("Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma in situ::Melanoma in situ, superficial "
     "spreading", "Melanoma in situ", "Melanoma in situ, superficial spreading", "", ""),
    ("Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma Invasive", "Melanoma Invasive", "", "0/mm^2",
     "0.3"),
]
# the Kaggle competition's test-metadata.csv: the training columns without the label and the label-derived ones
KAGGLE_TEST_COLUMNS = [c for c in ISIC2024_COLUMNS if c not in (
    "target", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index",
    "mel_thick_mm", "tbp_lv_dnn_lesion_confidence")]


def permissive_tables(n: int, n_positive: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ground truth, supplement) rows as the ISIC Archive writes them: malignant as the text 1.0 / 0.0,
    lesion_id filled for every malignant crop and about 8% of benign ones, diagnoses in iddx_*."""
    rng = np.random.default_rng(seed)
    ids = [f"ISIC_{i:07d}" for i in np.sort(rng.choice(9_999_999, size=n, replace=False))]
    target = np.zeros(n, int)
    target[rng.choice(n, size=min(n_positive, n), replace=False)] = 1
    truth = pd.DataFrame({"isic_id": ids, "malignant": np.where(target == 1, "1.0", "0.0")})
    rows = []
    for i, t in zip(ids, target):
        who, lic = _PERMISSIVE_SOURCES[int(rng.integers(len(_PERMISSIVE_SOURCES)))]
        lesion = f"IL_{int(rng.integers(9_999_999)):07d}" if t or rng.uniform() < 0.08 else ""
        if t:
            full, third, fourth, mitotic, thick = _MALIGNANT_IDDX[int(rng.integers(len(_MALIGNANT_IDDX)))]
            second = full.split("::")[1]
            iddx = [full, "Malignant", second, third, fourth, ""]
        else:
            full, mitotic, thick = "Benign", "", ""
            iddx = ["Benign", "Benign", "", "", "", ""]
        rows.append([i, who, lic, lesion, *iddx, mitotic, thick, f"{rng.uniform(0, 100):.4f}"])
    return truth, pd.DataFrame(rows, columns=SUPPLEMENT_COLUMNS)


def write_isic2024_permissive(folder: Path, n: int = 60, n_positive: int = 12, seed: int = 0,
                              size_range: tuple[int, int] = (20, 28)) -> Path:
    """The release as the ISIC Archive ships it: PREFIX_Input/ISIC_*.jpg (square JPEG crops, with the
    archive's ATTRIBUTION.txt and LICENSE.txt beside them), PREFIX_GroundTruth.csv, PREFIX_Supplement.csv."""
    folder = Path(folder)
    images = folder / f"{PERMISSIVE}_Input"
    images.mkdir(parents=True, exist_ok=True)
    truth, supplement = permissive_tables(n, n_positive, seed)
    targets = (truth["malignant"] == "1.0").astype(int).tolist()
    for isic_id, data in zip(truth["isic_id"], _crops(seed, 0, targets, size_range, square=True)):
        (images / f"{isic_id}.jpg").write_bytes(data)
    (images / "ATTRIBUTION.txt").write_text("ISIC Archive\n")
    (images / "LICENSE.txt").write_text("CC-BY and CC-0, per image\n")
    truth.to_csv(folder / f"{PERMISSIVE}_GroundTruth.csv", index=False)
    supplement.to_csv(folder / f"{PERMISSIVE}_Supplement.csv", index=False)
    return folder


def write_kaggle_test(folder: Path, release: Path, ids: list[str]) -> Path:
    """The competition's test layout for some crops of a permissive release: test-metadata.csv (its 44
    columns, in order; the values the release has, the others empty) and test-image.hdf5 (JPEG bytes by id)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    supplement = pd.read_csv(release / f"{PERMISSIVE}_Supplement.csv", dtype=str, keep_default_na=False)
    supplement = supplement.set_index("isic_id").loc[ids].reset_index()
    meta = pd.DataFrame({c: supplement[c] if c in supplement.columns else "" for c in KAGGLE_TEST_COLUMNS})
    meta.to_csv(folder / "test-metadata.csv", index=False)
    with h5py.File(folder / "test-image.hdf5", "w") as f:
        for isic_id in sorted(ids):  # the file's own order differs from the metadata's
            data = (release / f"{PERMISSIVE}_Input" / f"{isic_id}.jpg").read_bytes()
            f.create_dataset(isic_id, data=np.bytes_(data))
    return folder
