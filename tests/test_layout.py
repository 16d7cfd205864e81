"""The package's import graph: no cycle between its parts. Read statically (every `import`, the
lazy ones inside functions too), so a cycle that only closes at run time is found as well."""
import ast
from pathlib import Path

import lesionlab

PACKAGE = Path(lesionlab.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _imported(module: str, is_pkg: bool, node: ast.AST, mods: dict) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        if node.level:
            base = base[:len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    found = set()
    for name in names:
        while name and name not in mods:  # `from x import y`: y is a module or a name in x
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for module, (path, is_pkg) in mods.items():
        graph[module] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _imported(module, is_pkg, node, mods)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _part(module: str) -> str:
    """The part of the package a module belongs to: its subpackage, or itself at the top."""
    return module.split(".")[1] if module.count(".") else module


def test_no_import_cycle_between_parts_of_the_package():
    # a package and its own modules import each other by nature (its __init__ re-exports them); a cycle
    # that spans two parts (runs/ and tabular/, say) means the core knows a package built on it
    spanning = [c for c in cycles(import_graph()) if len({_part(m) for m in c}) > 1]
    assert not spanning, spanning


def test_runs_imports_no_package_built_on_it():
    graph = import_graph()
    core = {m for m in graph if m.startswith("lesionlab.runs")}
    above = {"lesionlab.tabular", "lesionlab.audit", "lesionlab.synth"}
    wrong = sorted((m, d) for m in core for d in graph[m] if any(d == a or d.startswith(a + ".") for a in above))
    assert not wrong, wrong


SHARED = ("data", "models", "engine", "runs", "errors", "choices", "fileio", "metrics", "calibration", "plots", "config")


def test_shared_parts_import_no_command_workflow():
    # workflows/ (one module per command) and cli.py sit on top: the shared parts below them never reach up
    graph = import_graph()
    shared = {m for m in graph if _part(m) in SHARED}
    wrong = sorted((m, d) for m in shared for d in graph[m]
                   if d == "lesionlab.cli" or d == "lesionlab.workflows" or d.startswith("lesionlab.workflows."))
    assert not wrong, wrong


def test_no_command_workflow_left_at_the_top_of_the_package():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    workflows = {p.stem for p in (PACKAGE / "workflows").glob("*.py")} - {"__init__"}
    assert not top & workflows, top & workflows


def test_tests_mirror_the_package():
    # tests/<part>/test_<module>.py: every folder of tests names a part of the package
    tests = Path(__file__).parent
    folders = {p.parent.name for p in tests.glob("*/test_*.py")}
    assert folders and all((PACKAGE / f).is_dir() for f in folders), sorted(f for f in folders if not (PACKAGE / f).is_dir())


def test_no_command_imports_the_benchmarks_helpers():
    # lesionlab.benchmarking serves the checkout's benchmarks/ scripts; a command that imported it would make
    # the product depend on ../shared and docs/results.md
    graph = import_graph()
    wrong = sorted((m, d) for m, deps in graph.items() if not m.startswith("lesionlab.benchmarking")
                   for d in deps if d.startswith("lesionlab.benchmarking"))
    assert not wrong, wrong
