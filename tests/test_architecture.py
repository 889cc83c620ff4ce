"""The package's structure: no private names cross modules, no command-line code below the CLI.

The one-way layer contract itself is checked by import-linter (pyproject.toml, run by .ci/run).
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "qpelican"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        yield name.removesuffix(".__init__"), ast.parse(path.read_text(), str(path))


def _imported_names(module, tree):
    """(imported module, name) of every ``from qpelican... import name`` in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qpelican"):
            for alias in node.names:
                yield node.module, alias.name


def test_no_private_name_is_imported_across_modules():
    crossing = [f"{m} imports {src}.{name}" for m, tree in _modules() for src, name in _imported_names(m, tree)
                if name.startswith("_") and not name.startswith("__") and src != m]
    assert crossing == []


def test_the_check_sees_a_private_import():
    tree = ast.parse("from qpelican.training.train import _secret\n")
    assert list(_imported_names("qpelican.tune.search", tree)) == [("qpelican.training.train", "_secret")]


def test_library_modules_do_not_import_typer():
    """Command-line parsing lives in qpelican.cli only; the library is usable without it."""
    users = [m for m, tree in _modules() if not m.startswith("qpelican.cli")
             for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
             and any((a.name if isinstance(node, ast.Import) else node.module or "").startswith("typer")
                     for a in node.names)]
    assert users == []
