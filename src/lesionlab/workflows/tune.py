"""`lesionlab tune`: a recipe search with Optuna over any config keys.

SEARCH.yaml:

    base:       {model: upgraded_cnn, epochs: 20, ...}     # config keys every trial starts from
    space:                                                 # config keys to search
      lr:       {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      epochs:   {type: int, low: 10, high: 40, step: 5}
      augment:  {type: choice, values: [light, medium, heavy]}
    objective:  inner_val          # inner_val: the run's validation metric (the split's val set);
                                   # cv: the out-of-fold metric of `lesionlab cv` (folds: K)
    metric:     pauc_80            # pauc_80, roc_auc, average_precision, f1 or loss
    direction:  maximize           # default: minimize for loss, else maximize
    folds:      5                  # cv only
    pruning:    {n_startup_trials: 3, n_warmup_steps: 3}   # MedianPruner; false = off

Trials never read a test metric: the objective is the validation metric (inner_val) or the
out-of-fold metric (cv), and the per-epoch values reported for pruning are validation values.
Each trial is a run folder in TUNE_DIR/trials/. The study lives in a storage that any number of
workers share: by default a journal file TUNE_DIR/journal.log (file locks; works on a shared
filesystem), or any RDB URL (--storage sqlite:///tune.db, postgresql://..., mysql://...).
Optuna gives every trial a distinct number from the storage, so two workers never run the same
trial; the total number of trials (--trials) is counted in the storage, so a second run of the
same command resumes the study and a dead worker's trial (same machine) is queued again.
At the end: TUNE_DIR/best.yaml (the best trial's config), trials.csv, report.md and Optuna's own
figures (optimisation history, parameter importances).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from .. import plots  # before pyplot is imported anywhere here (optuna's figures too): file-only backend
from ..config import KEYS, ExperimentConfig, build_config, load_yaml
from ..config.keys import fixed_keys
from ..errors import BadInputError, LesionLabError, closest, first_line, shown
from ..fileio import atomic_path, pid_alive, read_json, write_bytes, write_text
from ..runs.records import TuneResult

log = logging.getLogger(__name__)

TYPES = ("choice", "int", "float")
OBJECTIVES = ("inner_val", "cv")
Direction = Literal["minimize", "maximize"]
METRICS = ("pauc_80", "roc_auc", "average_precision", "f1", "balanced_accuracy", "loss")
TOP_KEYS = ("base", "space", "objective", "metric", "direction", "folds", "pruning", "study")
# keys a search may not vary (where the data are and how the run is executed): marked on their config fields
FIXED = fixed_keys(ExperimentConfig)
JOURNAL = "journal.log"
RECORD_START = b'{"op_code":'  # how Optuna's journal writes every record (json.dumps, compact separators)


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    values: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    def suggest(self, trial) -> Any:
        if self.type == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        assert self.low is not None and self.high is not None  # a numeric range is parsed with both bounds
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> dict:
        if self.type == "choice":
            return {"type": "choice", "values": list(self.values)}
        d = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
        return {**d, "step": self.step} if self.step is not None else d


@dataclass
class Search:
    path: Path
    base: dict
    space: dict[str, Param]
    objective: str = "inner_val"
    metric: str = "pauc_80"
    direction: Direction = "maximize"
    folds: int = 5
    pruning: dict | None = field(default_factory=lambda: {"n_startup_trials": 3, "n_warmup_steps": 3})
    study: str = ""

    def describe(self) -> dict:
        """What must stay the same for a study to be resumed (the trial budget may change)."""
        return {"base": self.base, "space": {k: p.describe() for k, p in self.space.items()},
                "objective": self.objective, "metric": self.metric, "direction": self.direction,
                "folds": self.folds if self.objective == "cv" else None}


def _param(key: str, spec: Any, origin: str) -> Param:
    where = f"{origin}: space.{key}"
    if not isinstance(spec, dict):
        raise BadInputError(f"{where}: expected a mapping such as {{type: float, low: 1e-4, high: 1e-2, log: true}} "
                            f"or {{type: choice, values: [...]}}, got {shown(spec)}")
    kind = str(spec.get("type", "")).lower()
    if kind not in TYPES:
        raise BadInputError(f"{where}: type must be one of {', '.join(TYPES)}, got '{spec.get('type')}'"
                            f"{closest(kind, TYPES)}")
    allowed = {"choice": {"type", "values"}, "int": {"type", "low", "high", "log", "step"},
               "float": {"type", "low", "high", "log", "step"}}[kind]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise BadInputError(f"{where}: unknown field '{extra[0]}' for type {kind}{closest(extra[0], allowed)}; "
                            f"allowed: {', '.join(sorted(allowed))}")
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise BadInputError(f"{where}: a choice needs a non-empty list of values, got {shown(values)}")
        if len({repr(v) for v in values}) != len(values):
            raise BadInputError(f"{where}: values repeat: {shown(values)}")
        return Param(key, kind, tuple(values))
    if "low" not in spec or "high" not in spec:
        raise BadInputError(f"{where}: type {kind} needs low and high")
    try:
        cast = int if kind == "int" else float
        low, high = cast(spec["low"]), cast(spec["high"])
        step = cast(spec["step"]) if spec.get("step") is not None else None
    except (TypeError, ValueError):
        raise BadInputError(f"{where}: low, high and step must be {kind} numbers, got {shown(spec)}") from None
    if kind == "int" and (low != spec["low"] or high != spec["high"]):
        raise BadInputError(f"{where}: type int needs whole numbers, got low {spec['low']} and high {spec['high']}")
    if not low < high:
        raise BadInputError(f"{where}: empty range: low ({low}) must be below high ({high})")
    log_scale = bool(spec.get("log", False))
    if log_scale and low <= 0:
        raise BadInputError(f"{where}: log: true needs low > 0, got {low}")
    if step is not None and (step <= 0 or log_scale):
        raise BadInputError(f"{where}: step must be > 0 and cannot be combined with log: true")
    return Param(key, kind, (), low, high, log_scale, step)


def load_search(path: str | os.PathLike, data: str | None = None) -> Search:
    """Read and check SEARCH.yaml: every key is a config key, every range non-empty, and the
    base config with each end of every range is a valid config."""
    path = Path(path)
    doc = load_yaml(path)
    origin = str(path)
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise BadInputError(f"{origin}: unknown key '{unknown[0]}'{closest(unknown[0], TOP_KEYS)}; "
                            f"a search has {', '.join(TOP_KEYS)}")
    base = dict(doc.get("base") or {})
    if not isinstance(doc.get("base", {}) or {}, dict):
        raise BadInputError(f"{origin}: base must be a mapping of config keys")
    space_doc = doc.get("space")
    if not isinstance(space_doc, dict) or not space_doc:
        raise BadInputError(f"{origin}: space must map at least one config key to its range")
    space = {}
    for key, spec in space_doc.items():
        if key not in KEYS:
            raise BadInputError(f"{origin}: space.{key}: unknown config key{closest(str(key), KEYS)}")
        if key in FIXED:
            raise BadInputError(f"{origin}: space.{key}: cannot be searched (it says where the data are or how runs "
                                "execute); set it in base or by flag")
        space[key] = _param(key, spec, origin)
    objective = str(doc.get("objective", "inner_val"))
    if objective not in OBJECTIVES:
        raise BadInputError(f"{origin}: objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'"
                            f"{closest(objective, OBJECTIVES)}")
    metric = str(doc.get("metric", "pauc_80")).removeprefix("val_")
    if metric not in METRICS:
        raise BadInputError(f"{origin}: metric must be one of {', '.join(METRICS)}, got '{metric}'{closest(metric, METRICS)}")
    given = str(doc.get("direction", "minimize" if metric == "loss" else "maximize"))
    if given not in ("maximize", "minimize"):
        raise BadInputError(f"{origin}: direction must be maximize or minimize, got '{given}'")
    direction: Direction = "maximize" if given == "maximize" else "minimize"
    folds = doc.get("folds", 5)
    if not isinstance(folds, int) or folds < 2:
        raise BadInputError(f"{origin}: folds must be an integer of at least 2, got {shown(folds)}")
    pruning = doc.get("pruning", {"n_startup_trials": 3, "n_warmup_steps": 3})
    if pruning is True:
        pruning = {}
    if pruning not in (False, None) and (not isinstance(pruning, dict)
                                         or set(pruning) - {"n_startup_trials", "n_warmup_steps", "interval_steps"}):
        raise BadInputError(f"{origin}: pruning must be false, true or {{n_startup_trials: N, n_warmup_steps: N}}, "
                            f"got {shown(pruning)}")
    search = Search(path, base, space, objective, metric, direction, folds, pruning or None,
                    str(doc.get("study", "")) or path.stem)
    _check_configs(search, data, origin)
    return search


def _check_configs(search: Search, data: str | None, origin: str) -> None:
    base = {**search.base, **({"data": data} if data else {})}
    build_config(base, f"{origin}: base")
    for p in search.space.values():
        ends = list(p.values) if p.type == "choice" else [p.low, p.high]
        for v in ends:
            build_config({**base, p.key: v}, f"{origin}: space.{p.key} = {shown(v)}")


def trial_config(search: Search, params: dict, data: str, trial_number: int) -> ExperimentConfig:
    values = {"bootstrap": 0, **search.base, **params, "data": data, "name": f"trial-{trial_number:04d}"}
    return build_config(values, f"trial {trial_number}")


# ---------------------------------------------------------------- storage and study


def _journal_records(data: bytes, name: str) -> tuple[list[bytes], list[bytes]]:
    """(complete records, pieces of records cut short) of a journal file's bytes; anything that is not
    a journal record refuses the file (BadInputError), before Optuna appends to it.

    Optuna writes one JSON record per line and reads a file up to its first line that is not one. A
    record cut short by a crash or a full disk has no newline, so the next append joins it to the
    line after: such a line is the torn start of a record followed by a whole one."""
    records, torn = [], []
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line:
            continue  # the end of the file after its last newline
        if _is_record(line):
            records.append(line)
            continue
        if not (line.startswith(RECORD_START) or RECORD_START.startswith(line)):
            raise BadInputError(f"{name}: not an Optuna journal (line {number} is not a journal record: "
                                f"{shown(line[:60])}); give the journal file of a study, or a new path")
        k = line.rfind(RECORD_START)
        if number == len(lines) or k <= 0 or not _is_record(line[k:]):
            if number != len(lines):  # a cut record with more after it that is not a record either
                raise BadInputError(f"{name}: not an Optuna journal (line {number} is damaged: {shown(line[:60])})")
            torn.append(line)  # the last line, without its newline: cut short
            continue
        torn.append(line[:k])
        records.append(line[k:])
    return records, torn


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def check_journal(path: Path, name: str, echo: Callable[[str], None]) -> None:
    """Check a journal file before Optuna opens it: refuse what is not a regular file holding journal
    records; records cut short are set aside in JOURNAL.torn-TIME, the complete ones kept, and said."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.exists():
        return
    if not path.is_file():
        raise BadInputError(f"{name}: not a regular file; a journal storage is a file that lesionlab (Optuna) writes")
    lock = JournalFileSymlinkLock(str(path))  # Optuna's own lock of the file: no worker appends meanwhile
    lock.acquire()
    try:
        data = path.read_bytes()
        records, torn = _journal_records(data, name)
        if not torn:
            return
        aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        write_bytes(aside, b"\n".join(torn))
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"".join(r + b"\n" for r in records))
    finally:
        lock.release()
    echo(f"{path}: {len(torn)} journal record(s) cut short ({sum(map(len, torn))} bytes, e.g. by a crash or a full "
         f"disk), set aside in {aside}; the study goes on from its {len(records)} complete record(s)")


def open_storage(url: str | None, tune_dir: Path, echo: Callable[[str], None] = log.warning):
    """The study's storage: a journal file (default TUNE_DIR/journal.log, or journal:PATH) or an
    RDB URL. Any storage that cannot be opened is named with the reason; a journal file is checked
    first (check_journal)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if not url or url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = Path(url.removeprefix("journal:").removeprefix("//")) if url else tune_dir / JOURNAL
        name = f"--storage {url or path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            check_journal(path, name, echo)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise BadInputError(f"{name}: the journal file cannot be opened ({e})") from None
    if "://" not in url:
        raise BadInputError(f"--storage {url}: not a storage URL; expected sqlite:///PATH, postgresql://USER@HOST/DB, "
                            "mysql://..., or journal:PATH (a journal file, also on a shared filesystem)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # a worker that dies leaves its trial RUNNING: after 3 minutes without a heartbeat it is
            # failed and queued again with the same parameters
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180,
                                              heartbeat_stale_trial_callback=retry)
    except Exception as e:  # sqlalchemy, driver and OS errors come in many types
        reason = first_line(e)
        raise BadInputError(f"--storage {url}: cannot be opened ({type(e).__name__}: {reason})") from None


def _pruner(search: Search):
    import optuna

    if not search.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(**search.pruning)


def open_study(search: Search, storage, worker: int = 0, seed: int = 0):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=search.study, storage=storage, direction=search.direction,
                                pruner=_pruner(search), load_if_exists=True)
    # The sampler's seed also counts the trials the storage already holds: a seeded sampler starts its
    # random stream over in every process, so a resumed study would otherwise draw its first trials'
    # parameters again. A fresh study (0 trials) keeps the plain seed, so it stays reproducible.
    held = len(study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(seed=seed + 7919 * worker + 104_729 * held, constant_liar=True)
    if study.direction.name.lower() != search.direction:
        raise BadInputError(f"study '{search.study}' in this storage maximises/minimises the other way "
                            f"({study.direction.name.lower()}); use another study name (study: in SEARCH.yaml)")
    saved = study.user_attrs.get("search")
    mine = _jsonable(search.describe())
    if saved is None:
        study.set_user_attr("search", mine)
    elif saved != mine:
        diff = [k for k in mine if saved.get(k) != mine.get(k)]
        raise BadInputError(f"study '{search.study}' in this storage was started with another search "
                            f"(differs in: {', '.join(diff)}); resume it with the same SEARCH.yaml, or give the new "
                            "search its own study name (study: NAME) or TUNE_DIR")
    return study


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def _counted(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                                                          TrialState.WAITING)))


def _requeue_dead(study) -> int:
    """Trials left RUNNING by a worker of this machine that has died: marked failed and queued
    again with the same parameters (other machines' trials are left to their own workers or,
    with an RDB storage, to Optuna's heartbeat)."""
    from optuna.trial import TrialState

    host, n = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None or pid_alive(int(pid)):
            continue
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log.warning("trial %d was left running by a dead worker (pid %s); queued again", t.number, pid)
        n += 1
    return n


# ---------------------------------------------------------------- objectives


class _Surplus(Exception):
    """A worker started a trial after others had filled the budget (a race between workers)."""


def _run_cv(cfg: ExperimentConfig, folder: Path, folds: int, on_epoch: Callable[[dict], None]) -> None:
    from .cv import run_cv  # here: cv imports the training stack, which inner_val trials load themselves

    run_cv(cfg, folder, folds, on_epoch=on_epoch, echo=lambda s: log.info("%s", s))


def _oof_metric(folder: Path, metric: str) -> float:
    """The out-of-fold metric from CV_DIR/cv.json: only its "oof" block is read."""
    path = folder / "cv.json"
    if not path.exists():
        raise LesionLabError(f"{folder}: cross-validation wrote no cv.json; cannot read the out-of-fold {metric}")
    return float(read_json(path)["oof"][metric])


def make_objective(search: Search, data: str, tune_dir: Path, n_trials: int,
                   echo: Callable[[str], None] = lambda s: None, train: Callable | None = None):
    """The function Optuna calls per trial. `train(cfg, folder, on_epoch)` runs one experiment
    (default: train.train_process) and returns its result; only result["metrics"]["val"]
    is read."""
    import optuna
    from optuna.trial import TrialState

    if train is None:
        from .train import train_process

        train = train_process
    run_trial: Callable = train  # (cfg, folder, on_epoch) -> result

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        earlier = [t for t in trial.study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)) if t.number < trial.number]
        if len(earlier) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number}: the budget of {n_trials} trials was already taken")
        params = {key: p.suggest(trial) for key, p in search.space.items()}
        cfg = trial_config(search, params, data, trial.number)
        folder = tune_dir / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("folder", str(folder.relative_to(tune_dir)))
        echo(f"trial {trial.number}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
        key = "val_" + search.metric
        if search.objective == "inner_val":
            def on_epoch(row: dict) -> None:
                trial.report(float(row[key]), step=int(row["epoch"]))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {row['epoch']}: val {search.metric} {row[key]:.4f}")

            result = run_trial(cfg, folder, on_epoch)
            value = float(result["metrics"]["val"][search.metric])  # the validation metric only
        else:
            fold: dict[str, Any] = {"index": 0, "last_epoch": 0, "best": None}

            def on_epoch(row: dict) -> None:  # prune per fold: report each finished fold's best val value
                if int(row["epoch"]) <= fold["last_epoch"] and fold["best"] is not None:
                    trial.report(fold["best"], step=fold["index"])
                    fold["index"] += 1
                    fold["best"] = None
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"after fold {fold['index']}")
                fold["last_epoch"] = int(row["epoch"])
                v = float(row[key])
                better = fold["best"] is None or (v > fold["best"] if search.direction == "maximize" else v < fold["best"])
                fold["best"] = v if better else fold["best"]

            _run_cv(cfg, folder, search.folds, on_epoch)
            value = _oof_metric(folder, search.metric)
        echo(f"trial {trial.number}: {search.objective} {search.metric} {value:.4f}")
        return value

    return objective


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- running


def tune(search: Search, data: str, tune_dir: str | os.PathLike, n_trials: int, storage_url: str | None = None,
         worker: int = 0, seed: int = 0, echo: Callable[[str], None] = lambda s: None, summary: bool = True,
         train: Callable | None = None) -> TuneResult:
    """Run trials in this process until the study holds n_trials (complete, pruned or running)."""

    if n_trials < 1:
        raise BadInputError(f"--trials must be at least 1, got {n_trials}")
    tune_dir = Path(tune_dir)
    tune_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_url, tune_dir, echo)
    study = open_study(search, storage, worker, seed)
    _requeue_dead(study)
    objective = make_objective(search, data, tune_dir, n_trials, echo, train)
    ran = 0
    while _counted(study) < n_trials:
        study.optimize(objective, n_trials=1, catch=(_Surplus,), gc_after_trial=True)
        ran += 1
    return write_summary(study, search, tune_dir, n_trials) if summary else {"ran": ran}


def run_local_workers(search_file: Path, workers: int, args: list[str]) -> int:
    """`workers` tune processes on this machine sharing one storage, the cores split between them."""
    from .sweep import spawn_local_workers

    return spawn_local_workers(lambda i: ["tune", str(search_file), *args, "--worker-index", str(i), "--no-summary"],
                               workers)


# ---------------------------------------------------------------- results


def write_summary(study, search: Search, tune_dir: Path, n_trials: int) -> TuneResult:
    """best.yaml, trials.csv, Optuna's figures and report.md, from the storage (any worker may write it)."""
    import pandas as pd
    from optuna.trial import TrialState

    from ..fileio import write_csv

    trials = study.get_trials(deepcopy=False)
    rows = [{"number": t.number, "state": t.state.name, "value": t.value,
             "epochs_reported": len(t.intermediate_values),
             "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
             "folder": t.user_attrs.get("folder", ""), "pid": t.user_attrs.get("pid"),
             **{f"param_{k}": v for k, v in t.params.items()}} for t in trials]
    write_csv(tune_dir / "trials.csv", pd.DataFrame(rows))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    result: TuneResult = {"study": study.study_name, "trials": len(trials), "complete": len(complete),
              "pruned": sum(t.state == TrialState.PRUNED for t in trials),
              "failed": sum(t.state == TrialState.FAIL for t in trials), "best": None}
    if complete:
        best = study.best_trial
        values = {k: v for k, v in {**search.base, **best.params}.items() if k != "data"}
        values["name"] = f"tuned ({search.study}, trial {best.number})"
        header = (f"# Best trial of `lesionlab tune {search.path.name}` (study '{study.study_name}'): trial {best.number} "
                  f"of {len(trials)}, {search.objective} {search.metric} = {best.value:.4f} ({search.direction}).\n"
                  f"# Chosen on {'validation' if search.objective == 'inner_val' else 'out-of-fold'} data only; "
                  "no test metric was read.\n#   lesionlab train best.yaml --data DATA_DIR --out RUN_DIR\n")
        write_text(tune_dir / "best.yaml", header + yaml.safe_dump(_jsonable(values), sort_keys=False))
        result["best"] = {"number": best.number, "value": best.value, "params": best.params,
                          "config": str(tune_dir / "best.yaml")}
    result["figures"] = _figures(study, tune_dir)
    _report(study, search, tune_dir, result, rows)
    return result


def _figures(study, tune_dir: Path) -> dict:
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out: dict[str, str | None] = {}
    folder = tune_dir / "figures"
    folder.mkdir(exist_ok=True)
    for name, plot in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax: Any = plot(study)  # one Axes, or an array of them
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(7, 4)
            fig.tight_layout()
            path = folder / f"{name}.png"
            plots.save(fig, path, dpi=90)
            out[name] = str(path.relative_to(tune_dir))
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few trials, nothing varied, ...
            out[name] = None
            out[f"{name}_note"] = first_line(e, limit=None)
            plt.close("all")
    return out


def _report(study, search: Search, tune_dir: Path, result: TuneResult, rows: list[dict]) -> None:
    lines = [f"# Tuning: study '{study.study_name}'", "",
             f"Search `{search.path}`; objective **{search.objective}** ({search.metric}, {search.direction}); "
             f"{result['trials']} trials: {result['complete']} complete, {result['pruned']} pruned, "
             f"{result['failed']} failed. No test metric was read.", ""]
    if result["best"]:
        b = result["best"]
        lines += [f"Best: trial {b['number']}, {search.metric} {b['value']:.4f}; written as `best.yaml`:", ""]
        lines += [f"- `{k}`: {_fmt(v)}" for k, v in b["params"].items()] + [""]
    lines += ["## Search space", ""] + [f"- `{k}`: {p.describe()}" for k, p in search.space.items()] + [""]
    figs = result["figures"]
    for name, title in (("history", "Optimisation history"), ("importances", "Parameter importances (Optuna's default "
                                                                               "evaluator, PED-ANOVA)")):
        lines += [f"## {title}", ""]
        lines += [f"![{title}]({figs[name]})" if figs.get(name) else f"(not drawn: {figs.get(name + '_note')})", ""]
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    lines += ["## Trials", "", "| # | state | value | " + " | ".join(p[6:] for p in params) + " |",
              "|---|---|---|" + "---|" * len(params)]
    for r in rows:
        value = f"{r['value']:.4f}" if r["value"] is not None else ""
        lines.append(f"| {r['number']} | {r['state']} | {value} | "
                     + " | ".join(_fmt(r.get(p, "")) for p in params) + " |")
    write_text(tune_dir / "report.md", "\n".join(lines) + "\n")
