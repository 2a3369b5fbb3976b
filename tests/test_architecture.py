"""The package's four tiers (docs/architecture.md): each imports only its own tier or those below, always at
module level; apps do not import each other (but for the one declared edge); entry points take one ``engine=``."""

import ast
from pathlib import Path

import pytest

import foldedcnns

PACKAGE = Path(foldedcnns.__file__).parent
# Lowest first; docs/architecture.md explains what each tier owns.
TIERS: dict[str, tuple[str, ...]] = {
    "foundation": ("errors", "utils", "core", "models", "data", "analysis"),
    "runtime": ("runtime",),
    "apps": ("training", "benchmark", "inference", "serving"),
    "front ends": ("workflows", "cli"),
}
TIER_OF: dict[str, int] = {package: rank for rank, names in enumerate(TIERS.values()) for package in names}
# Within the foundation the packages keep their own order (a lower package never imports a higher one).
FOUNDATION_ORDER: dict[str, int] = {"errors": 0, "utils": 1, "core": 2, "models": 3, "data": 4, "analysis": 4}
# The only imports between two apps, and between the two front ends.
SIDEWAYS: set[tuple[str, str]] = {("serving", "inference"), ("cli", "workflows")}
APP_PACKAGES = ("inference", "serving", "training", "benchmark", "workflows")
ENGINE_SETTINGS = {"backend", "precision", "device", "threads", "calibration"}
MAX_PARAMETERS = 10
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
    body = list(getattr(tree, "body", []))
    for node in list(body):  # `if TYPE_CHECKING:` imports are for annotations only: they count as module level
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            body += node.body
    top_level = {id(node) for node in body}
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


def import_problem(own: str, other: str) -> str | None:
    """Why package ``own`` may not import package ``other``, or None when it may."""
    if own == other or "__init__" in (own, other):
        return None  # the top-level package re-exports the core API; `__version__` is read from it
    if TIER_OF[other] > TIER_OF[own]:
        return f"tier {TIER_OF[own]} ({own}) is below tier {TIER_OF[other]} ({other})"
    if TIER_OF[other] == TIER_OF[own]:
        if TIER_OF[own] == 0:
            if FOUNDATION_ORDER[other] > FOUNDATION_ORDER[own] or (
                    FOUNDATION_ORDER[other] == FOUNDATION_ORDER[own]):
                return f"{own} is not above {other} within the foundation"
        elif (own, other) not in SIDEWAYS:
            return f"{own} and {other} are side by side and must not import each other"
    return None


def test_every_subpackage_has_a_tier():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= set(TIER_OF), f"give {sorted((packages | modules) - set(TIER_OF))} a tier"


def test_no_module_imports_a_higher_layer_or_imports_inside_a_function():
    problems = []
    for module, path in source_modules():
        own = layer_of(module)
        for target, module_level, line in foldedcnns_imports(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(PACKAGE)}:{line} imports {target}"
            if not module_level:
                problems.append(f"{where} inside a function")
            problem = import_problem(own, layer_of(target))
            if problem:
                problems.append(f"{where}: {problem}")
    assert problems == []


def test_the_tier_rule_allows_only_the_declared_edges():
    assert import_problem("serving", "inference") is None
    assert import_problem("inference", "serving") is not None
    assert import_problem("benchmark", "training") is not None
    assert import_problem("runtime", "inference") is not None
    assert import_problem("runtime", "data") is None
    assert import_problem("data", "runtime") is not None
    assert import_problem("cli", "training") is None
    assert import_problem("utils", "core") is not None


def public_callables(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Module-level public functions and public methods of public classes (``__init__`` counts: it is the
    class's call)."""
    found = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            found.append((node.name, node))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                        not item.name.startswith("_") or item.name == "__init__"):
                    found.append((f"{node.name}.{item.name}", item))
    return found


def parameter_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = fn.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return [n for n in names if n not in ("self", "cls")]


def engine_problems(path: Path) -> list[str]:
    problems = []
    for name, fn in public_callables(ast.parse(path.read_text(encoding="utf-8"))):
        params = parameter_names(fn)
        settings = sorted(ENGINE_SETTINGS.intersection(params))
        if len(settings) >= 2:
            problems.append(f"{path.name}:{fn.lineno} {name} takes {', '.join(settings)} apart; take engine=")
        if len(params) > MAX_PARAMETERS:
            problems.append(f"{path.name}:{fn.lineno} {name} has {len(params)} parameters (> {MAX_PARAMETERS})")
    return problems


def test_entry_points_take_one_engine_and_few_parameters():
    problems = []
    for package in APP_PACKAGES:
        for path in sorted((PACKAGE / package).rglob("*.py")):
            problems += [f"{package}/{p}" for p in engine_problems(path)]
    assert problems == []


def test_the_engine_check_sees_loose_settings_and_long_signatures(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def ok(engine, batch): ...\n"
                      "def loose(model, *, backend, precision): ...\n"
                      "def _private(backend, precision): ...\n"
                      "class C:\n    def __init__(self, device, threads): ...\n"
                      "def long(a, b, c, d, e, f, g, h, i, j, k): ...\n")
    problems = engine_problems(source)
    assert [p.split()[1] for p in problems] == ["loose", "C.__init__", "long"]


def test_the_checker_sees_function_level_and_upward_imports():
    tree = ast.parse("from foldedcnns.cli import main\n\ndef f():\n    import foldedcnns.runtime\n")
    assert foldedcnns_imports(tree) == [("foldedcnns.cli", True, 1), ("foldedcnns.runtime", False, 4)]


@pytest.mark.parametrize(("module", "path"), source_modules(), ids=[m for m, _ in source_modules()])
def test_modules_stay_focused(module, path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by responsibility"


def test_the_docs_map_names_every_package_in_its_tier():
    root = PACKAGE.parent.parent
    table = (root / "docs" / "architecture.md").read_text(encoding="utf-8")
    readme = (root / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):readme.index("## Documentation")]
    for tier, packages in TIERS.items():
        for package in packages:
            name = f"{package}.py" if package == "errors" else f"{package}/"
            assert f"| {tier} | `{name}`" in table or (f"`, `{name}`" in table and f"| {tier} |" in table), (
                f"docs/architecture.md: put {name} in the {tier} row")
            line = next((ln for ln in layout.splitlines() if f" {name} " in f"{ln} "), "")
            assert line, f"README layout does not name {name}"
    current = None
    for ln in layout.splitlines():  # the README's tier labels stand beside the first package of each tier
        label = ln[:15].strip()
        if label in TIERS:
            current = label
        words = ln.split()
        package = next((w.rstrip("/").removesuffix(".py") for w in words if w.endswith("/") or w == "errors.py"), None)
        if current and package in TIER_OF and package != "src":
            assert TIER_OF[package] == list(TIERS).index(current), f"README puts {package} under {current}"
