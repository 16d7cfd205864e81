"""lesionlab.benchmarking: each benchmark rewrites only its own section of docs/results.md."""
from lesionlab.benchmarking import results


def test_update_section_rewrites_only_its_own_section(tmp_path, monkeypatch):
    doc = tmp_path / "results.md"
    monkeypatch.setattr(results, "RESULTS", doc)
    results.update_section("a", "## A\nfirst")
    results.update_section("b", "## B\nkept")
    results.update_section("a", "## A\nsecond ($1 and \\1 stay as written)")
    text = doc.read_text()
    assert text.startswith(results.HEADER)
    assert "first" not in text and "second ($1 and \\1 stay as written)" in text
    assert text.count("<!-- BEGIN a -->") == 1 and "## B\nkept" in text
    assert text.index("BEGIN a") < text.index("BEGIN b")  # a section keeps its place when rewritten


def test_command_line_writes_what_differs_from_the_defaults():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="bench-out")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--gan-min", type=float, default=26.0)
    ap.add_argument("--print-only", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--tune-on", action="append", default=[])
    ap.add_argument("--recipe-set", action="append", default=[], type=lambda s: tuple(s.split("=", 1)))
    args = ap.parse_args(["--work", "/tmp/x", "--folds", "3", "--gan-min", "0", "--print-only", "--tune-on", "a", "--tune-on", "b",
                          "--recipe-set", "early_stop=none", "--recipe-set", "monitor=val_roc_auc"])
    assert results.command_line("transfer", args, ap) == (
        "python benchmarks/transfer.py --folds 3 --gan-min 0.0 --print-only --tune-on a --tune-on b "
        "--recipe-set early_stop=none --recipe-set monitor=val_roc_auc")
    assert results.command_line("transfer", ap.parse_args([]), ap, skip=()) == "python benchmarks/transfer.py"


def test_named_paths_keep_the_order_and_name_a_malformed_or_repeated_item():
    from pathlib import Path

    import pytest

    assert results.named_paths(["b=x/1", "a=y=2"], "--cv", "CV_DIR") == {"b": Path("x/1"), "a": Path("y=2")}
    assert list(results.named_paths(["b=1", "a=2"], "--cv", "CV_DIR")) == ["b", "a"]
    for bad in ("x", "=p", "n="):
        with pytest.raises(SystemExit, match=f"--cv {bad}: expected NAME=CV_DIR"):
            results.named_paths([bad], "--cv", "CV_DIR")
    with pytest.raises(SystemExit, match="--data a=q: the name 'a' is given twice"):
        results.named_paths(["a=p", "a=q"], "--data", "DATA_DIR")
