"""Every reader on files written in its real layout."""
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE, copy_subset, subset
from isic2024_fixture import write_isic2024
from lesionlab.data.sources import ISIC2024_COLUMNS, detect_format, read_source
from lesionlab.errors import BadInputError


@pytest.fixture
def rows(sample_manifest):
    return subset(sample_manifest, 6, 14)


def test_manifest_real_layout(tmp_path, rows):
    path = copy_subset(rows, tmp_path)
    src = read_source(path)
    assert src.format == "manifest" and detect_format(tmp_path) == "manifest"
    t = src.table
    assert list(t.columns[:6]) == ["id", "label", "patient_id", "lesion_id", "source_id", "locator"]
    assert t["id"].tolist() == [p.split("/")[-1][:-4] for p in rows["path"]]
    assert t["label"].tolist() == rows["label"].astype(int).tolist()
    assert t["lesion_id"].tolist() == rows["lesion_id"].tolist()
    assert (t["patient_id"] == "").all()  # HAM10000 has no patient ids
    assert "dx" in t.columns and "md5" in t.columns  # metadata kept
    assert src.reader.read(t["locator"][0]) == (SAMPLE / rows["path"][0]).read_bytes()


def test_manifest_word_labels_and_id_column(tmp_path, rows):
    rows = rows.assign(label=np.where(rows["label"] == "1", "Malignant", "benign"), id=[f"r{i}" for i in range(len(rows))])
    src = read_source(copy_subset(rows, tmp_path))
    assert src.table["label"].sum() == 6 and src.table["id"][3] == "r3"


def test_manifest_bad_label_names_rows(tmp_path, rows):
    rows.loc[2, "label"] = "2"
    rows.loc[5, "label"] = "maybe"
    with pytest.raises(BadInputError, match=r"manifest.csv: column 'label'.*2 row\(s\).*line 4: '2'.*line 7: 'maybe'"):
        read_source(copy_subset(rows, tmp_path))


def test_manifest_duplicate_ids(tmp_path, rows):
    rows = pd.concat([rows, rows.iloc[[0]]], ignore_index=True)
    with pytest.raises(BadInputError, match=r"duplicate id.*lines 2, 22"):
        read_source(copy_subset(rows, tmp_path))


def test_manifest_missing_column(tmp_path, rows):
    with pytest.raises(BadInputError, match="missing column.*label"):
        read_source(copy_subset(rows.drop(columns=["label"]), tmp_path))


def test_manifest_unlabelled_for_predict(tmp_path, rows):
    src = read_source(copy_subset(rows.drop(columns=["label"]), tmp_path), require_labels=False)
    assert not src.labelled and len(src.table) == 20


@pytest.mark.parametrize("images", ["hdf5", "folder"])
def test_isic2024(tmp_path, images):
    write_isic2024(tmp_path, n=40, n_patients=6, n_positive=5, images=images)
    assert detect_format(tmp_path) == "isic2024"
    src = read_source(tmp_path)
    t = src.table
    meta = pd.read_csv(tmp_path / "train-metadata.csv")
    assert list(meta.columns) == list(ISIC2024_COLUMNS) and len(ISIC2024_COLUMNS) == 55
    assert t["id"].tolist() == meta["isic_id"].tolist()
    assert t["label"].tolist() == meta["target"].tolist()
    assert t["patient_id"].tolist() == meta["patient_id"].tolist()
    assert t["tbp_lv_areaMM2"].dtype == np.float64 and t["iddx_5"].dtype == object
    data = src.reader.read(t["locator"][0])
    assert data[:2] == b"\xff\xd8"  # raw JPEG file bytes
    # the metadata file alone also works, finding its images beside it
    assert len(read_source(tmp_path / "train-metadata.csv").table) == 40


def test_isic2024_test_files_without_labels(tmp_path):
    write_isic2024(tmp_path, n=10, prefix="test", labels=False)
    with pytest.raises(BadInputError, match="no labels|missing column"):
        read_source(tmp_path)
    src = read_source(tmp_path / "test-metadata.csv", require_labels=False)
    assert len(src.table) == 10 and "label" not in src.table


def test_isic2024_mostly_empty_column_read_as_number(tmp_path):
    write_isic2024(tmp_path, n=30)
    meta = pd.read_csv(tmp_path / "train-metadata.csv", dtype=str, keep_default_na=False)
    meta["mel_thick_mm"] = ""
    meta.loc[29, "mel_thick_mm"] = "0.4"
    meta.to_csv(tmp_path / "train-metadata.csv", index=False)
    t = read_source(tmp_path).table
    assert t["mel_thick_mm"].dtype == np.float64 and t["mel_thick_mm"].iloc[29] == 0.4


def _jpegs(rows, folder, size=None):
    folder.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for p in rows["path"]:
        dest = folder / p.split("/")[-1]
        if size:
            Image.open(SAMPLE / p).resize(size).save(dest)
        else:
            shutil.copyfile(SAMPLE / p, dest)


def test_isic2019_layout(tmp_path, rows):
    ids = [p.split("/")[-1][:-4] for p in rows["path"]]
    gt = pd.DataFrame(0.0, index=range(len(ids)), columns=["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"])
    dx = rows["isic2019_dx"].tolist()
    for i, d in enumerate(dx):
        gt.loc[i, d] = 1.0
    gt.insert(0, "image", ids)
    gt.to_csv(tmp_path / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame({"image": ids, "age_approx": 50, "anatom_site_general": "", "lesion_id": rows["lesion_id"],
                  "sex": "male"}).to_csv(tmp_path / "ISIC_2019_Training_Metadata.csv", index=False)
    _jpegs(rows, tmp_path / "ISIC_2019_Training_Input")
    assert detect_format(tmp_path) == "isic-csv"
    t = read_source(tmp_path).table
    expected = [int(d in ("MEL", "BCC", "SCC")) for d in dx]
    assert t["label"].tolist() == expected == rows["label"].astype(int).tolist()
    assert t["lesion_id"].tolist() == rows["lesion_id"].tolist()
    assert all(loc.startswith("ISIC_2019_Training_Input/") for loc in t["locator"])


def test_isic2020_layout_prefers_the_folder_with_most_images(tmp_path, rows):
    ids = [p.split("/")[-1][:-4] for p in rows["path"]]
    pd.DataFrame({"image_name": ids, "patient_id": [f"IP_{i % 5}" for i in range(len(ids))],
                  "lesion_id": rows["lesion_id"], "sex": "female", "age_approx": 45.0,
                  "anatom_site_general_challenge": "torso", "diagnosis": rows["dx"],
                  "benign_malignant": np.where(rows["label"] == "1", "malignant", "benign"),
                  "target": rows["label"]}).to_csv(tmp_path / "train.csv", index=False)
    _jpegs(rows, tmp_path / "jpeg" / "train")
    _jpegs(rows.iloc[:3], tmp_path / "512x512", size=(64, 64))  # a partial resized copy
    src = read_source(tmp_path, "isic-csv")
    t = src.table
    assert t["patient_id"].tolist()[:3] == ["IP_0", "IP_1", "IP_2"]
    assert all(loc.startswith("jpeg/train/") for loc in t["locator"])
    assert t["label"].tolist() == rows["label"].astype(int).tolist()


def test_class_folders(tmp_path, rows):
    _jpegs(rows[rows["label"] == "1"], tmp_path / "malignant")
    _jpegs(rows[rows["label"] == "0"], tmp_path / "Benign" / "sub")
    assert detect_format(tmp_path) == "folders"
    t = read_source(tmp_path).table
    assert t["label"].sum() == 6 and len(t) == 20


def test_folders_need_both_classes(tmp_path, rows):
    _jpegs(rows, tmp_path / "benign")
    with pytest.raises(BadInputError, match="benign/ and malignant/"):
        read_source(tmp_path, "folders")


def test_unknown_layout_and_missing_source(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(BadInputError, match="cannot tell the layout"):
        read_source(tmp_path / "x.csv")
    with pytest.raises(BadInputError, match="no such file"):
        read_source(tmp_path / "nothing")
    with pytest.raises(BadInputError, match="--format must be one of"):
        read_source(tmp_path, "zip")
