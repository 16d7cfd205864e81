"""Which metadata columns may be features (tabular/column_guard.py): ids, groups and label-derived columns
refused by name and by content."""
import numpy as np
import pandas as pd
import pytest

from lesionlab.errors import BadInputError, LeakError
from lesionlab.tabular import features as feat
from lesionlab.tabular.column_guard import select_columns, single_column_auc


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
