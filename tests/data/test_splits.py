import json

import numpy as np
import pandas as pd
import pytest

from lesionlab.data.sampling import draw_training_set, parse_ratio
from lesionlab.data.splits import check_split, group_keys, load_split, make_split, save_split, split_path
from lesionlab.data.store import Store
from lesionlab.errors import BadInputError, ExistsError, LeakError, NotEnoughDataError


class FakeStore:
    """The table side of a Store, for split logic on large synthetic tables."""

    def __init__(self, table):
        self.table = table
        self.content_hash = "x"


def _table(n_groups=300, seed=0, column="patient_id"):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        size = int(rng.integers(1, 8))
        label_rate = 0.15
        for k in range(size):
            rows.append({"id": f"img{len(rows)}", "label": int(rng.random() < label_rate), column: f"G{g}"})
    t = pd.DataFrame(rows)
    for c in ("patient_id", "lesion_id"):
        if c not in t:
            t[c] = ""
    t["label"] = t["label"].astype(np.int8)
    return t


@pytest.mark.parametrize("column", ["patient_id", "lesion_id"])
def test_exact_counts_and_no_group_on_two_sides(column):
    t = _table(column=column)
    doc = make_split(FakeStore(t), (20, 150), (20, 150), seed=3)
    c = doc["counts"]
    assert c["val"] == {"malignant": 20, "benign": 150} and c["test"] == {"malignant": 20, "benign": 150}
    assert doc["params"]["group_used"] == column
    side = {i: s for s in ("val", "test", "excluded") for i in doc["assign"][s]}
    t["side"] = [side.get(i, "train") for i in t["id"]]
    used = t[t["side"] != "excluded"]
    assert (used.groupby(column)["side"].nunique() == 1).all()
    assert sum(c[s]["malignant"] + c[s]["benign"] for s in c) == len(t)


def test_deterministic_and_seed_dependent():
    t = _table()
    a = make_split(FakeStore(t), (10, 80), (10, 80), seed=1)
    b = make_split(FakeStore(t), (10, 80), (10, 80), seed=1)
    c = make_split(FakeStore(t), (10, 80), (10, 80), seed=2)
    assert a["assign"] == b["assign"] and a["assign"] != c["assign"]


def test_group_auto_prefers_patient_then_lesion_then_image():
    t = _table(column="lesion_id")
    assert group_keys(t, "auto")[1] == "lesion_id"
    t["patient_id"] = "P" + t["id"].str[-1]
    assert group_keys(t, "auto")[1] == "patient_id"
    t["patient_id"], t["lesion_id"] = "", ""
    keys, used = group_keys(t, "auto")
    assert used == "none" and len(set(keys)) == len(t)


def test_empty_group_value_stands_alone():
    t = _table(column="lesion_id")
    t.loc[:10, "lesion_id"] = ""
    keys, _ = group_keys(t, "lesion_id")
    assert len(set(keys[:11])) == 11


def test_not_enough_data_says_how_many():
    t = _table(n_groups=50)
    m = int(t["label"].sum())
    with pytest.raises(NotEnoughDataError, match=f"the data set has {m} malignant"):
        make_split(FakeStore(t), (m, 10), (1, 10))


def test_hand_edited_leak_names_the_groups(small_data):
    store = Store.open(small_data)
    doc = json.loads(split_path(small_data).read_text())
    t = store.table.copy()
    side_of = {i: s for s, ids in doc["assign"].items() for i in ids}
    t["side"] = [side_of.get(i, "train") for i in t["id"]]
    multi = t[t["side"] != "excluded"].groupby("lesion_id").filter(lambda g: len(g) > 1)
    lesion = multi["lesion_id"].iloc[0]
    image, side = multi.loc[multi["lesion_id"] == lesion, ["id", "side"]].iloc[0]
    if side != "train":  # move it from its side to the other evaluation set
        doc["assign"][side].remove(image)
    doc["assign"]["val" if side != "val" else "test"].append(image)
    (small_data / "split-edited.json").write_text(json.dumps(doc))
    with pytest.raises(LeakError, match=f"1 group\\(s\\) fall on two sides.*lesion_id:{lesion}"):
        load_split(store, "edited")


def test_image_listed_twice_and_unknown_ids_refused(small_data):
    store = Store.open(small_data)
    doc = json.loads(split_path(small_data).read_text())
    doc["assign"]["test"].append(doc["assign"]["val"][0])
    with pytest.raises(LeakError, match="both val and test"):
        check_split(store.table, doc, "lesion_id")
    doc = json.loads(split_path(small_data).read_text())
    doc["assign"]["val"].append("ISIC_nope")
    with pytest.raises(BadInputError, match="not in the data set: ISIC_nope"):
        check_split(store.table, doc, "lesion_id")


def test_save_refuses_a_different_split(small_data):
    store = Store.open(small_data)
    path = split_path(small_data)
    same = make_split(store, (10, 40), (10, 40), seed=0)
    save_split(same, path)  # identical: fine, nothing changes
    other = make_split(store, (10, 40), (10, 40), seed=5)
    with pytest.raises(ExistsError, match="--name"):
        save_split(other, path)
    assert load_split(store).params["seed"] == 0


def test_train_pool_is_the_rest(small_data):
    store = Store.open(small_data)
    sp = load_split(store)
    pos = {s: set(sp.positions(store.table, s)) for s in ("train", "val", "test")}
    assert not (pos["train"] & pos["val"]) and not (pos["train"] & pos["test"])
    assert len(pos["train"]) + len(pos["val"]) + len(pos["test"]) + len(sp.ids("excluded")) == len(store.table)


# ---------------------------------------------------------------- training draws


def test_ratio_parse():
    assert parse_ratio("1:2") == 2.0 and parse_ratio(" 1 : 3.5 ") == 3.5 and parse_ratio("natural") is None
    for bad in ("2:1", "1:0", "abc", "1:-2"):
        with pytest.raises(BadInputError, match="--ratio"):
            parse_ratio(bad)


def test_draw_counts_and_determinism():
    labels = np.array([1] * 40 + [0] * 200)
    pool = np.arange(10, 240)
    d = draw_training_set(labels, pool, "1:3", 20, seed=0)
    assert labels[d].sum() == 20 and (labels[d] == 0).sum() == 60 and set(d) <= set(pool)
    assert np.array_equal(d, draw_training_set(labels, pool, "1:3", 20, seed=0))
    assert not np.array_equal(d, draw_training_set(labels, pool, "1:3", 20, seed=1))
    assert len(draw_training_set(labels, pool, "natural", 293, seed=0)) == len(pool)
    assert labels[draw_training_set(labels, pool, "1:1", "all", seed=0)].sum() == 30


def test_draw_not_enough_says_how_many():
    labels = np.array([1] * 40 + [0] * 100)
    with pytest.raises(NotEnoughDataError, match="needs 150 benign images; the train pool has only 100"):
        draw_training_set(labels, np.arange(140), "1:5", 30, 0)
    with pytest.raises(NotEnoughDataError, match="only 40 malignant"):
        draw_training_set(labels, np.arange(140), "1:1", 293, 0)
