"""The import rules of the architecture: who may import whom (an arrow the other way is a design bug)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"meterhub", "drivers", "collector", "billing", "dashboards", "simulators"}
ALLOWED = {
    "drivers": set(),
    "collector": {"drivers", "meterhub"},
    "billing": {"meterhub"},
    "dashboards": {"meterhub", "billing"},
    "simulators": {"drivers"},
    "meterhub": set(),  # its CLI may import the others inside functions, to start them
}


def violations(package: str) -> list[str]:
    found = []
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found.extend(_walk(tree, package, path.relative_to(ROOT), in_function=False))
    return found


def _walk(node: ast.AST, package: str, path: Path, in_function: bool) -> list[str]:
    found = []
    for child in ast.iter_child_nodes(node):
        names: list[str] = []
        if isinstance(child, ast.Import):
            names = [alias.name for alias in child.names]
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            names = [child.module]
        for name in names:
            root = name.split(".")[0]
            lazy_cli = package == "meterhub" and in_function
            if root in OURS and root != package and root not in ALLOWED[package] and not lazy_cli:
                found.append(f"{path}:{child.lineno} imports {name}")
        nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        found.extend(_walk(child, package, path, nested))
    return found


@pytest.mark.parametrize("package", sorted(p for p in ALLOWED if (ROOT / p).is_dir()))
def test_package_imports_follow_the_design(package: str) -> None:
    assert violations(package) == []
