"""The tabular model's parts on small hand-made tables: feature engineering against hand-computed
values, patient statistics per patient, the leak guard, late fusion and grouped intervals, engines."""
import math

import numpy as np
import pandas as pd
import pytest

from lesionlab.errors import BadInputError
from lesionlab.tabular import features as feat


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


def test_a_stray_word_in_a_numeric_metadata_column_is_counted_not_a_category():
    from lesionlab.tabular.features import build_features, column_kinds, make_spec, not_numbers

    ages = [str(20 + i) for i in range(27)] + ["abc", "", "55.5"]
    table = pd.DataFrame({"id": [str(i) for i in range(30)], "age": ages, "site": ["arm", "leg", "back"] * 10})
    kinds = column_kinds(table, ["age", "site"])
    assert kinds == {"age": "numeric", "site": "categorical"}
    assert not_numbers(table, kinds) == {"age": {"count": 1, "examples": ["abc"]}}
    spec = make_spec(table, ["age", "site"], kinds, image=False, recipe=False, context=False)
    X = build_features(table, spec)
    assert X["age"].isna().sum() == 2 and X["age"].iloc[29] == 55.5  # the word and the empty cell are missing
    # a column where words are more than a tenth stays text
    assert column_kinds(table.assign(age=["a", "b", "c", "10"] * 7 + ["1", "2"]), ["age"]) == {"age": "categorical"}
