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
