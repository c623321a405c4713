"""The house rules (docs/architecture.md): the Ray/MLflow boundary, one file per method, the import layers."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_fedcore_tune_imports_ray_or_mlflow():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "fedcore").rglob("*.py")
                 if p.name != "tune.py" or p.parent.name != "fedcore"
                 if imported_roots(p) & {"ray", "mlflow"}]
    assert offenders == []
    assert "ray" in imported_roots(ROOT / "fedcore" / "tune.py")


def test_no_package_named_mlflow_at_the_root():
    assert not (ROOT / "mlflow" / "__init__.py").exists()


def test_one_file_per_method():
    from fedcore.methods import METHODS

    for name, cls in METHODS.items():
        assert Path(__import__(cls.__module__, fromlist=["x"]).__file__).stem == name


# --- fedcore's import graph (every import, those inside functions included) -----------------------
def fedcore_modules() -> dict[str, Path]:
    mods = {}
    for p in (ROOT / "fedcore").rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the fedcore modules it imports. Importing a.b.c runs a.b's __init__ first, so a
    module also depends on the packages above what it imports (those it is not itself inside)."""
    mods = fedcore_modules()

    def module_of(name: str) -> str | None:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in mods else None

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names)
        deps = set()
        for t in targets:
            if t.split(".")[0] != "fedcore" or (d := module_of(t)) is None:
                continue
            parts = d.split(".")
            deps.update(".".join(parts[:i]) for i in range(2, len(parts) + 1)
                        if not (mod + ".").startswith(".".join(parts[:i]) + "."))
        graph[mod] = deps - {mod, "fedcore"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle through each module that is on one (depth-first search)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_import_graph_finds_lazy_imports_and_packages_and_cycles():
    graph = import_graph()
    assert "fedcore.data.sources" in graph["fedcore.teacher"]  # imported inside a function only
    # teacher imports fedcore.data.tokenize, which runs fedcore/data/__init__.py first
    assert {"fedcore.data", "fedcore.data.tokenize"} <= graph["fedcore.teacher"]
    assert "fedcore.data" not in graph["fedcore.data.sources"]  # a module inside a package: no edge to it
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_fedcore_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_config_is_the_floor_and_resolving_it_one_step_above():
    """config.py imports no other part of fedcore (lazily neither); fedcore.resolve, which checks a
    config against the registries, is imported by the engine's assembly and its entry points only."""
    graph = import_graph()
    assert graph["fedcore.config"] == set()
    users = sorted(m for m, deps in graph.items() if "fedcore.resolve" in deps)
    assert users == ["fedcore.assembly", "fedcore.run", "fedcore.tune"], users


ABOVE_THE_LOOP = {"fedcore.run", "fedcore.tune"}  # the entry points: a CLI and the Ray Tune trainables


def test_nothing_below_the_round_loop_imports_it():
    graph = import_graph()
    loop = {m for m in graph if m == "fedcore.federation" or m.startswith("fedcore.federation.")}
    offenders = sorted(m for m, deps in graph.items() if deps & loop and m not in loop | ABOVE_THE_LOOP)
    assert offenders == []
