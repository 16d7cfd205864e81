"""The tabular model's parts on small hand-made tables: feature engineering against hand-computed
values, patient statistics per patient, the leak guard, late fusion and grouped intervals, engines."""
import math

import numpy as np
import pandas as pd
import pytest

from lesionlab.errors import BadInputError, LeakError
from lesionlab.metrics import grouped_resamples, paired_bootstrap
from lesionlab.tabular import features as feat
from lesionlab.tabular.fusion import ecdf_rank, rank_average
from lesionlab.tabular.column_guard import select_columns, single_column_auc
from lesionlab.tabular.model import grouped_folds


def _isic_rows() -> pd.DataFrame:
    """Three lesions of patient A, two of patient B, one of patient C, with round numbers."""
    return pd.DataFrame({
        "id": ["a1", "a2", "a3", "b1", "b2", "c1"],
        "patient_id": ["A", "A", "A", "B", "B", "C"],
        "anatom_site_general": ["torso", "torso", "leg", "leg", None, "arm"],
        "sex": ["male", "male", "male", "female", "female", None],
        "age_approx": [50.0, 50.0, 50.0, 40.0, 40.0, 60.0],
        "clin_size_long_diam_mm": [4.0, 8.0, 2.0, 5.0, 10.0, 3.0],
        "tbp_lv_minorAxisMM": [2.0, 2.0, 1.0, 5.0, 4.0, 1.5],
        "tbp_lv_areaMM2": [12.0, 30.0, 3.0, 20.0, 0.0, 7.0],
        "tbp_lv_perimeterMM": [12.0, 20.0, 6.0, 16.0, 0.0, 10.0],
        "tbp_lv_H": [60.0, 55.0, 50.0, 62.0, 58.0, 61.0],
        "tbp_lv_Hext": [65.0, 60.0, 52.0, 60.0, 60.0, 61.0],
        "tbp_lv_deltaA": [3.0, 1.0, 0.0, 2.0, 2.0, 1.0],
        "tbp_lv_deltaB": [4.0, 2.0, 0.0, 3.0, 1.0, 2.0],
        "tbp_lv_deltaL": [12.0, 2.0, 1.0, 6.0, 2.0, 2.0],
        "tbp_lv_x": [3.0, 0.0, 1.0, 2.0, 2.0, 0.0], "tbp_lv_y": [4.0, 0.0, 2.0, 3.0, 1.0, 1.0],
        "tbp_lv_z": [12.0, 5.0, 2.0, 6.0, 2.0, 0.0],
        **{f"tbp_lv_pad{i}": [0.0] * 6 for i in range(6)},  # enough tbp_lv_* columns to look like ISIC 2024
    })


def test_recipe_features_match_hand_computed_values():
    d = _isic_rows()
    numeric = d.drop(columns=["id", "patient_id", "anatom_site_general", "sex"])
    r = feat.recipe_features(numeric)
    assert r["lesion_size_ratio"].tolist() == pytest.approx([0.5, 0.25, 0.5, 1.0, 0.4, 0.5])
    assert r["lesion_shape_index"].iloc[:4].tolist() == pytest.approx([12 / 144, 30 / 400, 3 / 36, 20 / 256])
    assert math.isnan(r["lesion_shape_index"].iloc[4])  # 0 / 0: missing, not inf
    assert r["hue_contrast"].tolist() == pytest.approx([5, 5, 2, 2, 2, 0])
    assert r["lesion_color_difference"].iloc[0] == pytest.approx(13.0)  # sqrt(9 + 16 + 144)
    assert r["position_distance_3d"].iloc[0] == pytest.approx(13.0)     # sqrt(9 + 16 + 144)
    assert r["perimeter_to_area_ratio"].iloc[0] == pytest.approx(1.0)
    assert r["size_age_interaction"].tolist() == pytest.approx([200, 400, 100, 200, 400, 180])
    assert r["normalized_lesion_size"].iloc[1] == pytest.approx(8 / 50)
    assert r["border_length_ratio"].iloc[2] == pytest.approx(6 / (2 * math.pi * math.sqrt(3 / math.pi)))
    assert r["lesion_orientation_3d"].iloc[0] == pytest.approx(math.atan2(4, 3))
    # a formula whose inputs are absent is left out, not filled
    assert "color_uniformity" not in r.columns and "luminance_contrast" not in r.columns


def test_patient_z_scores_are_computed_per_patient():
    d = _isic_rows()
    numeric = d[["clin_size_long_diam_mm"]]
    ctx = feat.patient_context(numeric, feat.patient_keys(d), d["anatom_site_general"])
    z = ctx["clin_size_long_diam_mm_patient_z"].to_numpy()
    # patient A: 4, 8, 2 -> mean 14/3, sample sd sqrt(28/3); B: 5, 10 -> mean 7.5, sd sqrt(12.5); C alone -> NaN
    sd_a, sd_b = math.sqrt(28 / 3), math.sqrt(12.5)
    assert z[:3] == pytest.approx([(4 - 14 / 3) / (sd_a + 1e-5), (8 - 14 / 3) / (sd_a + 1e-5), (2 - 14 / 3) / (sd_a + 1e-5)])
    assert z[3:5] == pytest.approx([(5 - 7.5) / (sd_b + 1e-5), (10 - 7.5) / (sd_b + 1e-5)])
    assert math.isnan(z[5])
    assert ctx["count_per_patient"].tolist() == [3, 3, 3, 2, 2, 1]
    assert ctx["count_per_patient_site"].tolist() == [2, 2, 1, 1, 1, 1]  # a missing site is its own site
    # the same lesion among other lesions of its patient gets another z-score: statistics are per patient
    # over the rows given together
    alone = feat.patient_context(numeric.iloc[:2], feat.patient_keys(d.iloc[:2]))
    assert alone["clin_size_long_diam_mm_patient_z"].iloc[0] == pytest.approx(-2 / (math.sqrt(8) + 1e-5))


def test_image_score_features_rank_and_ratio_within_the_patient():
    d = _isic_rows()
    ctx = feat.image_context(np.array([0.2, 0.6, 0.4, 0.1, 0.1, 0.9]), feat.patient_keys(d), d.index)
    assert ctx["image_rank_in_patient"].tolist() == pytest.approx([1 / 3, 1, 2 / 3, 0.75, 0.75, 1])
    assert ctx["image_ratio_to_patient_mean"].tolist() == pytest.approx([0.5, 1.5, 1.0, 1.0, 1.0, 1.0])
    assert list(feat.image_context(np.array([0.3]), None, [0]).columns) == ["image_prob"]


def test_feature_spec_rebuilds_the_same_columns_and_names_missing_ones(caplog):
    d = _isic_rows()
    inputs = [c for c in d.columns if c not in ("id", "patient_id")]
    kinds = feat.column_kinds(d, inputs)
    assert kinds["sex"] == "categorical" and kinds["tbp_lv_H"] == "numeric"
    spec = feat.make_spec(d, inputs, kinds, image=False)
    assert spec.context and spec.site == "anatom_site_general" and "lesion_size_ratio" in spec.recipe
    X = feat.build_features(d, spec)
    assert list(X.columns) == spec.columns
    assert "tbp_lv_H_patient_z" in X.columns and "lesion_size_ratio_patient_z" in X.columns
    assert isinstance(X["sex"].dtype, pd.CategoricalDtype) and list(X["sex"].cat.categories) == ["female", "male"]
    # text values as a manifest or CSV gives them, and a category never seen in training
    text = d.astype(object).astype(str).replace({"None": ""}).assign(sex=["male", "other", "", "female", "male", "male"])
    X2 = feat.build_features(text, spec)
    assert X2["tbp_lv_H"].tolist() == pytest.approx(d["tbp_lv_H"].tolist())
    assert X2["sex"].isna().tolist() == [False, True, True, False, False, False]
    with pytest.raises(BadInputError, match=r"new.csv: missing column\(s\) sex, tbp_lv_H that"):
        feat.build_features(d.drop(columns=["tbp_lv_H", "sex"]), spec, where="new.csv")
    # a word in a numeric column is read as missing, as at training, and said with the count
    X3 = feat.build_features(text.assign(age_approx=["fifty"] + ["50"] * 5), spec, where="new.csv")
    assert np.isnan(X3["age_approx"].iloc[0]) and X3["age_approx"].iloc[1:].tolist() == [50.0] * 5
    assert "new.csv: age_approx: 1 value(s) not a number ('fifty'), read as missing" in caplog.text


def _ham_like(n: int = 60, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 4 == 0).astype(int)
    dx = np.where(y == 1, rng.choice(["mel", "bcc"], n), rng.choice(["nv", "bkl"], n))
    t = pd.DataFrame({
        "id": [f"ISIC_{i}" for i in range(n)], "patient_id": "", "lesion_id": [f"HAM_{i // 2}" for i in range(n)],
        "source_id": [f"ISIC_{i}" for i in range(n)], "original_split": "", "dx": dx,
        "isic2019_dx": pd.Series(dx).str.upper(), "label_ham_mel_bcc_akiec": y, "melanoma": (dx == "mel").astype(int),
        "dx_type": np.where(y == 1, "histo", rng.choice(["histo", "follow_up"], n)),
        "age": rng.choice([30.0, 45.0, 60.0], n), "sex": rng.choice(["male", "female"], n),
        "localization": rng.choice(["back", "face", "trunk"], n), "md5": [f"{i:032x}" for i in range(n)],
        "status": np.where(y == 1, "m", "b"), "clinic": "one",
    }).astype(str).replace({"": ""})
    return t, y


def test_auto_keeps_metadata_and_drops_ids_groups_and_label_columns():
    t, y = _ham_like()
    kinds = feat.column_kinds(t, t.columns)
    sel = select_columns(t, y, kinds, None)
    assert sel.columns == ["age", "sex", "localization"]
    for col, why in {"dx": "label-derived", "dx_type": "label-derived", "isic2019_dx": "label-derived",
                     "melanoma": "label-derived", "label_ham_mel_bcc_akiec": "label-derived", "md5": "checksum",
                     "id": "image id", "lesion_id": "group key", "patient_id": "group key", "original_split": "empty",
                     "status": "equal to the label", "clinic": "constant"}.items():
        assert why in sel.dropped[col], (col, sel.dropped[col])
    assert set(sel.single_auc) == {"age", "sex", "localization"}


@pytest.mark.parametrize("column", ["dx", "dx_type", "melanoma", "iddx_1", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence",
                                    "status"])
def test_a_label_derived_column_asked_for_by_name_is_refused(column):
    t, y = _ham_like()
    t = t.assign(iddx_1="Benign", mel_thick_mm="", tbp_lv_dnn_lesion_confidence="50")
    with pytest.raises(LeakError, match=f"--features {column}: refused"):
        select_columns(t, y, feat.column_kinds(t, t.columns), ["age", column])


def test_a_near_perfect_column_stops_the_run_unless_allowed():
    t, y = _ham_like()
    t["score"] = (y * 10 + np.linspace(0, 1, len(y))).astype(str)  # ranks the labels perfectly, not equal to them
    kinds = feat.column_kinds(t, t.columns)
    assert single_column_auc(t["score"], y, "numeric") == 1.0
    with pytest.raises(LeakError, match=r"score \(AUC 1.000\).*--allow-column score"):
        select_columns(t, y, kinds, None)
    sel = select_columns(t, y, kinds, None, allow=["score"])
    assert "score" in sel.columns and sel.allowed == ["score"]
    # a column recorded for one class only shows up through its missing values
    t["thickness"] = np.where(y == 1, "1.5", "")
    assert single_column_auc(t["thickness"], y, "numeric") == 1.0


def test_no_usable_metadata_column_says_which_were_dropped_and_why():
    t, y = _ham_like()
    bare = t[["id", "lesion_id", "dx", "md5", "original_split"]]
    with pytest.raises(BadInputError, match="no usable metadata column: id: an image id; lesion_id: a group key.*"
                                            "dx: label-derived.*md5: a file checksum.*original_split: empty"):
        select_columns(bare, y, feat.column_kinds(bare, bare.columns), None)
    with pytest.raises(BadInputError, match="--features lesion_id: a group key"):
        select_columns(t, y, feat.column_kinds(t, t.columns), ["lesion_id"])
    with pytest.raises(BadInputError, match="no column agee.*did you mean 'age'"):
        select_columns(t, y, feat.column_kinds(t, t.columns), ["agee"])


def test_late_fusion_ranks_against_the_reference_scores():
    ref = np.array([0.1, 0.2, 0.2, 0.4])
    assert ecdf_rank(ref, np.array([0.0, 0.1, 0.2, 0.3, 0.5])).tolist() == pytest.approx([0, 0.125, 0.5, 0.75, 1])
    fused = rank_average(np.array([0.4]), np.array([0.1]), ref, ref)
    assert fused.tolist() == pytest.approx([(0.875 + 0.125) / 2])


def test_grouped_resamples_keep_groups_whole_and_both_classes():
    groups = np.array(["a", "a", "b", "c", "c", "c", "d"])
    y = np.array([1, 1, 0, 0, 0, 0, 1])
    for idx in grouped_resamples(y, groups, 50, seed=3):
        drawn = pd.Series(groups[idx]).value_counts()
        sizes = pd.Series(groups).value_counts()
        assert all(drawn[g] % sizes[g] == 0 for g in drawn.index)  # a group comes whole, or several times whole
        assert 0 < y[idx].sum() < len(idx)
    same = np.array([.9, .8, .1, .2, .3, .2, .7])
    res = paired_bootstrap(y, same, same, 0.5, 0.5, ("roc_auc",), n_boot=20, groups=groups)
    assert res["roc_auc"]["diff"] == 0 and res["roc_auc"]["lo"] == 0 == res["roc_auc"]["hi"]


def test_grouped_folds_keep_each_group_in_one_fold():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 3).astype(str)
    y = np.repeat(rng.random(40) < 0.3, 3).astype(int)
    folds = grouped_folds(y, groups, 4, seed=0)
    assert pd.Series(folds).groupby(groups).nunique().max() == 1
    assert all(y[folds == f].sum() > 0 for f in range(4))
    from lesionlab.errors import NotEnoughDataError

    with pytest.raises(NotEnoughDataError, match="--folds 50"):
        grouped_folds(y, groups, 50, seed=0)


def _engine_data(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    X = pd.DataFrame({"x": y * 1.5 + rng.normal(size=n),
                      "c": pd.Categorical(np.where(y == 1, rng.choice(["a", "b"], n), rng.choice(["b", "c"], n)),
                                          categories=["a", "b", "c"])})
    X.loc[::7, "x"] = np.nan
    return X, y


@pytest.mark.parametrize("name", ["lightgbm", "xgboost", "catboost"])
def test_every_engine_fits_with_native_categoricals_and_reloads_identically(name, tmp_path):
    pytest.importorskip(name, reason=f"{name} is not installed (an optional extra)")
    from lesionlab.tabular.engines import Params, get_engine

    engine = get_engine(name)
    X, y = _engine_data()
    params = Params(max_rounds=60, early_stopping=10, min_child_samples=5)
    model = engine.fit(X.iloc[:200], y[:200], X.iloc[200:], y[200:], params, seed=0)
    p = engine.predict(model, X.iloc[200:])
    assert p.shape == (100,) and ((p >= 0) & (p <= 1)).all()
    from lesionlab.metrics import roc_auc

    assert roc_auc(y[200:], p) > 0.7
    engine.save(model, tmp_path / f"m{engine.suffix}")
    again = engine.load(tmp_path / f"m{engine.suffix}")
    assert np.abs(engine.predict(again, X.iloc[200:]) - p).max() < 1e-6
    assert engine.importance(model, list(X.columns)).shape == (2,)


def test_a_missing_optional_engine_is_named(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **kw):
        if name == "catboost":
            raise ImportError("no catboost")
        return real(name, *a, **kw)

    monkeypatch.setattr("importlib.import_module", fake)
    from lesionlab.tabular.engines import get_engine

    with pytest.raises(BadInputError, match="'catboost' is not installed.*pip install catboost"):
        get_engine("catboost")


def test_metadata_is_read_back_through_the_formula_safe_csv(tmp_path):
    """rows.csv is written formula-safe: an id such as '=x' and a negative number held as text
    ('-1.5) read back as the user gave them, so ids match the store's and numbers stay numbers."""
    from types import SimpleNamespace

    from lesionlab.fileio import write_csv
    from lesionlab.tabular.command import read_metadata

    rows = pd.DataFrame({"id": ["=x", "b"], "label": ["1", "0"], "locator": ["a.jpg", "b.jpg"], "index": ["0", "1"],
                         "tbp_lv_x": ["-1.5", "2"], "sex": ["-", "male"]})
    write_csv(tmp_path / "rows.csv", rows)
    assert "'=x" in (tmp_path / "rows.csv").read_text() and "'-1.5" in (tmp_path / "rows.csv").read_text()
    table = read_metadata(SimpleNamespace(root=tmp_path, table=pd.DataFrame({"id": ["=x", "b"]})))
    assert table["id"].tolist() == ["=x", "b"] and table["sex"].tolist() == ["-", "male"]
    assert table["tbp_lv_x"].tolist() == [-1.5, 2.0]
