"""lesionlab tune: Optuna over config keys, resumable, shared by workers, never reading a test metric."""
import json
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from conftest import cli
from lesionlab.config import build_config, load_yaml
from lesionlab.errors import BadInputError
from lesionlab.workflows.tune import load_search, open_storage, open_study, tune

SEARCH = {
    "base": {"model": "upgraded_cnn", "n_malignant": 30, "epochs": 2, "batch_size": 16},
    "space": {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
              "augment": {"type": "choice", "values": ["none", "light"]}},
    "objective": "inner_val", "metric": "pauc_80", "pruning": False,
}


TUNE_SEARCH = {"base": {"model": "simple_cnn", "epochs": 1},
               "space": {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
               "objective": "inner_val", "metric": "pauc_80", "pruning": False}


def _search(tmp_path, name="search.yaml", **changes):
    doc = {**SEARCH, **changes}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _trials(out):
    storage = open_storage(None, out)
    name = optuna.get_all_study_names(storage)[0]
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.mark.slow
def test_tune_three_trials_writes_the_best_config_and_resumes(small_data, tmp_path):
    search, out = _search(tmp_path), tmp_path / "tune"
    r = cli("tune", search, "--data", small_data, "--out", out, "--trials", 3)
    assert "3 trials (3 complete" in r.output
    trials = _trials(out)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    best = load_yaml(out / "best.yaml")
    cfg = build_config({**best, "data": str(small_data)})
    assert cfg.model == "upgraded_cnn" and cfg.epochs == 2
    assert best["lr"] == max(trials, key=lambda t: t.value).params["lr"]
    assert (out / "figures" / "history.png").exists() and (out / "figures" / "importances.png").exists()
    report = (out / "report.md").read_text()
    assert "Optimisation history" in report and "Parameter importances" in report
    first = {p.name: (p / "metrics.json").stat().st_mtime for p in (out / "trials").iterdir() if not p.name.startswith(".")}
    assert len(first) == 3
    # resume: one more trial, the first three untouched
    cli("tune", search, "--data", small_data, "--out", out, "--trials", 4)
    assert len(_trials(out)) == 4
    after = {p.name: (p / "metrics.json").stat().st_mtime for p in (out / "trials").iterdir() if not p.name.startswith(".")}
    assert {k: after[k] for k in first} == first and len(after) == 4


class _NoTest(dict):
    def __getitem__(self, key):
        assert key != "test", "tune read a test metric"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key != "test", "tune read a test metric"
        return super().get(key, default)


def test_tune_reads_validation_metrics_only_and_prunes_per_epoch(tmp_path, monkeypatch):
    import lesionlab.workflows.tune as tune_mod

    epochs_run = []

    def fake_train(cfg, folder, on_epoch):
        for epoch in range(1, 4):
            epochs_run.append(epoch)
            on_epoch({"epoch": epoch, "val_pauc_80": 0.01 * epoch * cfg.lr * 1000, "test_pauc_80": 1.0})
        return {"metrics": _NoTest(val={"pauc_80": cfg.lr * 10}, test={"pauc_80": 1.0})}

    search = load_search(_search(tmp_path), "data")
    result = tune(search, "data", tmp_path / "t", 3, train=fake_train)
    assert result["complete"] == 3 and epochs_run == [1, 2, 3] * 3
    # a pruner that stops every trial after its first epoch
    monkeypatch.setattr(tune_mod, "_pruner", lambda s: optuna.pruners.ThresholdPruner(lower=10.0))
    epochs_run.clear()
    search = load_search(_search(tmp_path, "s2.yaml"), "data")
    result = tune(search, "data", tmp_path / "t2", 2, train=fake_train)
    assert result["pruned"] == 2 and epochs_run == [1, 1]


def test_a_resumed_study_draws_new_parameters(tmp_path):
    def fake_train(cfg, folder, on_epoch):
        return {"metrics": {"val": {"pauc_80": cfg.lr * 10}}}

    search = load_search(_search(tmp_path, space={"lr": SEARCH["space"]["lr"]}), "data")
    for total in (3, 6):  # a second process resumes the study to 6 trials
        tune(search, "data", tmp_path / "t", total, train=fake_train)
    lrs = [t.params["lr"] for t in _trials(tmp_path / "t")]
    assert len(lrs) == 6 and len(set(lrs)) == 6, lrs
    fresh = load_search(_search(tmp_path, "again.yaml", space={"lr": SEARCH["space"]["lr"]}), "data")
    tune(fresh, "data", tmp_path / "t2", 3, train=fake_train)  # a fresh study is still reproducible
    assert [t.params["lr"] for t in _trials(tmp_path / "t2")] == lrs[:3]


@pytest.mark.slow
def test_two_workers_on_one_storage_never_run_the_same_trial(small_data, tmp_path):
    search, out = _search(tmp_path), tmp_path / "tune"
    r = cli("tune", search, "--data", small_data, "--out", out, "--trials", 4, "--workers", 2)
    assert "4 trials (4 complete" in r.output
    trials = _trials(out)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    folders = [t.user_attrs["folder"] for t in trials]
    assert len(set(folders)) == 4 and all((out / f / "metrics.json").exists() for f in folders)
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers took trials
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 4


def test_a_dead_workers_trial_is_queued_again(tmp_path):
    search = load_search(_search(tmp_path), "data")
    out = tmp_path / "t"
    study = open_study(search, open_storage(None, out))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_categorical("augment", ["none", "light"])
    import socket

    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", dead.pid)
    lr = trial.params["lr"]
    seen = []
    tune(search, "data", out, 2, train=lambda cfg, folder, on_epoch: (seen.append(cfg.lr),
                                                                      {"metrics": {"val": {"pauc_80": 0.1}}})[1])
    assert seen[0] == pytest.approx(lr)  # the dead trial's parameters ran first
    states = [t.state for t in _trials(out)]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2


@pytest.mark.parametrize("change,msg", [
    ({"space": {"lrr": {"type": "float", "low": 0.1, "high": 0.2}}}, "space.lrr: unknown config key.*'lr'"),
    ({"space": {"lr": {"type": "float", "low": 0.01, "high": 0.01}}}, "empty range: low"),
    ({"space": {"epochs": {"type": "int", "low": 10, "high": 5}}}, "empty range"),
    ({"space": {"augment": {"type": "choice", "values": []}}}, "non-empty list"),
    ({"space": {"lr": {"type": "uniform", "low": 0.01, "high": 0.1}}}, "type must be one of"),
    ({"space": {"lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}}, "log: true needs low > 0"),
    ({"space": {"model": {"type": "choice", "values": ["upgraded_cnn", "resnet19"]}}}, "resnet19.*did you mean"),
    ({"space": {"data": {"type": "choice", "values": ["a", "b"]}}}, "cannot be searched"),
    ({"space": {}}, "at least one config key"),
    ({"objectiv": "cv"}, "unknown key 'objectiv'.*'objective'"),
    ({"metric": "pauc80"}, "metric must be one of.*'pauc_80'"),
    ({"base": {"epochz": 3}}, "unknown config key 'epochz'"),
])
def test_bad_search_files_are_refused(tmp_path, change, msg):
    with pytest.raises(BadInputError, match=msg):
        load_search(_search(tmp_path, **change), "data")


@pytest.mark.parametrize("url,msg", [
    ("sqlite:////nonexistent-dir/x/tune.db", "cannot be opened"),
    ("postgresql://nobody@localhost:1/none", "cannot be opened"),
    ("not-a-url", "not a storage URL"),
    ("journal:/proc/lesionlab/tune.log", "journal file cannot be opened"),
])
def test_a_storage_that_cannot_be_opened_is_named(tmp_path, url, msg):
    with pytest.raises(BadInputError, match=f"--storage {url}: .*{msg}"):
        open_storage(url, tmp_path)


def test_sqlite_storage_and_a_changed_search_is_refused_on_resume(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    search = load_search(_search(tmp_path), "data")
    result = tune(search, "data", tmp_path / "t", 1, url,
                  train=lambda cfg, folder, on_epoch: {"metrics": {"val": {"pauc_80": 0.1}}})
    assert result["complete"] == 1
    changed = load_search(_search(tmp_path, metric="roc_auc"), "data")
    with pytest.raises(BadInputError, match="started with another search.*metric"):
        open_study(changed, open_storage(url, tmp_path))


@pytest.mark.slow
def test_objective_cv_reads_the_out_of_fold_metric_only(small_data, tmp_path):
    search = load_search(_search(tmp_path, objective="cv", folds=2,
                                 base={**SEARCH["base"], "n_malignant": 8, "epochs": 1}), str(small_data))
    out = tmp_path / "t"
    result = tune(search, str(small_data), out, 1)
    assert result["complete"] == 1
    trial = _trials(out)[0]
    folder = out / trial.user_attrs["folder"]
    summary = json.loads((folder / "cv.json").read_text())
    assert trial.value == pytest.approx(summary["oof"]["pauc_80"])
    assert build_config({**load_yaml(out / "best.yaml"), "data": str(small_data)}).epochs == 1


def _fake_train(cfg, folder, on_epoch):
    return {"metrics": {"val": {"pauc_80": cfg.lr * 10}}}


def _tune_search(tmp_path):
    from lesionlab.workflows.tune import load_search

    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(TUNE_SEARCH))
    return load_search(path, "data")


def test_a_journal_with_a_torn_last_line_is_recovered_and_stays_readable(tmp_path):
    import optuna

    from lesionlab.workflows.tune import open_storage, tune

    search, out = _tune_search(tmp_path), tmp_path / "t"
    tune(search, "data", out, 2, train=_fake_train)
    journal = out / "journal.log"
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-30])  # the last record cut short: a crash or a full disk mid-write
    said = []
    tune(search, "data", out, 3, train=_fake_train, echo=said.append)
    assert any("cut short" in s and "set aside" in s for s in said), said
    kept = [p for p in out.iterdir() if p.name.startswith("journal.log.torn")]
    assert len(kept) == 1 and kept[0].read_bytes() == whole[len(whole.rstrip(b"\n").rsplit(b"\n", 1)[0]) + 1:-30]
    storage = open_storage(None, out)  # readable after the resume, and it holds the new trial
    trials = optuna.load_study(study_name=search.study, storage=storage).get_trials()
    assert len(trials) == 3
    for line in journal.read_bytes().splitlines():
        json.loads(line)


@pytest.mark.parametrize("content", [b"hello, this is not a journal\n", bytes(range(256)) * 8,
                                     b'{"op_code": 0, "worker_id": "w"}\nnot json\n{"op_code": 1}\n'])
def test_a_file_that_is_not_a_journal_is_refused_before_anything_is_written(tmp_path, content):
    from lesionlab.errors import BadInputError
    from lesionlab.workflows.tune import tune

    journal = tmp_path / "j.log"
    journal.write_bytes(content)
    with pytest.raises(BadInputError, match=f"--storage journal:{journal}: not an Optuna journal"):
        tune(_tune_search(tmp_path), "data", tmp_path / "t", 1, storage_url=f"journal:{journal}", train=_fake_train)
    assert journal.read_bytes() == content


def test_a_journal_that_is_not_a_regular_file_is_refused(tmp_path):
    from lesionlab.errors import BadInputError
    from lesionlab.workflows.tune import open_storage

    with pytest.raises(BadInputError, match="--storage journal:/dev/null: not a regular file"):
        open_storage("journal:/dev/null", tmp_path)
    (tmp_path / "dir.log").mkdir()
    with pytest.raises(BadInputError, match="not a regular file"):
        open_storage(f"journal:{tmp_path / 'dir.log'}", tmp_path)
