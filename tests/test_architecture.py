"""The package's shape: no import cycles, no module reaching into another's private names,
and the core never importing a domain package.

Read from the source with ``ast`` (nothing is imported), so the check is independent of
import order and of which optional dependencies are installed.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fitax"
DOMAINS = ("gamma", "photometry", "hep")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported(name: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = name.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]):
    """``(importer, imported module, imported names)`` for every import inside the package,
    including those inside functions (a lazy import still couples the two modules)."""
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                target = _imported(name, path, node)
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    if submodule in modules:
                        yield name, submodule, ()
                    elif target in modules:
                        yield name, target, (alias.name,)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        yield name, alias.name, ()


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _is_package_of(importer: str, imported: str) -> bool:
    """A package's ``__init__`` re-exporting its own modules' names is not a cycle."""
    return imported.startswith(importer + ".")


def test_no_import_cycles():
    modules = _modules()
    edges: dict[str, set[str]] = {}
    for importer, imported, _ in _imports(modules):
        if importer != imported and not _is_package_of(importer, imported) and not _is_package_of(imported, importer):
            edges.setdefault(importer, set()).add(imported)
    assert _cycles(edges) == []


def test_no_module_imports_another_modules_private_names():
    private = sorted(
        f"{importer} imports {name} from {imported}"
        for importer, imported, names in _imports(_modules())
        for name in names
        if name.startswith("_") and not name.startswith("__") and importer != imported
    )
    assert private == []


def test_the_core_does_not_depend_on_the_domains():
    upward = sorted(
        f"{importer} imports {imported}"
        for importer, imported, _ in _imports(_modules())
        if importer.split(".")[1:2] and importer.split(".")[1] not in DOMAINS
        and any(imported == f"fitax.{d}" or imported.startswith(f"fitax.{d}.") for d in DOMAINS)
        and importer != "fitax.cli"  # the command line is the one edge that dispatches to every domain
    )
    assert upward == []


def test_the_checks_see_a_known_cycle_and_private_import(tmp_path):
    """The scanner itself: a two-module cycle and a private import are found."""
    edges = {"fitax.a": {"fitax.b"}, "fitax.b": {"fitax.a"}, "fitax.c": {"fitax.a"}}
    assert _cycles(edges) == [["fitax.a", "fitax.b"]]
    source = tmp_path / "m.py"
    source.write_text("from .fit import _run_fit\n")
    node = ast.parse(source.read_text()).body[0]
    assert _imported("fitax.m", source, node) == "fitax.fit"
