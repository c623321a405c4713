"""DESIGN.md's bold rules about the house."""
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
