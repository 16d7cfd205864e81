"""Run folders -> report.md and a self-contained report.html, laid out like the seed notebook:
a summary table (mean ± sd over seeds, 95% intervals), then a section per experiment with its
Val/Test lines and figures."""
from __future__ import annotations

import base64
import html
import math
import re
import shutil
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .. import __version__
from ..errors import BadInputError, ExistsError, LesionLabError, preview
from ..fileio import require_folder_or_absent, write_text
from ..runs import Run, find_runs
from ..runs import format as run_format
from ..runs.kinds import scoring_kind_names
from ..runs.records import AuditBlock

MARKER = "<!-- lesionlab report -->"
SUMMARY_METRICS = ("f1", "precision", "recall", "average_precision", "pauc_80", "roc_auc", "balanced_accuracy")
LABELS = {"f1": "F1", "precision": "precision", "recall": "recall", "average_precision": "AP",
          "pauc_80": "pAUC80", "roc_auc": "ROC AUC", "balanced_accuracy": "bal. acc.", "accuracy": "accuracy",
          "loss": "loss", "specificity": "specificity"}


def notebook_line(split: str, m: dict) -> str:
    """The seed notebook's result line, e.g.
    'Val Loss: 0.5680 | Acc: 83.33% | Precision: 0.198 | Recall: 0.820 | F1: 0.319'."""
    return (f"{split} Loss: {m['loss']:.4f} | Acc: {100 * m['accuracy']:.2f}% | Precision: {m['precision']:.3f} | "
            f"Recall: {m['recall']:.3f} | F1: {m['f1']:.3f}")


def group_runs(runs: list[Run]) -> "OrderedDict[str, list[Run]]":
    """Runs that differ only by seed form one experiment."""
    groups: OrderedDict[str, list[Run]] = OrderedDict()
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    for name, members in groups.items():
        members.sort(key=lambda r: r.seed)
    return groups


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summarise(runs: list[Run], metric: str, split: str = "test") -> dict:
    """One metric over the seeds of an experiment: mean, sd, n, the seeds' mean 95% interval (ci, and as
    lo / hi for the forest plot) and each seed's value; nan where a run lacks the metric."""
    values = np.array([r.side(split).get(metric, np.nan) for r in runs], dtype=float)
    cis = np.array([r.side(split).get("ci95", {}).get(metric, [np.nan, np.nan]) for r in runs], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan means of runs that lack the metric
        lo, hi = float(np.nanmean(cis[:, 0])), float(np.nanmean(cis[:, 1]))
        return {"mean": float(np.nanmean(values)), "sd": float(np.nanstd(values, ddof=1)) if len(values) > 1 else float("nan"),
                "n": len(values), "ci": [lo, hi], "lo": lo, "hi": hi, "seeds": values.tolist()}


def summary_cell(s: dict) -> str:
    if s["n"] > 1:
        return f"{_fmt(s['mean'])} ± {_fmt(s['sd'])}"
    return f"{_fmt(s['mean'])} [{_fmt(s['ci'][0])}, {_fmt(s['ci'][1])}]"


def summary_rows(groups: "OrderedDict[str, list[Run]]") -> tuple[list[str], list[list[str]]]:
    header = ["experiment", "model", "train draw (mal:ben)", "seeds"] + [f"test {LABELS[m]}" for m in SUMMARY_METRICS]
    rows = []
    for name, members in groups.items():
        first = members[0]
        draw = first.info.get("draw", {})
        row = [name, _model_name(first), f"{draw.get('malignant', '?')}:{draw.get('benign', '?')}",
               str(len(members))]
        row += [summary_cell(summarise(members, m)) for m in SUMMARY_METRICS]
        rows.append(row)
    return header, rows


# Characters that Markdown (CommonMark and GitHub's flavour) reads as markup: emphasis, code,
# links and images, raw HTML, table cells, headings, strikethrough, entities and maths. Names,
# paths and ids come from the user or from run folders someone else wrote, so they are escaped
# wherever report.md shows them; a line break would end the table or heading, so it is a space.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#~&!$])")


def md_escape(text: object) -> str:
    """`text` as literal Markdown text: every markup character backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", re.sub(r"[\r\n]+", " ", str(text)))


def md_code(text: object) -> str:
    """`text` as a Markdown code span, fenced with more backticks than it holds in a row."""
    text = re.sub(r"[\r\n]+", " ", str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_table(header: list[str], rows: list[list[str]], escape: bool = True) -> str:
    """A Markdown table. escape: every cell escaped, since experiment and model names come from run
    folders; the benchmarks, whose cells are their own numbers and names, pass False (only '|' escaped)."""
    esc = md_escape if escape else (lambda c: str(c).replace("|", "\\|"))
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def _model_name(run: Run) -> str:
    if run.kind == "tabular":
        fused = f" + image ({run.info.get('fusion')})" if run.info.get("image") else ""
        return f"{run.config.get('engine', '?')} on metadata{fused}"
    return run.config.get("model", "?")


def _tabular_details(run: Run, esc: Callable[[object], str] = str) -> list[str]:
    c, i = run.config, run.info
    f, folds = i.get("features", {}), i.get("folds")
    folds = folds if isinstance(folds, dict) else {}  # a tabular run's folds record
    oof = run.metrics.get("oof", {})
    columns = ", ".join(esc(x) for x in f.get("metadata", []))
    return [
        f"{esc(_model_name(run))}: {len(f.get('metadata', []))} metadata column(s) ({columns}), "
        f"{esc(f.get('n_inputs'))} model inputs ({len(f.get('recipe', []))} ISIC 2024 recipe features"
        f"{', patient statistics' if f.get('patient_context') else ''}); "
        f"dropped: {', '.join(esc(x) for x in f.get('dropped', {})) or 'none'}",
        f"{esc(folds.get('k'))} folds ({esc(folds.get('source'))}), rounds {esc(folds.get('best_iterations'))}, "
        f"negative ratio {esc(c.get('neg_ratio') or 'all')}, threshold {i.get('threshold'):.3g} "
        f"({esc(i.get('threshold_rule'))}), seed {esc(c.get('seed'))}",
        f"out of fold (train pool): ROC AUC {_fmt(oof.get('roc_auc'))}, pAUC80 {_fmt(oof.get('pauc_80'), 4)}, "
        f"AP {_fmt(oof.get('average_precision'))}; wall {i.get('wall_seconds', float('nan')):.0f} s",
    ]


def _run_details(run: Run, esc: Callable[[object], str] = str) -> list[str]:
    """Two lines about a run; `esc` escapes the values read from its files (md_escape for Markdown;
    the HTML escapes whole lines)."""
    if run.kind == "tabular":
        return _tabular_details(run, esc)
    c, i = run.config, run.info
    speed = i.get("speed", {})
    compute = (f", pure compute {speed['compute_img_s']:.1f} img/s (loop/compute {speed['loop_vs_compute']:.2f})"
               if speed.get("compute_img_s") else "")
    return [
        f"model {esc(c.get('model'))}, ratio {esc(c.get('ratio'))}, draw {esc(i['draw']['malignant'])} malignant / "
        f"{esc(i['draw']['benign'])} benign, lr {esc(c.get('lr'))}, {esc(c.get('epochs'))} epochs "
        f"(best on {esc(i.get('monitor'))}: epoch {esc(i.get('best_epoch'))}), threshold {i.get('threshold'):.3g} "
        f"({esc(i.get('threshold_rule'))}), seed {esc(c.get('seed'))}",
        f"training {speed.get('train_img_s', float('nan')):.1f} img/s{compute} on "
        f"{esc((i.get('runtime') or {}).get('device_name', '?'))}; wall {i.get('wall_seconds', float('nan')):.0f} s",
        f"test-time augmentation: {esc(c.get('tta', 'none'))}",
    ]


def _unit_text(m: dict) -> str:
    unit = m.get("ci95_unit", "image")
    return "images" if unit == "image" else f"whole {unit} groups"


def _ci_line(m: dict, label: str = "Test") -> str:
    ci = m.get("ci95", {})
    parts = [f"{LABELS[k]} {_fmt(m[k])} [{_fmt(ci[k][0])}, {_fmt(ci[k][1])}]" for k in SUMMARY_METRICS if k in ci]
    return f"{label} 95% bootstrap intervals (resampling {_unit_text(m)}): " + "; ".join(parts)


def _cv_parts(run: Run) -> tuple[list[str], list[list[str]], list[str]]:
    """A cv folder: (lines, per-fold table rows, table header)."""
    import json

    i, c, m = run.info, run.config, run.metrics
    summary = json.loads((run.path / run_format.CV_SUMMARY).read_text())
    lines = [
        f"{i['folds']}-fold grouped cross-validation x {i['repeats']} repeat(s) over the split's train pool, grouped by "
        f"{i['group_rule']}, fold seed {i['fold_seed']} (fold hash {i['fold_sha256'][:12]}); model {c.get('model')}, "
        f"ratio {c.get('ratio')}, {c.get('epochs')} epochs, TTA {c.get('tta', 'none')}",
        f"inner validation of each fold: {i.get('inner_validation', '?')}",
        f"out-of-fold: {m['oof']['n_malignant']} malignant / {m['oof']['n_benign']} benign images; thresholded metrics use "
        "each fold's own threshold",
        _ci_line(m["oof"], "Out-of-fold"),
        f"fold ensemble ({len(i.get('members', []))} folds, mean of probabilities; threshold {i['threshold']:.3g} "
        f"by rule {i['threshold_rule']} on the split's validation set)",
        _ci_line(m["val"], "Fold ensemble, val"),
        _ci_line(m["test"], "Fold ensemble, test"),
    ]
    header = ["repeat", "fold", "held out (mal/ben)", "inner val", "draw", "best epoch", "threshold",
              "OOF ROC AUC", "OOF AP", "OOF pAUC80", "OOF F1"]
    rows = [[str(f["repeat"]), str(f["fold"]), f"{f['held_out']['malignant']}/{f['held_out']['benign']}",
             f"{f['inner_val']['malignant']}/{f['inner_val']['benign']}",
             f"{f['draw']['malignant']}:{f['draw']['benign']}", str(f["best_epoch"]), f"{f['threshold']:.3g}",
             _fmt(f["oof"]["roc_auc"]), _fmt(f["oof"]["average_precision"]), _fmt(f["oof"]["pauc_80"], 4),
             _fmt(f["oof"]["f1"])] for f in summary["per_fold"]]
    return lines, rows, header


def _ensemble_lines(run: Run) -> list[str]:
    i, m = run.info, run.metrics
    members = ", ".join(f"{e['name']} ({e.get('model')}" + (f", fold of {Path(e['cv']).name}" if e.get("cv") else "") + ")"
                        for e in i["members"])
    tta = i.get("tta_override") or "each member's own (" + ", ".join(sorted({e["preprocessing"]["tta"] for e in i["members"]})) + ")"
    return [f"{i['n_members']} members, mean of {i['mean']}s, test-time augmentation {tta}; threshold {i['threshold']:.3g} "
            f"({i['threshold_rule']}, chosen on val)", f"members: {members}",
            _ci_line(m["val"], "Val"), _ci_line(m["test"], "Test")]


def comparison_rows(groups: "OrderedDict[str, list[Run]]", baseline: str, n_boot: int = 2000
                    ) -> tuple[list[str], list[list[str]]]:
    """Each experiment against `baseline`: B - A with its paired 95% interval, per metric."""
    from .compare import COMPARE_METRICS, compare_runs, difference_cell

    if baseline not in groups:
        from ..errors import closest

        raise BadInputError(f"--baseline '{baseline}' is not an experiment here{closest(baseline, groups)}; "
                            f"experiments: {', '.join(groups)}")
    header = ["experiment (B)", "seeds", "images"] + [f"{LABELS[m]}: B - A [95% CI]" for m in COMPARE_METRICS]
    rows = []
    for name, members in groups.items():
        if name == baseline:
            continue
        try:
            full = compare_runs(groups[baseline], members, n_boot=n_boot)
        except BadInputError as e:  # e.g. cross-validations on other folds: say so instead of failing the report
            rows.append([name, str(len(members)), "not comparable"] + [str(e)[:200]] + [""] * (len(COMPARE_METRICS) - 1))
            continue
        res = full["metrics"]
        where = "out-of-fold" if full.get("on") == "oof" else "test"
        cells = [f"{where} ({'per image' if full.get('unit', 'image') == 'image' else full['unit']})"]
        cells += [difference_cell(res[m]) for m in COMPARE_METRICS]
        rows.append([name, str(len(members))] + cells)
    return header, rows


def _unusable(run: Run) -> str | None:
    """Why a run that loaded cannot be reported (its metrics lack a side), or None."""
    for side in ("val", "test"):
        if not isinstance(run.metrics.get(side), dict):
            return f"{run.path / run_format.METRICS}: no '{side}' metrics; the run folder is damaged"
    return None


def build_report(runs_dir: str | Path, out: str | Path, title: str = "lesionlab report",
                 baseline: str | None = None, n_boot: int = 2000,
                 skipped: list[tuple[Path, str]] | None = None) -> Path:
    """The report of every run under `runs_dir`. A damaged run folder is left out and named in the
    report (and added to `skipped` as (folder, reason)), so that one damaged run never hides the rest."""
    damaged: list[tuple[Path, str]] = []
    runs = find_runs(runs_dir, scoring_kind_names(), damaged=damaged)
    for run in list(runs):
        problem = _unusable(run)
        if problem:
            damaged.append((run.path, problem))
            runs.remove(run)
    if skipped is not None:
        skipped.extend(damaged)
    if not runs:
        raise BadInputError(f"{runs_dir}: holds no complete run folders"
                            + (f" that can be read ({len(damaged)} damaged: {preview(str(p) for p, _ in damaged)})"
                               if damaged else ""))
    out = Path(out)
    require_folder_or_absent(out)
    md_path = out / "report.md"
    ours = md_path.exists() and md_path.read_text(errors="replace").startswith(MARKER)
    if out.exists() and any(out.iterdir()) and not ours:
        raise ExistsError(f"{out}: holds files that lesionlab did not write; choose a new or empty folder for the report")
    groups = group_runs(runs)
    figures_dir = out / "figures"
    if figures_dir.exists():
        shutil.rmtree(figures_dir)  # ours (report.md carries the marker): rebuilt from the runs
    figures_dir.mkdir(parents=True)

    header, rows = summary_rows(groups)
    splits = sorted({str(r.info.get("split_sha256", "?"))[:12] for r in runs})

    def intro(folder: str, hashes: str) -> str:
        return (f"{len(runs)} run(s) in {len(groups)} experiment(s) from {folder}; split file hash(es) "
                f"{hashes}; generated {time.strftime('%Y-%m-%d %H:%M')} by lesionlab {__version__}.")
    note = ("Cells give mean ± sd over seeds where an experiment has several, else the value with its 95% "
            "stratified bootstrap interval over the test images (whole patients or lesions resampled where the images "
            "have them). Thresholded metrics (F1, precision, recall) use each run's threshold, chosen on validation only. "
            "For a cross-validation the test cells are its fold ensemble's; its out-of-fold metrics are in its section.")
    md = [MARKER, f"# {md_escape(title)}", "", intro(md_code(runs_dir), md_escape(", ".join(splits))), ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro(str(runs_dir), ', '.join(splits)))}</p>"]
    if damaged:
        head = f"{len(damaged)} damaged run folder(s) skipped:"
        md += [head, ""] + [f"- {md_code(p)}: {md_escape(reason)}" for p, reason in damaged] + [""]
        body += [f"<p>{html.escape(head)}</p><ul>"
                 + "".join(f"<li><code>{html.escape(str(p))}</code>: {html.escape(reason)}</li>" for p, reason in damaged)
                 + "</ul>"]
    _add_overview(md, body, groups, baseline, figures_dir)
    md += ["## Summary", "", note, "", md_table(header, rows), ""]
    body += ["<h2 id='summary-title'>Summary</h2>", f"<p>{html.escape(note)}</p>", _html_table(header, rows, "summary")]
    if baseline:
        c_header, c_rows = comparison_rows(groups, baseline, n_boot)
        c_note = ("A = {}. Paired stratified bootstrap over the same test images, or the same out-of-fold "
                  "images when both are cross-validations ({} resamples, of whole groups where the images have "
                  "them); with several seeds each side's value is its seed mean. ↑/↓: the interval lies above/below "
                  "zero; otherwise it includes zero and the difference is not clear.")
        md += [f"## Paired comparison against {md_escape(baseline)}", "", c_note.format(md_escape(baseline), n_boot),
               "", md_table(c_header, c_rows), ""]
        body += [f"<h2>Paired comparison against {html.escape(baseline)}</h2>",
                 f"<p>{html.escape(c_note.format(baseline, n_boot))}</p>",
                 _html_table(c_header, c_rows)]
    _add_calibration(md, body, groups, figures_dir)
    _add_audit(md, body, groups)
    for name, members in groups.items():
        md += [f"## {md_escape(name)}", ""]
        body.append(f"<h2>{html.escape(name)}</h2>")
        for run in members:
            if run.kind in ("cv", "ensemble"):
                _other_kind_section(run, name, md, body, figures_dir)
                continue
            lines = [notebook_line("Val", run.metrics["val"]), notebook_line("Test", run.metrics["test"])]
            details = _run_details(run) + [_ci_line(run.metrics["test"])] + _audit_lines(run)
            md_details = (_run_details(run, md_escape) + [_ci_line(run.metrics["test"])]  # numbers only
                          + [md_escape(line) for line in _audit_lines(run)])
            md += [f"### seed {run.seed} ({md_code(run.path)})", "", "\\\n".join(lines), ""]  # numbers only
            md += [f"- {d}" for d in md_details] + [""]
            body += [f"<h3>seed {run.seed} <small>({html.escape(str(run.path))})</small></h3>",
                     "<pre>" + html.escape("\n".join(lines)) + "</pre>",
                     "<ul>" + "".join(f"<li>{html.escape(d)}</li>" for d in details) + "</ul>", "<div class='figs'>"]
            for fname, caption, src in _figures_of(run):
                dest = figures_dir / f"{_slug(name)}_seed{run.seed}_{fname}"
                shutil.copyfile(src, dest)
                md.append(f"![{caption}](figures/{dest.name})")
                body.append(_html_figure(src, caption, wide=fname in _WIDE_FIGURES))
            md.append("")
            body.append("</div>")
    write_text(md_path, "\n".join(md) + "\n")
    write_text(out / "report.html", _render_html(title, "\n".join(body)))
    return out


def _other_kind_section(run: Run, name: str, md: list[str], body: list[str], figures_dir: Path) -> None:
    """A cv folder (OOF metrics, per-fold table, OOF curves) or an ensemble."""
    if run.kind == "cv":
        title = "cross-validation"
        lines, rows, header = _cv_parts(run)
    else:
        title = "ensemble"
        lines, rows, header = _ensemble_lines(run), [], []
    keys = run.declared.report_figures
    lines = lines + _audit_lines(run)
    md += [f"### {title} ({md_code(run.path)})", ""] + [f"- {md_escape(line)}" for line in lines] + [""]
    body += [f"<h3>{title} <small>({html.escape(str(run.path))})</small></h3>",
             "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"]
    if rows:
        md += ["Per fold:", "", md_table(header, rows), ""]
        body += ["<p>Per fold:</p>", _html_table(header, rows)]
    body.append("<div class='figs'>")
    for key in keys:
        src = run.figure(key)
        if src is None:
            continue
        fname, caption = run_format.FIGURES[key]
        dest = figures_dir / f"{_slug(name)}_{run.kind}_{fname}"
        shutil.copyfile(src, dest)
        md.append(f"![{caption}](figures/{dest.name})")
        body.append(_html_figure(src, caption))
    for fname, caption, src in _audit_figures(run):
        dest = figures_dir / f"{_slug(name)}_{run.kind}_{fname}"
        shutil.copyfile(src, dest)
        md.append(f"![{caption}](figures/{dest.name})")
        body.append(_html_figure(src, caption, wide=True))
    md.append("")
    body.append("</div>")


_WIDE_FIGURES = {run_format.FIGURES[k][0] for k in ("curves", "cam_gallery", "audit_shares", "audit_gallery")}
OVERVIEW_METRICS = (("pauc_80", "pAUC80"), ("roc_auc", "ROC AUC"), ("average_precision", "AP"), ("f1", "F1"),
                    ("ece", "ECE (lower is better)"))


def _html_figure(src: Path, caption: str, wide: bool = False) -> str:
    data = base64.b64encode(src.read_bytes()).decode()
    cls = " class='wide'" if wide else ""
    return (f"<figure{cls}><img src='data:image/png;base64,{data}' "
            f"alt='{html.escape(caption, quote=True)}'><figcaption>{html.escape(caption)}</figcaption></figure>")


def _add_overview(md: list, body: list, groups: "OrderedDict[str, list[Run]]", baseline: str | None,
                  figures_dir: Path) -> None:
    """The forest plot at the top: each experiment's test metrics with their intervals, against the baseline."""
    from .. import plots

    ref = baseline if baseline is not None and baseline in groups else next(iter(groups))
    rows: list[dict[str, Any]] = [{"name": name, **{k: summarise(members, k) for k, _ in OVERVIEW_METRICS}}
                                  for name, members in groups.items()]
    metrics = [(k, label) for k, label in OVERVIEW_METRICS if any(np.isfinite(r[k]["mean"]) for r in rows)]
    path = figures_dir / "experiments_forest.png"
    plots.forest(rows, metrics, path, ref, "test metrics with 95% intervals; band: " + ref)
    caption = (f"Experiments compared on the test set: each square is the metric (mean over seeds), its line the 95% "
               f"bootstrap interval (mean over seeds), grey dots single seeds; the shaded band and dashed line are the "
               f"baseline ({ref}).")
    md += ["## Experiments compared", "", f"![experiments compared](figures/{path.name})", "", md_escape(caption), ""]
    body += ["<h2>Experiments compared</h2>", _html_figure(path, caption, wide=True)]


def _add_calibration(md: list, body: list, groups: "OrderedDict[str, list[Run]]", figures_dir: Path) -> None:
    """Do the probabilities mean what they say? ECE and Brier per experiment, one reliability figure."""
    from .. import plots

    header = ["experiment", "calibration", "test ECE", "test Brier", "val ECE", "val Brier"]
    rows, curves = [], {}
    for name, members in groups.items():
        if not any("ece" in r.metrics.get("test", {}) for r in members):
            continue  # runs written before calibration was measured
        cal = members[0].config.get("calibrate", "none")
        if members[0].config.get("prevalence"):
            cal += f", prior shift to {members[0].config['prevalence']}"
        cells = []
        for split, key in (("test", "ece"), ("test", "brier"), ("val", "ece"), ("val", "brier")):
            cells.append(summary_cell(summarise(members, key, split)))
        rows.append([name, cal] + cells)
        try:
            preds = [r.predictions("test") for r in members]
            curves[name] = (np.concatenate([p["label"].to_numpy() for p in preds]),
                            np.concatenate([p["prob"].to_numpy() for p in preds]))
        except LesionLabError:
            pass
    if not rows:
        return
    note = ("Expected calibration error (15 equal-width bins) and Brier score of the reported probabilities "
            "(after --calibrate, fitted on validation only, and the --prevalence prior shift where given). "
            "A model trained on a 1:K draw and not calibrated reports probabilities at the draw's prevalence, "
            "not at the test set's, and its ECE says so.")
    md += ["## Calibration", "", note, "", md_table(header, rows), ""]
    body += ["<h2>Calibration</h2>", f"<p>{html.escape(note)}</p>", _html_table(header, rows)]
    if curves:
        path = figures_dir / "calibration_test.png"
        plots.reliability_diagram(curves, path, "test set reliability (seeds pooled)")
        md += [f"![test set reliability](figures/{path.name})", ""]
        body.append("<div class='figs'>" + _html_figure(path, "test set reliability, per experiment (seeds pooled)")
                    + "</div>")


def _render_html(title: str, body: str) -> str:
    """The page from its jinja2 template (package data): one file, styles inline, images as data URIs."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    from markupsafe import Markup

    env = Environment(loader=PackageLoader("lesionlab", "templates"), autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("report.html.j2").render(title=title, body=Markup(body), version=__version__)


def _audit_lines(run: Run) -> list[str]:
    """The run's shortcut audit (metrics.json's audit block) in words, or why there is none."""
    from ..audit.summary import lines

    block = run.metrics.get("audit")
    if block:
        return ["Shortcut audit: " + line for line in lines(block)]
    error = (run.info.get("audit") or {}).get("error")
    if error:
        return [f"Shortcut audit: left out ({error})"]
    return ["Shortcut audit: not audited (`lesionlab audit RUN --out AUDIT_DIR` records it)"] if run.kind != "tabular" else []


def _audit_figures(run: Run) -> list[tuple[str, str, Path]]:
    """The figures the run's audit block names (in the run folder, or in the AUDIT_DIR of a later audit)."""
    block = run.metrics.get("audit") or {}
    found = []
    for key, path in (block.get("figures") or {}).items():
        if not path:
            continue
        src = Path(path) if Path(path).is_absolute() else run.path / path
        if src.exists():
            found.append((run_format.FIGURES[f"audit_{key}"][0], run_format.FIGURES[f"audit_{key}"][1], src))
    return found


def _dig(d: Mapping[str, Any] | None, *keys: str) -> Any:
    """d[k1][k2]..., None where a key is missing."""
    for k in keys:
        d = d.get(k) if isinstance(d, Mapping) else None
    return d


def _seed_cell(blocks: list[AuditBlock], path: tuple, sign: bool = False) -> str:
    """A number of the audit blocks (path into each, ending at a dict with `mean`/`drop` and `ci95`, or a number):
    mean ± sd over several runs, else the value with its 95% interval."""
    fmt = (lambda x: f"{x:+.3f}") if sign else (lambda x: f"{x:.3f}")
    found = [_dig(b, *path) for b in blocks]
    values = [v.get("mean", v.get("drop")) if isinstance(v, dict) else v for v in found]
    numbers = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not numbers:
        return "n/a"
    if len(numbers) > 1:
        return f"{fmt(float(np.mean(numbers)))} ± {float(np.std(numbers, ddof=1)):.3f}"
    ci = found[0].get("ci95") if isinstance(found[0], dict) else None
    return fmt(numbers[0]) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def audit_rows(groups: "OrderedDict[str, list[Run]]") -> tuple[list[str], list[list[str]]]:
    """One row per experiment: where its CAM's mass lies, what hiding the frame or the skin around the lesion
    does, how often the lesion mask fell back, and ROC AUC with and without dark corners."""
    header = ["experiment", "audited runs", "CAM mass on the lesion, flagged images (uniform map)",
              "CAM mass in the outer frame (uniform)", "ROC AUC drop, frame hidden", "ROC AUC drop, off-lesion hidden",
              "masks fallen back", "ROC AUC with / without dark corners"]
    rows = []
    for name, members in groups.items():
        if members[0].kind == "tabular":
            continue  # metadata models have no image to audit
        blocks = [r.metrics["audit"] for r in members if r.metrics.get("audit")]
        row = [name, f"{len(blocks)} of {len(members)}"]
        if not blocks:
            rows.append(row + ["not audited (`lesionlab audit RUN --out AUDIT_DIR` records it)"] + [""] * (len(header) - 3))
            continue
        if all("skipped" not in b["cam"] for b in blocks):
            row += [f"{_seed_cell(blocks, ('cam', 'on_lesion'))} ({_seed_cell(blocks, ('cam', 'area', 'lesion'))})",
                    f"{_seed_cell(blocks, ('cam', 'frame'))} ({_seed_cell(blocks, ('cam', 'area', 'frame'))})"]
        else:
            row += ["skipped (no CAM layer)", "skipped"]
        row += [_seed_cell(blocks, ("occlusion", "frame", "roc_auc"), sign=True),
                _seed_cell(blocks, ("occlusion", "off_lesion", "roc_auc"), sign=True),
                " / ".join(f"{b['mask_fallback']['n']} of {b['n']}" for b in blocks),
                f"{_seed_cell(blocks, ('artifacts', 'dark_corners', 'with', 'roc_auc'))} / "
                f"{_seed_cell(blocks, ('artifacts', 'dark_corners', 'without', 'roc_auc'))} "
                f"({' / '.join(str(b['artifacts']['dark_corners']['n_with']) for b in blocks)} with)"]
        rows.append(row)
    return header, rows


def _add_audit(md: list, body: list, groups: "OrderedDict[str, list[Run]]") -> None:
    """Is each model looking at the lesion? The shortcut audit of the test sets (lesionlab audit)."""
    header, rows = audit_rows(groups)
    if not rows:
        return
    note = ("Shortcut audit of each run's test set, no annotation needed (lesionlab audit): the share of the Grad-CAM's "
            "mass on a lesion mask found by Otsu's threshold (its central dark component) and in the outer 15% frame, over "
            "the images the run flags malignant, beside what a uniform map would give; and how much ROC AUC drops when the "
            "outer frame, or everything off the lesion, is painted in the image's own skin colour (a model that looks at "
            "the lesion barely moves). Several seeds: mean ± sd; one run: its 95% interval. Per-run details, artifact "
            "strata and galleries are in each run's section.")
    md += ["## Shortcut audit", "", note, "", md_table(header, rows), ""]
    body += ["<h2>Shortcut audit</h2>", f"<p>{html.escape(note)}</p>", _html_table(header, rows)]


def _figures_of(run: Run) -> list[tuple[str, str, Path]]:
    """(file name, caption, path) of a run's figures (its shortcut audit's too), and of its synthetic images'
    check when it used some."""
    found = [(run_format.FIGURES[k][0], run_format.FIGURES[k][1], path)
             for k in run.declared.report_figures if (path := run.figure(k)) is not None] + _audit_figures(run)
    syn = run.info.get("synthetic") or {}
    store_json = Path(syn.get("data", "")) / "store.json"
    if syn and store_json.exists():
        import json

        source = Path(json.loads(store_json.read_text())["source"]["location"]).parent
        grid = source / "check" / "figures" / "samples_vs_real.png"
        if grid.exists():
            found.append(("synthetic_samples_vs_real.png", "synthetic images (top rows) and real ones", grid))
    return found


def _html_cell(text: str) -> str:
    """A value with its interval ('0.312 [0.201, 0.420]', '+0.01 [-0.02, +0.03] ↑') on two lines, so
    that wide tables fit the page."""
    m = re.fullmatch(r"(\S+(?: ± \S+)?) (\[.*)", text)
    if not m:
        return html.escape(text)
    return f"<span class='v'>{html.escape(m.group(1))}</span><span class='ci'>{html.escape(m.group(2))}</span>"


def _html_table(header: list[str], rows: list[list[str]], table_id: str = "") -> str:
    head = "".join(f"<th scope='col'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    ident = f" id='{table_id}'" if table_id else ""
    return f"<div class='table-wrap'><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
