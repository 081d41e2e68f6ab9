"""The folders are the layers (docs/design.md §1, STYLE point 2): one walk over every module's
imports, checked against one allow-list per layer and sub-package.

A rule is (folder or module file, forbidden prefixes, allowed exceptions): a module under
`folder` may import nothing that starts with a forbidden prefix unless it starts with an allowed
one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The server never holds a key: of the engine it may use only these keyless modules.
SERVER_ENGINE = ("engine.ids", "engine.errors", "engine.pack", "engine.commit", "engine.store")
SERVER_ENGINE += ("engine.rates", "engine.keyobject", "engine.protocol", "engine.clock")
SERVER_ENGINE += ("engine.prunelog",)  # the write-once prune log nodes of one bucket share
# Server services are given their own settings (AlertSite, ReplicationSettings): server.config
# imports theirs, never the other way, and they know nothing of the app that runs them.
SERVER_SERVICE = ("server.app", "server.handlers", "server.cli", "server.config")
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("engine", ("server", "client", "benchmarks", "tests", "aiohttp.web"), ()),
    ("server", ("client", "benchmarks", "tests", "engine", "cryptography"), SERVER_ENGINE),
    ("server/alerts", SERVER_SERVICE, ()),
    ("server/replication", (*SERVER_SERVICE, "server.alerts"), ()),
    ("client", ("server", "benchmarks", "tests"), ()),
    ("benchmarks", ("tests",), ()),
    # The agent's parts get what they need passed in: no circle back to the daemon.
    ("client/agent/drills.py", ("client.agent.daemon",), ()),
    ("client/agent/status.py", ("client.agent.daemon",), ()),
]


def imports(path: Path, source: str | None = None) -> Iterator[str]:
    """Absolute module names `path` imports (relative imports resolved against its package),
    including imports inside functions."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def modules(folder: str) -> list[Path]:
    """The modules under `folder`, or the one module it names."""
    path = ROOT / folder
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def offenders(folder: str, forbidden: tuple[str, ...], allowed: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(folder)
        for name in set(imports(path))
        if under(name, forbidden) and not under(name, allowed)
    ]


@pytest.mark.parametrize(("folder", "forbidden", "allowed"), RULES, ids=[r[0] for r in RULES])
def test_layer_imports_only_what_its_rule_allows(
    folder: str, forbidden: tuple[str, ...], allowed: tuple[str, ...]
) -> None:
    assert modules(folder), f"{folder} has no modules: a stale rule"
    assert offenders(folder, forbidden, allowed) == []


def test_nothing_but_client_tests_and_benchmarks_imports_client() -> None:
    folders = [p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")]
    others = [f for f in folders if f not in ("client", "tests", "benchmarks")]
    assert "engine" in others and "server" in others
    assert [o for f in others for o in offenders(f, ("client",), ())] == []


def test_the_walker_resolves_relative_and_lazy_imports() -> None:
    source = (
        "from . import base\n"
        "from .. import keys\n"
        "def later():\n"
        "    import client.cli\n"
        "    from engine.dicom import segment\n"
    )
    names = set(imports(ROOT / "engine" / "store" / "probe.py", source))
    assert {"engine.store.base", "engine.keys", "client.cli", "engine.dicom.segment"} <= names
