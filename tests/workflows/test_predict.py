"""`lesionlab predict`: every layout it reads, any image size, bad images, and outputs it will not overwrite."""
import json
import shutil

import numpy as np
import pandas as pd

from conftest import cli
from isic2024_fixture import write_isic2024


def test_predict_folder_file_and_manifest(pipeline, tmp_path):
    run, raw = pipeline["run"], pipeline["manifest"].parent
    threshold = json.loads((run / "metrics.json").read_text())["test"]["threshold"]
    cli("predict", run, raw / "images", "--out", tmp_path / "folder.csv")
    df = pd.read_csv(tmp_path / "folder.csv")
    assert list(df.columns) == ["id", "prob", "decision"] and len(df) == 260
    assert ((df["prob"] >= threshold).astype(int) == df["decision"]).all()
    # the same images through the manifest give the same probabilities, with labels
    cli("predict", run, pipeline["manifest"], "--out", tmp_path / "manifest.csv")
    dm = pd.read_csv(tmp_path / "manifest.csv")
    assert "label" in dm.columns
    merged = df.merge(dm, on="id")
    assert np.allclose(merged["prob_x"], merged["prob_y"])
    # ... and as in the run's own predictions (same preprocessing as training)
    own = pd.read_csv(run / "predictions.csv").merge(dm, on="id")
    assert np.allclose(own["prob_x"], own["prob_y"], atol=1e-5)
    one = sorted((raw / "images").iterdir())[0]
    cli("predict", run, one, "--out", tmp_path / "one.csv")
    assert pd.read_csv(tmp_path / "one.csv")["id"].tolist() == [one.stem]


def test_predict_any_size_and_isic2024_pair(pipeline, tmp_path):
    write_isic2024(tmp_path / "isic", n=30, prefix="test", labels=False, size_range=(90, 250))
    cli("predict", pipeline["run"], tmp_path / "isic" / "test-metadata.csv", "--out", tmp_path / "p.csv", "--workers", "2")
    df = pd.read_csv(tmp_path / "p.csv")
    meta = pd.read_csv(tmp_path / "isic" / "test-metadata.csv")
    assert df["id"].tolist() == meta["isic_id"].tolist() and df["prob"].between(0, 1).all()


def test_predict_bad_images_and_existing_output(pipeline, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(pipeline["manifest"].parent / "images", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "p.csv", ok=False)
    assert r.exit_code == 2 and "broken" in r.output and not (tmp_path / "p.csv").exists()
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "p.csv", "--skip-bad")
    assert "1 unreadable skipped" in r.output and len(pd.read_csv(tmp_path / "p.csv")) == 260
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "p.csv", "--skip-bad", ok=False)
    assert "exists" in r.output


def test_predict_refuses_decompression_bombs_by_name(pipeline, tmp_path):
    from hostile_files import png_claiming

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((pipeline["manifest"].parent / "images").iterdir())[:3]:
        shutil.copyfile(p, folder / p.name)
    (folder / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "p.csv", ok=False)
    assert r.exit_code == 2 and "bomb (100000x100000 = 10,000,000,000 pixels is over the limit" in r.output, r.output
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "p.csv", "--skip-bad")
    assert "3 image(s) scored" in r.output and "1 unreadable skipped" in r.output
    r = cli("predict", pipeline["run"], folder, "--out", tmp_path / "q.csv", "--max-pixels", "29999", ok=False)
    assert "200x150 = 30,000 pixels is over the limit of 29,999" in r.output
