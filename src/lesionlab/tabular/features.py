"""Features from the metadata columns: their kinds, the ISIC 2024 recipe, patient context and
image-score features, computed the same way at training and at predict time.

Patient statistics are computed over the rows given together (the train pool, the validation
set, the test set, or predict's INPUT), so that a lesion is judged against the same patient's
other lesions in the same set: the "ugly duckling" idea of the ISIC 2024 solutions.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..data.sources import ISIC2024_COLUMNS, ISIC2024_TEXT_COLUMNS
from ..errors import BadInputError, shown

log = logging.getLogger(__name__)

EPS = 1e-5  # added to the patient's standard deviation, as in the public recipe
# A column is numeric when at least this share of its non-empty values are numbers: a few words in a
# column of numbers are typos or placeholders ('abc', 'unknown'), read as missing and counted; a
# column where more than a tenth are words is text.
NUMERIC_SHARE = 0.9
SITE_COLUMNS = ("anatom_site_general", "localization", "anatom_site_general_challenge")

# ---------------------------------------------------------------- the ISIC 2024 recipe
# Colour, shape and contrast ratios of the tbp_lv_* columns from the public Kaggle notebooks of the
# ISIC 2024 challenge: "LGBM baseline with new features" (snnclsr,
# https://www.kaggle.com/code/snnclsr/lgbm-baseline-with-new-features) and "ISIC 2024 - Only Tabular
# Data" (greysky, https://www.kaggle.com/code/greysky/isic-2024-only-tabular-data), which many top
# solutions started from; the latter adds the per-patient z-scores ("_patient_norm":
# (x - patient mean) / (patient std + 1e-5), pandas' sample std) and the count per patient.
# Each entry: name, the columns it needs, the formula. A ratio with a zero denominator is missing.


def _sq(*cols):
    return lambda d: np.sqrt(sum(d[c] ** 2 for c in cols))


RECIPE: tuple[tuple[str, tuple[str, ...], Callable[[pd.DataFrame], Any]], ...] = (
    ("lesion_size_ratio", ("tbp_lv_minorAxisMM", "clin_size_long_diam_mm"),
     lambda d: d.tbp_lv_minorAxisMM / d.clin_size_long_diam_mm),
    ("lesion_shape_index", ("tbp_lv_areaMM2", "tbp_lv_perimeterMM"),
     lambda d: d.tbp_lv_areaMM2 / d.tbp_lv_perimeterMM ** 2),
    ("hue_contrast", ("tbp_lv_H", "tbp_lv_Hext"), lambda d: (d.tbp_lv_H - d.tbp_lv_Hext).abs()),
    ("luminance_contrast", ("tbp_lv_L", "tbp_lv_Lext"), lambda d: (d.tbp_lv_L - d.tbp_lv_Lext).abs()),
    ("lesion_color_difference", ("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL"),
     _sq("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL")),
    ("border_complexity", ("tbp_lv_norm_border", "tbp_lv_symm_2axis"),
     lambda d: d.tbp_lv_norm_border + d.tbp_lv_symm_2axis),
    ("color_uniformity", ("tbp_lv_color_std_mean", "tbp_lv_radial_color_std_max"),
     lambda d: d.tbp_lv_color_std_mean / d.tbp_lv_radial_color_std_max),
    ("position_distance_3d", ("tbp_lv_x", "tbp_lv_y", "tbp_lv_z"), _sq("tbp_lv_x", "tbp_lv_y", "tbp_lv_z")),
    ("perimeter_to_area_ratio", ("tbp_lv_perimeterMM", "tbp_lv_areaMM2"),
     lambda d: d.tbp_lv_perimeterMM / d.tbp_lv_areaMM2),
    ("area_to_perimeter_ratio", ("tbp_lv_areaMM2", "tbp_lv_perimeterMM"),
     lambda d: d.tbp_lv_areaMM2 / d.tbp_lv_perimeterMM),
    ("lesion_visibility_score", ("tbp_lv_deltaLBnorm", "tbp_lv_norm_color"),
     lambda d: d.tbp_lv_deltaLBnorm + d.tbp_lv_norm_color),
    ("symmetry_border_consistency", ("tbp_lv_symm_2axis", "tbp_lv_norm_border"),
     lambda d: d.tbp_lv_symm_2axis * d.tbp_lv_norm_border),
    ("consistency_symmetry_border", ("tbp_lv_symm_2axis", "tbp_lv_norm_border"),
     lambda d: d.tbp_lv_symm_2axis * d.tbp_lv_norm_border / (d.tbp_lv_symm_2axis + d.tbp_lv_norm_border)),
    ("color_consistency", ("tbp_lv_stdL", "tbp_lv_Lext"), lambda d: d.tbp_lv_stdL / d.tbp_lv_Lext),
    ("consistency_color", ("tbp_lv_stdL", "tbp_lv_Lext"),
     lambda d: d.tbp_lv_stdL * d.tbp_lv_Lext / (d.tbp_lv_stdL + d.tbp_lv_Lext)),
    ("size_age_interaction", ("clin_size_long_diam_mm", "age_approx"),
     lambda d: d.clin_size_long_diam_mm * d.age_approx),
    ("hue_color_std_interaction", ("tbp_lv_H", "tbp_lv_color_std_mean"),
     lambda d: d.tbp_lv_H * d.tbp_lv_color_std_mean),
    ("lesion_severity_index", ("tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_eccentricity"),
     lambda d: (d.tbp_lv_norm_border + d.tbp_lv_norm_color + d.tbp_lv_eccentricity) / 3),
    ("shape_complexity_index", ("tbp_lv_norm_border", "tbp_lv_symm_2axis", "tbp_lv_areaMM2", "tbp_lv_perimeterMM"),
     lambda d: d.tbp_lv_norm_border + d.tbp_lv_symm_2axis + d.tbp_lv_areaMM2 / d.tbp_lv_perimeterMM ** 2),
    ("color_contrast_index", ("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLBnorm"),
     lambda d: d.tbp_lv_deltaA + d.tbp_lv_deltaB + d.tbp_lv_deltaL + d.tbp_lv_deltaLBnorm),
    ("log_lesion_area", ("tbp_lv_areaMM2",), lambda d: np.log(d.tbp_lv_areaMM2 + 1)),
    ("normalized_lesion_size", ("clin_size_long_diam_mm", "age_approx"),
     lambda d: d.clin_size_long_diam_mm / d.age_approx),
    ("mean_hue_difference", ("tbp_lv_H", "tbp_lv_Hext"), lambda d: (d.tbp_lv_H + d.tbp_lv_Hext) / 2),
    ("std_dev_contrast", ("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL"),
     lambda d: np.sqrt((d.tbp_lv_deltaA ** 2 + d.tbp_lv_deltaB ** 2 + d.tbp_lv_deltaL ** 2) / 3)),
    ("color_shape_composite_index", ("tbp_lv_color_std_mean", "tbp_lv_area_perim_ratio", "tbp_lv_symm_2axis"),
     lambda d: (d.tbp_lv_color_std_mean + d.tbp_lv_area_perim_ratio + d.tbp_lv_symm_2axis) / 3),
    ("lesion_orientation_3d", ("tbp_lv_y", "tbp_lv_x"), lambda d: np.arctan2(d.tbp_lv_y, d.tbp_lv_x)),
    ("overall_color_difference", ("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL"),
     lambda d: (d.tbp_lv_deltaA + d.tbp_lv_deltaB + d.tbp_lv_deltaL) / 3),
    ("symmetry_perimeter_interaction", ("tbp_lv_symm_2axis", "tbp_lv_perimeterMM"),
     lambda d: d.tbp_lv_symm_2axis * d.tbp_lv_perimeterMM),
    ("comprehensive_lesion_index",
     ("tbp_lv_area_perim_ratio", "tbp_lv_eccentricity", "tbp_lv_norm_color", "tbp_lv_symm_2axis"),
     lambda d: (d.tbp_lv_area_perim_ratio + d.tbp_lv_eccentricity + d.tbp_lv_norm_color + d.tbp_lv_symm_2axis) / 4),
    ("color_variance_ratio", ("tbp_lv_color_std_mean", "tbp_lv_stdLExt"),
     lambda d: d.tbp_lv_color_std_mean / d.tbp_lv_stdLExt),
    ("border_color_interaction", ("tbp_lv_norm_border", "tbp_lv_norm_color"),
     lambda d: d.tbp_lv_norm_border * d.tbp_lv_norm_color),
    ("size_color_contrast_ratio", ("clin_size_long_diam_mm", "tbp_lv_deltaLBnorm"),
     lambda d: d.clin_size_long_diam_mm / d.tbp_lv_deltaLBnorm),
    ("age_normalized_nevi_confidence", ("tbp_lv_nevi_confidence", "age_approx"),
     lambda d: d.tbp_lv_nevi_confidence / d.age_approx),
    ("color_asymmetry_index", ("tbp_lv_radial_color_std_max", "tbp_lv_symm_2axis"),
     lambda d: d.tbp_lv_radial_color_std_max * d.tbp_lv_symm_2axis),
    ("volume_approximation_3d", ("tbp_lv_areaMM2", "tbp_lv_x", "tbp_lv_y", "tbp_lv_z"),
     lambda d: d.tbp_lv_areaMM2 * np.sqrt(d.tbp_lv_x ** 2 + d.tbp_lv_y ** 2 + d.tbp_lv_z ** 2)),
    ("color_range", ("tbp_lv_L", "tbp_lv_Lext", "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B", "tbp_lv_Bext"),
     lambda d: (d.tbp_lv_L - d.tbp_lv_Lext).abs() + (d.tbp_lv_A - d.tbp_lv_Aext).abs()
     + (d.tbp_lv_B - d.tbp_lv_Bext).abs()),
    ("shape_color_consistency", ("tbp_lv_eccentricity", "tbp_lv_color_std_mean"),
     lambda d: d.tbp_lv_eccentricity * d.tbp_lv_color_std_mean),
    ("border_length_ratio", ("tbp_lv_perimeterMM", "tbp_lv_areaMM2"),
     lambda d: d.tbp_lv_perimeterMM / (2 * np.pi * np.sqrt(d.tbp_lv_areaMM2 / np.pi))),
    ("age_size_symmetry_index", ("age_approx", "clin_size_long_diam_mm", "tbp_lv_symm_2axis"),
     lambda d: d.age_approx * d.clin_size_long_diam_mm * d.tbp_lv_symm_2axis),
)
RECIPE_NAMES = tuple(name for name, _, _ in RECIPE)


def is_isic2024(columns) -> bool:
    """The ISIC 2024 recipe applies when the table has the tbp_lv_* columns."""
    return sum(1 for c in columns if str(c).startswith("tbp_lv_")) >= 10


def recipe_features(numeric: pd.DataFrame) -> pd.DataFrame:
    """The recipe's features whose input columns are all present in `numeric` (float columns)."""
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, needs, formula in RECIPE:
            if all(c in numeric.columns for c in needs):
                out[name] = pd.Series(formula(numeric[list(needs)]), index=numeric.index, dtype=np.float64)
    frame = pd.DataFrame(out, index=numeric.index)
    return frame.replace([np.inf, -np.inf], np.nan)


# ---------------------------------------------------------------- column kinds


def _parsed(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(the values as numbers, NaN where missing or not a number; mask of non-empty values that are not numbers)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(np.float64), pd.Series(False, index=values.index)
    text = values.astype("string").str.strip()
    present = text.notna() & (text != "")
    parsed = pd.to_numeric(text.where(present), errors="coerce").astype(np.float64)
    return parsed, (present & parsed.isna()).astype(bool)


def column_kinds(table: pd.DataFrame, columns) -> dict[str, str]:
    """'numeric' or 'categorical' per column. ISIC 2024 columns have their documented types;
    other columns are numeric when at least NUMERIC_SHARE of their non-empty values are numbers
    (the rest are read as missing: not_numbers counts them)."""
    kinds = {}
    for c in columns:
        if c in ISIC2024_COLUMNS:
            kinds[c] = "categorical" if c in ISIC2024_TEXT_COLUMNS else "numeric"
            continue
        parsed, words = _parsed(table[c])
        numbers = int(parsed.notna().sum())
        kinds[c] = "numeric" if numbers and numbers >= NUMERIC_SHARE * (numbers + int(words.sum())) else "categorical"
    return kinds


def not_numbers(table: pd.DataFrame, kinds: dict[str, str], examples: int = 3) -> dict[str, dict]:
    """{column: {count, examples}} of the non-empty values of numeric columns that are not numbers
    (read as missing), for the run to say and record."""
    out = {}
    for c, kind in kinds.items():
        if kind != "numeric" or c not in table.columns:
            continue
        _, words = _parsed(table[c])
        if words.any():
            bad = table[c][words].astype(str).str.strip()
            out[c] = {"count": int(words.sum()), "examples": list(dict.fromkeys(bad))[:examples]}
    return out


def describe_not_numbers(found: dict[str, dict]) -> str:
    """'age: 1 value(s) not a number ('abc'), read as missing; ...'."""
    return "; ".join(f"{c}: {d['count']} value(s) not a number ({', '.join(shown(e, 30) for e in d['examples'])}), "
                     "read as missing" for c, d in found.items())


def categories_of(values: pd.Series) -> list[str]:
    text = values.astype("string").str.strip()
    return sorted(text[text.notna() & (text != "")].unique().tolist())


def _numeric(values: pd.Series) -> pd.Series:
    """A numeric column's values as floats; values that are not numbers are missing (not_numbers counts them)."""
    return _parsed(values)[0]


def _categorical(values: pd.Series, categories: list[str]) -> pd.Series:
    text = values.astype("string").str.strip()
    # empty, and a category never seen in training, become missing, which every engine handles
    text = text.where(text.isin(categories))
    return pd.Series(pd.Categorical(text.astype(object), categories=categories), index=values.index)


# ---------------------------------------------------------------- the spec a run keeps


@dataclass
class FeatureSpec:
    """What a run's model takes, recorded in the run folder so that predict rebuilds it exactly."""

    inputs: list[str]                    # metadata columns read from the table
    kinds: dict[str, str]                # input column -> numeric | categorical
    categories: dict[str, list[str]]     # categorical input -> its training categories
    recipe: list[str] = field(default_factory=list)   # ISIC 2024 recipe features computed
    context: bool = False                # patient statistics (needs patient_id)
    site: str | None = None              # column for the per-patient-and-site count
    image: bool = False                  # image-score features (a fused run)
    columns: list[str] = field(default_factory=list)  # the model's input columns, in order

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(**d)

    @property
    def numeric_inputs(self) -> list[str]:
        return [c for c in self.inputs if self.kinds[c] == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [c for c in self.columns if c in self.kinds and self.kinds[c] == "categorical"]

    def required_columns(self) -> list[str]:
        return list(self.inputs) + (["patient_id"] if self.context else [])


def make_spec(train: pd.DataFrame, inputs: list[str], kinds: dict[str, str], image: bool,
              recipe: bool = True, context: bool = True) -> FeatureSpec:
    """Decide the features from the train pool's table (categories are the train pool's)."""
    kinds = {c: kinds[c] for c in inputs}
    categories = {c: categories_of(train[c]) for c in inputs if kinds[c] == "categorical"}
    numeric_cols = [c for c in inputs if kinds[c] == "numeric"]
    recipe_names = []
    if recipe and is_isic2024(inputs):
        recipe_names = [n for n, needs, _ in RECIPE if all(c in numeric_cols for c in needs)]
    has_patient = "patient_id" in train.columns and (train["patient_id"].astype("string").fillna("") != "").any()
    context = bool(context and has_patient)
    site = next((c for c in SITE_COLUMNS if c in inputs), None) if context else None
    spec = FeatureSpec(list(inputs), kinds, categories, recipe_names, context, site, image)
    spec.columns = list(build_features(train.head(0), spec, np.zeros(0) if image else None).columns)
    return spec


def patient_keys(table: pd.DataFrame) -> np.ndarray:
    """patient_id, or the row's own id where it is empty (a patient of one image)."""
    pid = table["patient_id"].astype("string").fillna("").str.strip()
    ids = table["id"].astype("string") if "id" in table.columns else pd.Series(np.arange(len(table)), index=table.index).astype("string")
    return np.where(pid != "", "p:" + pid, "i:" + ids).astype(object)


def patient_context(numeric: pd.DataFrame, patients: np.ndarray, site: pd.Series | None = None) -> pd.DataFrame:
    """Per-patient z-scores of every numeric column ("ugly duckling" features), the number of
    the patient's images, and the number at the same site.

    z = (x - patient mean) / (patient std + 1e-5), the std being pandas' sample std (NaN for a
    patient with one image, which the engines treat as missing)."""
    keys = pd.Series(patients, index=numeric.index)
    grouped = numeric.groupby(keys.to_numpy(), sort=False)
    mean, std = grouped.transform("mean"), grouped.transform("std")
    z = (numeric - mean) / (std + EPS)
    z.columns = [f"{c}_patient_z" for c in numeric.columns]
    counts = {"count_per_patient": keys.groupby(keys.to_numpy(), sort=False).transform("size").astype(np.float64)}
    if site is not None:
        site_key = site.astype("string").fillna("<missing>").to_numpy()
        frame = pd.DataFrame({"p": keys.to_numpy(), "s": site_key}, index=numeric.index)
        counts["count_per_patient_site"] = frame.groupby(["p", "s"], sort=False)["p"].transform("size").astype(np.float64)
    return pd.concat([z, pd.DataFrame(counts, index=numeric.index)], axis=1)


def image_context(prob: np.ndarray, patients: np.ndarray | None, index) -> pd.DataFrame:
    """The image model's score, and (with patients) its rank within the patient (0..1, ties
    averaged) and its ratio to the patient's mean score."""
    p = pd.Series(np.asarray(prob, dtype=np.float64), index=index)
    out = {"image_prob": p}
    if patients is not None:
        key = np.asarray(patients)
        grouped = p.groupby(key, sort=False)
        out["image_rank_in_patient"] = grouped.rank(pct=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["image_ratio_to_patient_mean"] = p / grouped.transform("mean")
    return pd.DataFrame(out, index=index).replace([np.inf, -np.inf], np.nan)


def build_features(table: pd.DataFrame, spec: FeatureSpec, image_prob: np.ndarray | None = None,
                   where: str = "data", say_not_numbers: bool = True) -> pd.DataFrame:
    """The model's input frame for the rows of `table`, all of which are scored together (patient
    statistics are computed over them). Values of numeric columns that are not numbers are read as
    missing, and said (a warning) unless the caller says them itself."""
    missing = [c for c in spec.required_columns() if c not in table.columns]
    if missing:
        raise BadInputError(f"{where}: missing column(s) {', '.join(missing)} that the run's features need "
                            f"(it was trained on {', '.join(spec.inputs)})")
    if spec.image and image_prob is None:
        raise BadInputError(f"{where}: this run is fused with an image model; image scores are needed")
    index = table.index
    if say_not_numbers:
        found = not_numbers(table, {c: spec.kinds[c] for c in spec.numeric_inputs})
        if found:
            log.warning("%s: %s", where, describe_not_numbers(found))
    numeric = pd.DataFrame({c: _numeric(table[c]) for c in spec.numeric_inputs}, index=index)
    parts = [numeric]
    cats = pd.DataFrame({c: _categorical(table[c], spec.categories[c]) for c in spec.inputs
                         if spec.kinds[c] == "categorical"}, index=index)
    if spec.recipe:
        parts.append(recipe_features(numeric)[spec.recipe])
    patients = None
    if spec.context:
        pid = table["patient_id"].astype("string").fillna("").str.strip()
        if len(table) and (pid == "").all():
            raise BadInputError(f"{where}: patient_id is empty on every row; the run's patient features need it")
        patients = patient_keys(table)
        engineered = pd.concat(parts, axis=1)
        parts.append(patient_context(engineered, patients, table[spec.site] if spec.site else None))
    if spec.image:
        assert image_prob is not None  # refused above when missing
        parts.append(image_context(image_prob, patients, index))
    frame = pd.concat(parts + [cats], axis=1)
    if spec.columns:
        frame = frame[spec.columns]
    return frame
