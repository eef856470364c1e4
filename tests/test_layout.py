"""The layout's promises: the CLI is a leaf, and dependencies point one way."""

import ast
from pathlib import Path

from slmlab.runs import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "slmlab"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names), inner imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def importers_of(prefix: str, outside: str | None = None) -> dict[str, list[str]]:
    """Files of slmlab (not under the folder `outside`) that import `prefix` or a module inside it."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = str(path.relative_to(PACKAGE))
        hits = [m for m in imported_modules(path) if m == prefix or m.startswith(prefix + ".")]
        if hits and not (outside and relative.startswith(outside)):
            found[relative] = hits
    return found


def test_nothing_imports_the_cli():
    assert importers_of("slmlab.cli", outside="cli/") == {}


def test_models_tokenizers_and_data_know_nothing_of_runs_tasks_or_eval():
    for lower in ("models/", "tokenizers/", "data/"):
        for upper in ("slmlab.runs", "slmlab.tasks", "slmlab.eval", "slmlab.bench"):
            offenders = {f: m for f, m in importers_of(upper).items() if f.startswith(lower)}
            assert offenders == {}, f"{lower} imports {upper}: {offenders}"
