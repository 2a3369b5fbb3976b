"""The package's layers: each imports only its own layer or those below, always at module level."""

import ast
from pathlib import Path

import pytest

import foldedcnns

PACKAGE = Path(foldedcnns.__file__).parent
# Lowest first; docs/architecture.md explains what each layer owns.
LAYERS: dict[str, int] = {
    "errors": 0,
    "utils": 1,
    "core": 2,
    "models": 3,
    "analysis": 4, "data": 4,
    "runtime": 5,
    "training": 6,
    "benchmark": 7,
    "inference": 8,
    "serving": 9,
    "workflows": 10,
    "cli": 11,
}
MAX_LINES = 400


def layer_of(module: str) -> str:
    """``foldedcnns.runtime.backends.base`` -> ``runtime``; the top-level package is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def source_modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def foldedcnns_imports(tree: ast.AST) -> list[tuple[str, bool, int]]:
    """(imported module, at module level?, line) for every import of ``foldedcnns.*``."""
    top_level = {id(node) for node in getattr(tree, "body", [])}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name == "foldedcnns" or name.startswith("foldedcnns."):
                found.append((name, id(node) in top_level, node.lineno))
    return found


def test_every_subpackage_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= set(LAYERS), f"give {sorted((packages | modules) - set(LAYERS))} a layer"


def test_no_module_imports_a_higher_layer_or_imports_inside_a_function():
    problems = []
    for module, path in source_modules():
        own = layer_of(module)
        for target, module_level, line in foldedcnns_imports(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(PACKAGE)}:{line} imports {target}"
            if not module_level:
                problems.append(f"{where} inside a function")
            other = layer_of(target)
            if own == "__init__" or other == "__init__":
                continue  # the top-level package re-exports the core API; `__version__` is read from it
            if LAYERS[other] > LAYERS[own]:
                problems.append(f"{where}: layer {own} ({LAYERS[own]}) is below {other} ({LAYERS[other]})")
            elif LAYERS[other] == LAYERS[own] and other != own:
                problems.append(f"{where}: {own} and {other} are side by side and must not import each other")
    assert problems == []


def test_the_checker_sees_function_level_and_upward_imports():
    tree = ast.parse("from foldedcnns.cli import main\n\ndef f():\n    import foldedcnns.runtime\n")
    assert foldedcnns_imports(tree) == [("foldedcnns.cli", True, 1), ("foldedcnns.runtime", False, 4)]


@pytest.mark.parametrize(("module", "path"), source_modules(), ids=[m for m, _ in source_modules()])
def test_modules_stay_focused(module, path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by responsibility"
