"""The package's architecture rules that a grep can check (docs/design.md, "Architecture")."""

import ast
from pathlib import Path

import streamfm

PACKAGE = Path(streamfm.__file__).parent


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def test_no_module_imports_a_private_name_of_another():
    """What commands and modules share is public (command.py, named functions):
    ``from .x import _y`` would couple a module to another's internals."""
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append("%s:%d imports %s" % (path.relative_to(PACKAGE), node.lineno, alias.name))
    assert not found, found


def test_library_modules_install_no_signal_handler():
    """Only the commands' frame (command.py), the commands and fm_serve's runner set signal handlers."""
    allowed = {"command.py", "cli.py", "recall/cli.py", "sample/cli.py", "serve/cli.py"}
    found = []
    for path, tree in _modules():
        rel = str(path.relative_to(PACKAGE))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "signal"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "signal"
                    and rel not in allowed):
                found.append("%s:%d" % (rel, node.lineno))
    assert not found, found
