"""One experiment, start to finish: draw -> train -> choose threshold on val -> evaluate ->
a complete run folder (or none: the folder is built aside and moved into place at the end)."""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from .. import plots
from ..calibration import apply_calibration, check_two_classes, fit_calibration
from ..config import ExperimentConfig, to_dict
from ..data.extra import ExtraPart, load_extra
from ..data.parallel import cpu_count
from ..data.sampling import EpochSampler, draw_training_set
from ..data.splits import Split, check_evaluable, load_split
from ..data.store import Store
from ..data.synthetic import CombinedImages, SyntheticPart, load_synthetic
from ..data.tta import tta_logits
from ..engine.distributed import World, check_devices, from_environment, spawn
from ..engine.runtime import IMAGENET, Preprocessing, Runtime, resolve_runtime
from ..engine.trainer import Batches, TrainOptions, TrainResult, fit, predict_sharded
from ..errors import BadInputError
from ..fileio import read_json
from ..metrics import ThresholdRule, bce_per_sample, bootstrap_ci, ci_unit, compute_metrics, parse_prevalence, prior_shift
from ..models import create_model, get_spec
from ..models.encoder import head_name, is_timm, load_encoder_state
from ..models.timm_models import pretrained_source, zero_classifier
from ..runs import RunWriter, check_new_run_folder, model_checkpoint
from ..runs import format as fmt
from ..runs.encoder_run import EncoderWeights, check_encoder_fits, check_not_pretrained_on, is_encoder_dir, load_encoder
from ..runs.finetune import RunWeights, check_not_trained_on, check_run_fits, is_train_run, load_run_state, load_run_weights
from ..runs.records import AuditBlock, RunInfo, RunResult, SideMetrics, metrics_record

log = logging.getLogger(__name__)

def _check_batch(batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise BadInputError(f"--batch-size {batch_size} is the global batch and must divide evenly over "
                            f"{processes} processes (--devices)")


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def epoch_line(row: dict, total: int) -> str:
    return (f"epoch {row['epoch']:>3}/{total}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
            f"val AP {row['val_average_precision']:.3f}  val pAUC80 {row['val_pauc_80']:.4f}  "
            f"{row['train_img_s']:.0f} img/s")


def _print_epochs(total: int) -> Callable[[dict], None]:
    return lambda row: print(epoch_line(row, total), file=sys.stderr, flush=True)


def train(cfg: ExperimentConfig, out: str | os.PathLike, on_epoch: Callable[[dict], None] | None = None,
          plan: "FoldPlan | None" = None) -> RunResult:
    """One experiment on one process, on the processes of this machine (--devices), or as one
    process of a torchrun launch; returns run.json's content with the metrics. `plan` replaces the
    split's sides (a cross-validation fold)."""
    out = Path(out)
    world = from_environment()
    if world is not None:
        result = train_process(cfg, out, on_epoch if world.is_main else None, world, plan)
        world.barrier()  # leave together: rank 0 has written the run folder (the group stays for a cv's next fold)
        return result
    if cfg.num_nodes > 1:
        raise BadInputError(
            f"--num-nodes {cfg.num_nodes}: a run over several machines is started by torchrun on every node, e.g. "
            f"torchrun --nnodes {cfg.num_nodes} --nproc-per-node {cfg.devices} --rdzv-backend c10d "
            f"--rdzv-endpoint HOST:29500 -m lesionlab train ... (see README, Distributed training)")
    if cfg.devices == 1:
        return train_process(cfg, out, on_epoch, plan=plan)
    check_devices(cfg.devices, cfg.num_nodes, cfg.device)
    _check_batch(cfg.batch_size, cfg.devices)
    check_new_run_folder(out)  # refuse an existing run now, before any process starts
    if cfg.data:  # and a split that cannot be evaluated
        store = Store.open(cfg.data)
        check_evaluable(load_split(store, cfg.split), store.table)
    spawn(_spawned_run, (to_dict(cfg), str(out), plan), cfg.devices, cfg.device)
    return {**read_json(out / fmt.INFO), "metrics": read_json(out / fmt.METRICS)}


def _spawned_run(cfg_dict: dict, out: str, plan: "FoldPlan | None", world: World) -> None:
    cfg = ExperimentConfig(**cfg_dict)
    train_process(cfg, Path(out), _print_epochs(cfg.epochs) if world.is_main else None, world, plan)


@dataclass(frozen=True)
class FoldPlan:
    """Table positions that replace the split's sides, for a cross-validation fold: the training
    draw comes from `pool`; `val` picks the checkpoint, early stop and threshold; `scored` sides
    (e.g. the held-out fold, the split's val and test) are only scored. Recorded in run.json."""

    pool: np.ndarray
    val: np.ndarray
    scored: dict[str, np.ndarray]
    info: dict


@dataclass
class Inputs:
    """Everything a run trains and is judged on, fixed before training starts."""

    store: Store
    split: Split
    ids: np.ndarray          # real image ids, by table position
    real_labels: np.ndarray
    real_pool: np.ndarray
    real_draw: np.ndarray
    labels: np.ndarray       # real labels, then one per synthetic image, then one per extra image
    draw: np.ndarray         # positions of the training draw (synthetic, then extra ones past the real rows)
    images: CombinedImages
    sampler: EpochSampler
    syn: SyntheticPart | None
    eval_pos: dict[str, np.ndarray]
    eval_x: dict[str, np.ndarray]
    eval_y: dict[str, np.ndarray]
    group_rule: str
    groups: np.ndarray  # group key of every table row (patient, else lesion, else image)
    extra: ExtraPart | None = None    # --extra-data: another data set's images, in the training draw only

    def eval_ids(self) -> list[str]:
        """Every image the run evaluates on (validation, test, out-of-fold), in eval_images() order."""
        return [str(i) for pos in self.eval_pos.values() for i in self.ids[pos]]

    def eval_images(self) -> np.ndarray:
        return np.concatenate(list(self.eval_x.values()))


def check_input_size(cfg: ExperimentConfig, store_size: int) -> int:
    """The model's input side: --input-size, or the data set's; enlarging only (prepare shrinks, with
    an antialiasing filter)."""
    if cfg.input_size and cfg.input_size < store_size:
        raise BadInputError(f"--input-size {cfg.input_size}: smaller than the data set's {store_size} px images; "
                            f"prepare the data at --size {cfg.input_size} instead (input_size only enlarges)")
    return cfg.input_size or store_size


def _inputs(cfg: ExperimentConfig, world: World, plan: FoldPlan | None = None) -> Inputs:
    store = Store.open(cfg.data)
    check_input_size(cfg, store.size)
    split = load_split(store, cfg.split)
    table = store.table
    check_evaluable(split, table)  # before any work: else the run fails after training
    ids = table["id"].astype(str).to_numpy()
    real_labels = table["label"].to_numpy()
    if plan is None:
        real_pool = split.positions(table, "train")
        eval_pos = {side: split.positions(table, side) for side in ("val", "test")}
    else:
        real_pool = np.asarray(plan.pool)
        eval_pos = {"val": np.asarray(plan.val), **{k: np.asarray(v) for k, v in plan.scored.items()}}
    eval_x = {side: store.pixels(pos) for side, pos in eval_pos.items()}
    group_rule = split.group_rule
    groups = split.group_keys(table)
    syn = None
    if cfg.synthetic:
        both = np.concatenate(list(eval_pos.values()))
        syn = load_synthetic(cfg.synthetic.data, cfg.synthetic.n, store, set(ids[both]),
                             np.concatenate(list(eval_x.values())), ids[both].tolist(), cfg.seed)
    n_syn = len(syn) if syn else 0
    extra = None
    if cfg.extra_data:
        both = np.concatenate(list(eval_pos.values()))
        extra = load_extra(cfg.extra_data, cfg.extra_ratio, cfg.extra_n_malignant, store, ids[both].tolist(),
                           np.concatenate(list(eval_x.values())), cfg.seed, group_rule, groups[both],
                           cfg.extra_drop_copies)
    n_extra = len(extra) if extra else 0
    real_draw = draw_training_set(real_labels, real_pool, cfg.ratio, cfg.n_malignant, cfg.seed, extra_malignant=n_syn)
    # synthetic images sit past the real rows: position len(table) + k is the k-th synthetic image; the extra
    # data set's draw comes after them (its own ratio: it does not count towards --ratio)
    syn_pos = len(table) + np.arange(n_syn)
    extra_pos = len(table) + n_syn + np.arange(n_extra)
    labels = np.r_[real_labels, np.ones(n_syn, real_labels.dtype),
                   extra.labels.astype(real_labels.dtype) if extra else np.zeros(0, real_labels.dtype)]
    draw = np.r_[real_draw, syn_pos, extra_pos]
    sampler = EpochSampler(cfg.sampler, labels, draw, np.r_[real_pool, syn_pos], cfg.seed, world.rank, world.size,
                           fixed=extra_pos)
    return Inputs(store, split, ids, real_labels, real_pool, real_draw, labels, draw, CombinedImages(store, syn, extra),
                  sampler, syn, eval_pos, eval_x, {side: real_labels[pos] for side, pos in eval_pos.items()},
                  group_rule, groups, extra)


def _runtime(cfg: ExperimentConfig, world: World, side: int) -> tuple[Runtime, dict]:
    """The device, threads, precision and memory format; `auto` precision and channels_last are the
    fastest on this machine for this model, side and batch (engine/autotune.py: measured once, cached).
    With several processes the first process chooses and every process takes its choice."""
    from ..engine import autotune

    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    device = f"cuda:{world.local_rank}" if world.distributed and cuda else cfg.device
    # a sweep worker beside others gets its share of the cores through LESIONLAB_NUM_THREADS
    threads = cfg.num_threads or int(os.environ.get("LESIONLAB_NUM_THREADS", 0)) or max(1, cpu_count() // world.local_size)
    rt = resolve_runtime(device, cfg.precision, cfg.channels_last,
                         model_prefers_channels_last=get_spec(cfg.model).channels_last, num_threads=threads)
    if cfg.precision == "64" or "auto" not in (cfg.precision, cfg.channels_last):
        return rt, {"measured": False, "reason": "given" if cfg.precision != "64" else "--precision 64"}
    choice: tuple[bool, bool, dict] | None = None
    if world.is_main:
        choice = autotune.choose(cfg.model, lambda: create_model(cfg.model, image_size=side), rt.device, side,
                                 cfg.batch_size // world.size, cfg.precision, cfg.channels_last)
    if world.distributed:
        choice = world.gather(choice)[0]
    assert choice is not None  # the main process chose, and every process has its choice
    bf16, channels_last, info = choice
    return replace(rt, bf16=bf16, channels_last=channels_last), info


@dataclass
class Evaluation:
    logits: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]     # the model's probabilities
    probs: dict[str, np.ndarray]   # reported probabilities (calibrated, prior-shifted when a prevalence is given)
    rule: ThresholdRule
    threshold: float
    trained_at: float
    deploy: float | None
    metrics: dict[str, Any]          # side -> SideMetrics; "audit" -> AuditBlock once audited
    calibration: dict | None = None  # the map fitted on validation (--calibrate)

    @property
    def reference(self) -> float:
        """The prevalence the (calibrated) probabilities refer to: where the prior shift starts."""
        return self.calibration["prevalence"] if self.calibration else self.trained_at

    @property
    def prior_shift(self) -> dict | None:
        """The checkpoint's prior shift (reference to deployment prevalence), None without a deployment one."""
        return {"from": self.reference, "to": self.deploy} if self.deploy else None


def evaluate(cfg: ExperimentConfig, logits: dict[str, np.ndarray], truth: dict[str, np.ndarray],
             train_prevalence: float, pos_weight: float | None, groups: dict[str, np.ndarray] | None = None,
             group_rule: str = "none") -> Evaluation:
    """Threshold chosen on validation only; metrics and intervals on validation, test and any other
    scored side. With `groups` (one key per image of each side) the intervals resample whole groups."""
    deploy = parse_prevalence(cfg.prevalence) if cfg.prevalence else None
    raw = {k: 1 / (1 + np.exp(-v)) for k, v in logits.items()}
    # what the model's probabilities are calibrated to: the training prevalence, with the
    # malignant odds multiplied by pos_weight when BCE weights them
    trained_at = train_prevalence
    if pos_weight:
        trained_at = pos_weight * trained_at / (pos_weight * trained_at + 1 - trained_at)
    # calibration (fitted on validation only) maps to probabilities at the validation prevalence;
    # the prior shift then starts there instead of at the training draw's prevalence
    cal = fit_calibration(cfg.calibrate, logits["val"], truth["val"], trained_at)
    calibrated = {k: apply_calibration(v, cal) for k, v in logits.items()} if cal else raw
    reference = cal["prevalence"] if cal else trained_at
    probs = {k: prior_shift(v, reference, deploy) for k, v in calibrated.items()} if deploy else calibrated
    rule = ThresholdRule.parse(cfg.threshold)
    threshold = rule.choose(truth["val"], probs["val"])  # never on test
    metrics: dict[str, SideMetrics] = {}
    grouped = groups is not None and group_rule != "none"
    for side in truth:
        losses = bce_per_sample(truth[side], logits[side])
        m: dict[str, Any] = compute_metrics(truth[side], probs[side], threshold, losses, deploy)
        side_groups = groups[side] if grouped and groups is not None else None
        if cfg.bootstrap:
            m["ci95"] = bootstrap_ci(truth[side], probs[side], threshold, losses, cfg.bootstrap, seed=cfg.seed,
                                     prevalence=deploy, groups=side_groups)
            m["ci95_unit"] = ci_unit(group_rule if grouped else None)
        m["n_malignant"], m["n_benign"] = int(truth[side].sum()), int((truth[side] == 0).sum())
        if side_groups is not None:
            m["n_groups"] = int(len(np.unique(side_groups)))
        metrics[side] = m
    return Evaluation(logits, raw, probs, rule, threshold, trained_at, deploy, metrics, cal)


def train_process(cfg: ExperimentConfig, out: str | os.PathLike,
                  on_epoch: Callable[[dict], None] | None = None, world: World | None = None,
                  plan: FoldPlan | None = None) -> RunResult:
    """Train and evaluate one experiment into the run folder `out`; return run.json's content.
    With several processes each trains its shard; only rank 0 writes (the others return {}).
    `plan` replaces the split's train pool, validation and test sides (a cross-validation fold)."""
    if not cfg.data:
        raise BadInputError("no data set given: pass --data DATA_DIR or set 'data' in the config")
    world = world or World()
    _check_batch(cfg.batch_size, world.size)
    out = Path(out)
    started = time.time()
    inp = _inputs(cfg, world, plan)
    if cfg.calibrate != "none":
        check_two_classes(inp.eval_y["val"], cfg.calibrate)  # before training, not after
    n_mal, n_ben = int(inp.labels[inp.draw].sum()), int((inp.labels[inp.draw] == 0).sum())
    pos_weight = n_ben / n_mal if cfg.pos_weight == "auto" else cfg.pos_weight
    opts = TrainOptions.from_config(cfg, pos_weight)
    side = check_input_size(cfg, inp.store.size)
    start = _start(cfg, inp, side)
    writer = RunWriter(out, "train") if world.is_main else None
    with writer or contextlib.nullcontext():
        _seed_everything(cfg.seed)
        model, pre, weights = _build_model(cfg, start, side, inp.store.size)
        opts = replace(opts, preprocess=pre)
        if cfg.encoder_lr_mult != 1 or cfg.linear_probe_epochs or cfg.layer_decay != 1:
            opts = replace(opts, head=head_name(model))
        rt, autotuned = _runtime(cfg, world, side)
        batches = Batches(inp.images.pixels, inp.labels, inp.sampler, cfg.batch_size // world.size)
        setup_seconds = time.time() - started
        result = fit(model, batches, inp.eval_x["val"], inp.eval_y["val"], rt, opts, on_epoch, world)
        model.load_state_dict(result.best_state)
        # test-time augmentation (--tta) for the final scores only; per-epoch validation stays plain
        logits = {s: tta_logits(lambda x: predict_sharded(model, x, rt, cfg.eval_batch_size, world, pre), inp.eval_x[s],
                                cfg.tta) for s in inp.eval_pos}
        if writer is None:
            return {}
        ev = evaluate(cfg, logits, inp.eval_y, inp.sampler.train_prevalence, pos_weight,
                      {s: inp.groups[pos] for s, pos in inp.eval_pos.items()}, inp.group_rule)
        run_info = _run_info(cfg, out, inp, result, ev, opts, rt, world, pos_weight, setup_seconds, started)
        run_info["encoder"] = start.encoder.describe() if start.encoder is not None else None
        run_info["weights"] = weights
        run_info["preprocessing"] = pre.to_dict()
        run_info["runtime"] = {**(run_info.get("runtime") or {}), "autotune": autotuned}
        if plan is not None:
            run_info["plan"] = plan.info
        _write_run(writer, cfg, inp, result, ev, rt, run_info, model, pre)
    return {**run_info, "metrics": ev.metrics}


@dataclass
class Start:
    """What the model starts from (--pretrained): scratch, imagenet (weights found by the model
    registry), encoder (ENC_DIR) or run (RUN_DIR); the checks that need no model are done."""

    kind: str
    encoder: EncoderWeights | None = None
    run: RunWeights | None = None
    guard: dict | None = None  # what the leak check of a RUN_DIR covered


def _start(cfg: ExperimentConfig, inp: Inputs, side: int) -> Start:
    value = cfg.pretrained
    if value is False or value in (None, ""):
        return Start("scratch")
    if is_train_run(value):
        rw = load_run_weights(value)
        check_run_fits(rw, cfg.model, side, get_spec(cfg.model).fixed_size)
        # every image this run scores: validation, test and, in a cv fold, the held-out fold
        return Start("run", run=rw, guard=check_not_trained_on(rw, inp.eval_ids(), inp.eval_images(),
                                                                  inp.store.content_hash))
    if is_encoder_dir(value):
        enc = load_encoder(value)
        check_encoder_fits(enc, cfg.model, side)
        # the split's val and test images; cross-validation's out-of-fold images lie in the train pool,
        # which an encoder pretrained there has seen without labels, as any SSL on the pool would
        check_not_pretrained_on(enc, inp.store, inp.split)
        return Start("encoder", encoder=enc)
    return Start("imagenet")


def _build_model(cfg: ExperimentConfig, start: Start, side: int, store_size: int) -> tuple[torch.nn.Module, Preprocessing, dict]:
    """The model with its starting weights, the preprocessing that comes with them (a pretrained
    backbone's own normalisation and interpolation) at this run's input size, and what run.json
    records about the weights (which file and its sha256 for ImageNet weights)."""
    model = create_model(cfg.model, image_size=side, pretrained=cfg.pretrained if start.kind == "imagenet" else False)
    weights: dict = {"kind": start.kind}
    pre = IMAGENET
    if start.encoder is not None:  # the encoder's weights; the head stays as initialised
        load_encoder_state(model, start.encoder.state_dict, f"--pretrained {start.encoder.path}")
        pre = start.encoder.preprocessing
        weights["source"] = {"encoder": str(start.encoder.path.resolve())}
    elif start.run is not None:
        load_run_state(model, start.run, cfg.pretrained_head)
        pre = start.run.preprocessing
        weights["source"] = start.run.describe(cfg.pretrained_head)
        weights["leak_check"] = start.guard
    elif start.kind == "imagenet":
        found = pretrained_source(model)
        assert found is not None  # create_model with ImageNet weights records where they came from
        pre = found["preprocessing"]
        weights.update(source=found["source"], trained_at=found["trained_at"])
    if (start.encoder is not None or (start.run is not None and cfg.pretrained_head == "fresh")) and is_timm(model):
        zero_classifier(model)  # a new head on pretrained features, as create_timm starts ImageNet ones
    return model, replace(pre, input_size=side if side != store_size else 0), weights


def _run_info(cfg: ExperimentConfig, out: Path, inp: Inputs, result: TrainResult, ev: Evaluation, opts: TrainOptions,
              rt: Runtime, world: World, pos_weight: float | None, setup_seconds: float, started: float) -> RunInfo:
    labels, draw = inp.labels, inp.draw
    calibration_note = ("focal loss and label smoothing change calibration; the prior shift assumes BCE-calibrated "
                        "probabilities") if ev.deploy and not ev.calibration and (cfg.loss == "focal" or cfg.label_smoothing) else ""
    return {
        "name": cfg.name or out.name,
        "data": str(Path(cfg.data).resolve()),
        "store_hash": inp.store.content_hash,
        "split_file": inp.split.path.name,
        "split_sha256": inp.split.sha256,
        "draw": {"malignant": int(labels[draw].sum()), "benign": int((labels[draw] == 0).sum()),
                 "synthetic": len(inp.syn) if inp.syn else 0, "extra": len(inp.extra) if inp.extra else 0,
                 "pool_malignant": int(inp.real_labels[inp.real_pool].sum()),
                 "pool_benign": int((inp.real_labels[inp.real_pool] == 0).sum())},
        "synthetic": inp.syn.info if inp.syn else None,
        "extra_data": inp.extra.info if inp.extra else None,
        "levers": {"loss": cfg.loss, "pos_weight": pos_weight, "sampler": cfg.sampler, "augment": cfg.augment,
                   "optimizer": cfg.optimizer, "scheduler": cfg.scheduler, "ema": cfg.ema,
                   "pretrained": cfg.pretrained, "label_smoothing": cfg.label_smoothing, "mixup": cfg.mixup,
                   "encoder_lr_mult": cfg.encoder_lr_mult, "linear_probe_epochs": cfg.linear_probe_epochs,
                   "layer_decay": cfg.layer_decay, "batchnorm": cfg.batchnorm, "input_size": cfg.input_size,
                   "pretrained_head": cfg.pretrained_head, "extra_data": cfg.extra_data},
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        "monitor": opts.monitor,
        "prevalence": {"trained_at": ev.trained_at, "deployment": ev.deploy, "note": calibration_note,
                       "calibrated_at": ev.calibration["prevalence"] if ev.calibration else None},
        "calibration": ev.calibration,
        "threshold_rule": str(ev.rule),
        "threshold": ev.threshold,
        "tta": cfg.tta,
        "group_rule": inp.group_rule,
        "speed": _speed(result, world),
        "runtime": rt.describe(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "setup_seconds": round(setup_seconds, 2),
        "wall_seconds": round(time.time() - started, 1),
    }


def _speed(result: TrainResult, world: World) -> dict:
    speed = {"train_img_s": round(world.size * result.train_img_s, 2), "processes": world.size,
             "compute_img_s": None, "loop_vs_compute": None}
    if result.compute_img_s:  # measured only when asked (--measure-compute): it costs extra steps
        speed["compute_img_s"] = round(world.size * result.compute_img_s, 2)
        speed["loop_vs_compute"] = round(result.train_img_s / result.compute_img_s, 3)
    return speed


def _write_run(w: RunWriter, cfg: ExperimentConfig, inp: Inputs, result: TrainResult, ev: Evaluation, rt: Runtime,
               run_info: RunInfo, model: torch.nn.Module | None = None, pre: Preprocessing = IMAGENET) -> None:
    preds = pd.concat([pd.DataFrame({"id": inp.ids[pos], "split": side, "label": inp.eval_y[side],
                                     "prob": ev.probs[side],
                                     **({"prob_model": ev.raw[side]} if ev.deploy or ev.calibration else {}),
                                     "group": inp.groups[pos]})
                       for side, pos in inp.eval_pos.items()])
    w.table(fmt.PREDICTIONS, preds)
    syn_ids = inp.syn.store.table["id"].to_numpy()[inp.syn.rows] if inp.syn else np.array([], dtype=object)
    extra_ids = inp.extra.ids if inp.extra else np.array([], dtype=object)
    n_real, n_syn, n_extra = len(inp.real_draw), len(syn_ids), len(extra_ids)
    drawn = pd.DataFrame({"id": np.r_[inp.ids[inp.real_draw], syn_ids, extra_ids], "label": inp.labels[inp.draw],
                          "synthetic": np.r_[np.zeros(n_real, int), np.ones(n_syn, int), np.zeros(n_extra, int)],
                          "extra": np.r_[np.zeros(n_real + n_syn, int), np.ones(n_extra, int)]})
    w.table(fmt.TRAIN_DRAW, drawn, float_format=None)
    w.table(fmt.HISTORY, pd.DataFrame(result.history), float_format=None)
    w.checkpoint(model_checkpoint(
        cfg.model, inp.store.size, inp.store.fit, result.best_state, ev.threshold, str(ev.rule),
        ev.prior_shift, rt.channels_last, pre.mean, pre.std,
        input_size=pre.input_size, interpolation=pre.interpolation,
        best_epoch=result.best_epoch, tta=cfg.tta, calibration=ev.calibration))
    _figures(w, result, inp.eval_y, ev.probs, ev.threshold)
    if model is not None:
        run_info["cam_gallery"] = _gallery(w, cfg, inp, ev, model, pre)
        if cfg.audit:
            audit = _audit(w, cfg, inp, ev, rt, model, pre)
            if "error" in audit:
                run_info["audit"] = audit
            else:
                ev.metrics["audit"] = audit  # in metrics.json, written last as ever
    w.finish(to_dict(cfg), run_info, metrics_record(ev.metrics))


def _gallery(w: RunWriter, cfg: ExperimentConfig, inp: Inputs, ev: Evaluation, model: torch.nn.Module,
             pre: Preprocessing = IMAGENET) -> dict:
    """The test set's CAM gallery for the report; a model without a known CAM layer (or any
    failure of the CAM) leaves the gallery out, with the reason in run.json, never the run."""
    from .explain import write_gallery

    try:
        return write_gallery(model, cfg.model, inp.eval_x["test"], inp.ids[inp.eval_pos["test"]], inp.eval_y["test"],
                             ev.probs["test"], ev.threshold, w.figure_path("cam_gallery"), pre.mean, pre.std,
                             input_size=pre.input_size, interpolation=pre.interpolation)
    except Exception as e:  # noqa: BLE001 - the run's metrics stand without its pictures
        log.warning("CAM gallery left out: %s", e)
        return {"error": str(e)[:500]}


def _audit(w: RunWriter, cfg: ExperimentConfig, inp: Inputs, ev: Evaluation, rt: Runtime, model: torch.nn.Module,
           pre: Preprocessing = IMAGENET) -> AuditBlock:
    """The shortcut audit of the test set (lesionlab.audit), through a predictor that scores exactly as the
    checkpoint's will; a failure leaves the audit out, with the reason in run.json, never the run."""
    from ..audit import AuditSettings
    from ..audit.command import audit_in_run, training_test_set
    from ..runs import ModelPredictor

    try:
        predictor = ModelPredictor(model.eval(), inp.store.size, inp.store.fit, ev.threshold, rt, pre.mean, pre.std,
                                   ev.prior_shift, "", cfg.tta,
                                   ev.calibration, cfg.model, pre.input_size, pre.interpolation)
        pos = inp.eval_pos["test"]
        test = training_test_set(inp.store, pos, inp.eval_x["test"], inp.eval_y["test"], inp.groups[pos], inp.group_rule,
                                 inp.split.sha256)
        return audit_in_run(w.path, predictor, test, AuditSettings(n_boot=cfg.bootstrap, seed=cfg.seed))
    except Exception as e:  # noqa: BLE001 - the run's metrics stand without its audit
        log.warning("shortcut audit left out: %s", e)
        return {"error": str(e)[:500]}


def _figures(w: RunWriter, result, truth: dict, probs: dict, threshold: float) -> None:
    plots.confusion_matrix(truth["val"], probs["val"], threshold, w.figure_path("confusion_val"), "validation")
    plots.confusion_matrix(truth["test"], probs["test"], threshold, w.figure_path("confusion_test"), "test")
    plots.training_curves(result.history, w.figure_path("curves"), result.best_epoch)
    curves = {side: (truth[side], probs[side]) for side in ("val", "test")}
    plots.roc(curves, w.figure_path("roc"))
    plots.precision_recall(curves, w.figure_path("pr"))
    plots.reliability_diagram(curves, w.figure_path("reliability"))
