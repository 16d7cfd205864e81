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
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .errors import BadInputError, ExistsError
from .fileio import require_folder_or_absent, write_text
from .runs import Run, find_runs
from .runs import format as run_format

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


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def summarise(runs: list[Run], metric: str, split: str = "test") -> dict:
    values = np.array([r.metrics[split][metric] for r in runs], dtype=float)
    cis = np.array([r.metrics[split].get("ci95", {}).get(metric, [np.nan, np.nan]) for r in runs], dtype=float)
    return {"mean": float(np.nanmean(values)), "sd": float(np.nanstd(values, ddof=1)) if len(values) > 1 else float("nan"),
            "n": len(values), "ci": [float(np.nanmean(cis[:, 0])), float(np.nanmean(cis[:, 1]))]}


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


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    """Every cell escaped: experiment and model names come from run folders."""
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
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
    f, folds = i.get("features", {}), i.get("folds", {})
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
        f"{esc(i.get('runtime', {}).get('device_name', '?'))}; wall {i.get('wall_seconds', float('nan')):.0f} s",
    ]


def _ci_line(m: dict) -> str:
    ci = m.get("ci95", {})
    parts = [f"{LABELS[k]} {_fmt(m[k])} [{_fmt(ci[k][0])}, {_fmt(ci[k][1])}]" for k in SUMMARY_METRICS if k in ci]
    return "Test 95% bootstrap intervals: " + "; ".join(parts)


def comparison_rows(groups: "OrderedDict[str, list[Run]]", baseline: str, n_boot: int = 2000
                    ) -> tuple[list[str], list[list[str]]]:
    """Each experiment against `baseline`: B - A with its paired 95% interval, per metric."""
    from .compare import COMPARE_METRICS, compare_runs

    if baseline not in groups:
        from .errors import closest

        raise BadInputError(f"--baseline '{baseline}' is not an experiment here{closest(baseline, groups)}; "
                            f"experiments: {', '.join(groups)}")
    header = ["experiment (B)", "seeds"] + [f"{LABELS[m]}: B - A [95% CI]" for m in COMPARE_METRICS]
    rows = []
    for name, members in groups.items():
        if name == baseline:
            continue
        res = compare_runs(groups[baseline], members, n_boot=n_boot)["metrics"]
        cells = []
        for m in COMPARE_METRICS:
            d = res[m]
            mark = " ↑" if d["lo"] > 0 else (" ↓" if d["hi"] < 0 else "")
            cells.append(f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{mark}")
        rows.append([name, str(len(members))] + cells)
    return header, rows


def build_report(runs_dir: str | Path, out: str | Path, title: str = "lesionlab report",
                 baseline: str | None = None, n_boot: int = 2000) -> Path:
    runs = find_runs(runs_dir, kinds=("train", "tabular"))
    if not runs:
        raise BadInputError(f"{runs_dir}: holds no complete run folders")
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
            "stratified bootstrap interval over the test images. Thresholded metrics (F1, precision, recall) use each "
            "run's threshold, chosen on validation only.")
    md = [MARKER, f"# {md_escape(title)}", "", intro(md_code(runs_dir), md_escape(", ".join(splits))), "",
          "## Summary", "", note, "", _md_table(header, rows), ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro(str(runs_dir), ', '.join(splits)))}</p>",
            "<h2>Summary</h2>",
            f"<p>{html.escape(note)}</p>", _html_table(header, rows)]
    if baseline:
        c_header, c_rows = comparison_rows(groups, baseline, n_boot)
        c_note = ("A = {}. Paired stratified bootstrap over the same test images ({} resamples); "
                  "with several seeds each side's value is its seed mean. ↑/↓: the interval lies above/below "
                  "zero; otherwise it includes zero and the difference is not clear.")
        md += [f"## Paired comparison against {md_escape(baseline)}", "", c_note.format(md_escape(baseline), n_boot),
               "", _md_table(c_header, c_rows), ""]
        body += [f"<h2>Paired comparison against {html.escape(baseline)}</h2>",
                 f"<p>{html.escape(c_note.format(baseline, n_boot))}</p>",
                 _html_table(c_header, c_rows)]
    for name, members in groups.items():
        md += [f"## {md_escape(name)}", ""]
        body.append(f"<h2>{html.escape(name)}</h2>")
        for run in members:
            lines = [notebook_line("Val", run.metrics["val"]), notebook_line("Test", run.metrics["test"])]
            details = _run_details(run) + [_ci_line(run.metrics["test"])]
            md_details = _run_details(run, md_escape) + [_ci_line(run.metrics["test"])]  # the last: numbers only
            md += [f"### seed {run.seed} ({md_code(run.path)})", "", "\\\n".join(lines), ""]  # numbers only
            md += [f"- {d}" for d in md_details] + [""]
            body += [f"<h3>seed {run.seed} <small>({html.escape(str(run.path))})</small></h3>",
                     "<pre>" + html.escape("\n".join(lines)) + "</pre>",
                     "<ul>" + "".join(f"<li>{html.escape(d)}</li>" for d in details) + "</ul>", "<div class='figs'>"]
            for fname, caption, src in _figures_of(run):
                dest = figures_dir / f"{_slug(name)}_seed{run.seed}_{fname}"
                shutil.copyfile(src, dest)
                md.append(f"![{caption}](figures/{dest.name})")
                data = base64.b64encode(src.read_bytes()).decode()
                body.append(f"<figure><img src='data:image/png;base64,{data}' alt='{caption}'>"
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # alt: our own caption
            md.append("")
            body.append("</div>")
    write_text(md_path, "\n".join(md) + "\n")
    write_text(out / "report.html", _HTML.format(title=html.escape(title), body="\n".join(body)))
    return out


def _figures_of(run: Run) -> list[tuple[str, str, Path]]:
    """(file name, caption, path) of a run's figures, and of its synthetic images' check when it used some."""
    found = [(run_format.FIGURES[k][0], run_format.FIGURES[k][1], run.figure(k))
             for k in run_format.REPORT_FIGURES if run.figure(k)]
    syn = run.info.get("synthetic") or {}
    store_json = Path(syn.get("data", "")) / "store.json"
    if syn and store_json.exists():
        import json

        source = Path(json.loads(store_json.read_text())["source"]["location"]).parent
        grid = source / "check" / "figures" / "samples_vs_real.png"
        if grid.exists():
            found.append(("synthetic_samples_vs_real.png", "synthetic images (top rows) and real ones", grid))
    return found


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; white-space: nowrap; }}
th {{ background: #f3f3f3; }}
pre {{ background: #f7f7f7; padding: 0.6em; }}
.figs {{ display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }}
figure {{ margin: 0; }} figure img {{ max-height: 280px; }}
figcaption {{ font-size: 0.8em; color: #555; }}
</style></head><body>
{body}
</body></html>
"""
