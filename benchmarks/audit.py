"""Shortcut audit of trained runs: is each model looking at the lesion? (`lesionlab audit` on each run's test set)

    python benchmarks/audit.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--against NAME ...] [--work bench-out]
        [--n-boot 2000] [--record] [--device auto]

Each RUN_DIR (a train, cv or ensemble folder; e.g. the notebook baseline and configs/recommended.yaml on
HAM10000 and on ISIC 2024) is audited on its own test set: the audit its metrics.json records is used when it
was made with the same settings (every train run audits its test set), else one is made into WORK/audit/NAME,
where a complete one is reused, so an interrupted benchmark resumes. `--against NAME` (repeatable: one per
data set) pairs every other run of the same test set with that one (B - A of the CAM mass on the lesion and
of the ROC AUC drop with the frame hidden, on the same resampled images): the way to measure a lever that
should lower the off-lesion share. `--record` also records each new audit in its run's metrics.json (by
default the runs are left as they are). Nothing here chooses anything. Writes docs/results.md (section
"audit") with what the numbers say.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lesionlab.audit import AuditSettings
from lesionlab.audit.command import AUDIT_JSON, TABLE, audit_run
from lesionlab.audit.paired import paired_audit
from lesionlab.audit.summary import drop_text, paired_text
from lesionlab.benchmarking.results import ROOT, git_commit, machine, named_paths, shown, update_section
from lesionlab.runs import load_run, read_table
from lesionlab.workflows.report import md_table


def _same_settings(doc: dict, settings: AuditSettings) -> bool:
    s = doc.get("settings", {})
    return (s.get("n_boot"), s.get("frame"), s.get("method"), s.get("target_layer")) == (
        settings.n_boot, settings.frame, settings.method, settings.target_layer)


def audit_of(name: str, run_dir: Path, work: Path, settings: AuditSettings, record: bool, device: str) -> tuple[dict, Path]:
    """(the audit's block, its per-image table) for the run: the audit its metrics.json records when it was made
    with these settings on its test set (every train run makes one), else a complete one in WORK/audit/NAME, else
    a new one there."""
    run = load_run(run_dir)
    block = run.metrics.get("audit")
    if block and block.get("input", {}).get("kind") == "test" and _same_settings(block, settings) and block.get("table"):
        table = Path(block["table"]) if Path(block["table"]).is_absolute() else run.path / block["table"]
        if table.exists():
            print(f"{name}: using the audit recorded in {run.path / 'metrics.json'}", flush=True)
            return {**block, "run": str(run.path.resolve())}, table
    out = work / "audit" / name
    doc_path = out / AUDIT_JSON
    if doc_path.exists():
        doc = json.loads(doc_path.read_text())
        if doc.get("run") == str(run.path.resolve()) and _same_settings(doc, settings):
            print(f"{name}: reusing {out}", flush=True)
            return doc, out / TABLE
    started = time.time()
    audit_run(run_dir, None, out, settings=settings, record_in_run=record, overwrite=out.exists(), device=device)
    print(f"{name}: audited in {time.time() - started:.0f} s", flush=True)
    return json.loads(doc_path.read_text()), out / TABLE


def _ci(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("mean") is None:
        return "n/a"
    ci = d.get("ci95")
    return f"{d['mean']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _lift(doc: dict) -> float | None:
    cam = doc["cam"]
    if "skipped" in cam or not cam["area"]["lesion"]:
        return None
    return cam["on_lesion"]["mean"] / cam["area"]["lesion"]


def row(name: str, doc: dict) -> list[str]:
    cam, occ = doc["cam"], doc["occlusion"]
    run = load_run(doc["run"])
    data = Path(doc["input"].get("data", "?")).name
    auc = (occ.get("frame") or occ["off_lesion"]).get("roc_auc", {})
    on = "skipped (no CAM layer)" if "skipped" in cam else f"{_ci(cam['on_lesion'])} ({cam['area']['lesion']:.3f})"
    frame = "n/a" if "skipped" in cam or not cam.get("frame") else f"{_ci(cam['frame'])} ({cam['area']['frame']:.3f})"
    art = doc["artifacts"]
    corners = art["dark_corners"]
    return [name, data, str(run.config.get("model", run.kind)), f"{doc['n']} ({doc.get('n_malignant', '?')})",
            f"{auc.get('original', float('nan')):.3f}", on, frame, drop_text(doc, "frame"), drop_text(doc, "off_lesion"),
            f"{doc['mask_fallback']['n']}", " / ".join(str(art[k]["n_with"]) for k in ("dark_corners", "border_lines", "frame")),
            f"{_stratum_auc(corners['with'])} / {_stratum_auc(corners['without'])}"]


def _stratum_auc(s: dict) -> str:
    return _ci({"mean": s.get("roc_auc"), "ci95": (s.get("ci95") or {}).get("roc_auc")}) if s.get("n") else "n/a"


def reading(name: str, doc: dict) -> str:
    """What one audit says, in a sentence or two (thresholds of the wording are stated in the text)."""
    parts = []
    lift = _lift(doc)
    if lift is None:
        parts.append("no CAM (its model has no known target layer)")
    else:
        on = doc["cam"]["on_lesion"]
        where = ("looks at the lesion" if lift >= 1.5 else
                 "looks at the lesion little more than a uniform map would" if lift >= 1.2 else
                 "looks no more at the lesion than a uniform map")
        parts.append(f"{where}: {on['mean']:.0%} of the CAM mass of its {on['n']} flagged images lies on the lesion "
                     f"mask, {lift:.1f} times a uniform map's share")
    frame = (doc["occlusion"].get("frame") or {}).get("roc_auc")
    if frame and frame.get("ci95"):
        lo, hi = frame["ci95"]
        if lo > 0:
            parts.append(f"it leans on the image's frame: painting the outer 15% in skin colour costs ROC AUC "
                         f"{frame['drop']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        elif hi < 0:
            parts.append(f"hiding the frame raises its ROC AUC ({frame['drop']:+.3f} [{lo:+.3f}, {hi:+.3f}]): the frame "
                         "misleads it")
        else:
            parts.append(f"hiding the frame does not clearly change its ranking ({frame['drop']:+.3f} [{lo:+.3f}, {hi:+.3f}])")
    corners = doc["artifacts"]["dark_corners"]
    w, wo = corners["with"], corners["without"]
    if w.get("roc_auc") is not None and wo.get("roc_auc") is not None and w["n"] and wo["n"]:
        parts.append(f"ROC AUC {_stratum_auc(w)} on the {w['n']} images with dark corners against {_stratum_auc(wo)} "
                     "without")
    return f"- **{name}** " + "; ".join(parts) + "."


def institutions(docs: dict[str, dict]) -> list[str]:
    lines = []
    for name, doc in docs.items():
        for column, values in doc.get("strata", {}).items():
            rows = [[value, str(s["n"]), str(s.get("n_malignant", "?")), _stratum_auc(s),
                     _ci({"mean": s.get("recall"), "ci95": (s.get("ci95") or {}).get("recall")})]
                    for value, s in values.items()]
            lines += ["", f"{name}, by {column}:", "",
                      md_table([column, "test images", "malignant", "ROC AUC [95% CI]", "sensitivity [95% CI]"], rows, False)]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--against", action="append", default=[],
                    help="NAME of a run the others of its test set are paired with (repeatable: one per data set)")
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--record", action="store_true", help="record each audit in its run's metrics.json")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    runs = named_paths(args.runs, "run", "RUN_DIR")
    for name in args.against:
        if name not in runs:
            raise SystemExit(f"--against {name}: not one of the names given ({', '.join(runs)})")
    started = time.time()
    settings = AuditSettings(n_boot=args.n_boot)
    done = {name: audit_of(name, path, Path(args.work), settings, args.record, args.device) for name, path in runs.items()}
    docs = {name: doc for name, (doc, _) in done.items()}

    header = ["run", "data", "model", "test images (malignant)", "ROC AUC", "CAM mass on lesion, flagged [95% CI] (uniform)",
              "CAM mass in frame [95% CI] (uniform)", "ROC AUC drop, frame hidden", "ROC AUC drop, off-lesion hidden",
              "masks fallen back", "dark corners / lines / frame", "ROC AUC with / without dark corners"]
    command = "python benchmarks/audit.py " + " ".join(
        f"{n}={shown(p)}" for n, p in runs.items()) + "".join(
        f" --against {a}" for a in args.against) + (f" --n-boot {args.n_boot}" if args.n_boot != 2000 else "")
    lines = ["## Shortcut audit (`benchmarks/audit.py`)", "",
             f"Command: `{command}` (code {git_commit()}); machine: {machine()}; wall of this invocation "
             f"{(time.time() - started) / 60:.1f} min (audits reused from an earlier invocation cost nothing here).", "",
             "Each run's own test set, audited without annotation (`lesionlab audit`, Grad-CAM of the registry's layer): "
             "the share of the CAM's mass on a lesion mask (Otsu's threshold of the blurred luminance, its central dark "
             "component; see README) over the images the run flags malignant, and in the outer 15% frame, each beside "
             "what a uniform map would give; the change in ROC AUC when the frame, or everything off the lesion, is "
             "painted in the image's own skin colour; how often the mask fell back to the centre; and how many test images "
             f"show each artifact. Intervals: {args.n_boot} bootstrap resamples of whole lesions (or patients) where the "
             "data has them.", "", md_table(header, [row(n, d) for n, d in docs.items()], False)]
    lines += institutions(docs)
    if args.against:
        bases = {name: read_table(done[name][1]) for name in args.against}
        paired_rows = []
        for name, (doc, table) in done.items():
            if name in bases:
                continue
            b = read_table(table)
            found = next(((a, p) for a, base in bases.items() if (p := paired_audit(base, b, args.n_boot))), None)
            paired_rows.append([name, found[0], paired_text(found[1])] if found else
                               [name, "-", "no run given with --against has its test images (or a CAM): not paired"])
        lines += ["", "Paired on the same test images (B - A, whole groups resampled where the data has them):", "",
                  md_table(["B", "A", "B - A"], paired_rows, False)]
    lines += ["", "What it says (wording: *looks at the lesion* when the on-lesion share is at least 1.5 times a uniform "
              "map's; *leans on the frame* when the interval of the drop lies above zero). CAM shares compare models "
              "with comparable layers only: Grad-CAM of a late, coarse layer (upgraded_cnn's `features.14`, a timm "
              "backbone's last stage) and of simple_cnn's `relu1`, its only convolution, which maps little more than "
              "what each pixel looks like, are different measures; the occlusion drops compare any models.", ""]
    lines += [reading(n, d) for n, d in docs.items()]
    lines += ["", "A lever to lower the off-lesion share, measured the same way: train it beside the recipe and pass both "
              "here with `--against RECIPE` (paired on the same test images). The first to try is border masking in "
              "training: paint a random outer band (or everything outside a random centred circle, as a dermoscope's "
              "rim) in the image's own skin colour, together with the rotations and crops of `--augment heavy`; a model "
              "that cannot rely on the frame must look at the lesion, and this audit's frame drop and on-lesion share say "
              "whether it did."]
    update_section("audit", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
