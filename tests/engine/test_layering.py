"""The folders are the layers (STYLE point 2), checked by walking every module's imports."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_FORBIDDEN = (
    "engine.keys",
    "engine.blob",
    "engine.chunker",
    "engine.imagecodec",
    "engine.dicom",
)


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imports(path: Path, source: str | None = None) -> Iterator[str]:
    """Absolute module names `path` imports (relative imports resolved against its package)."""
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


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(folder)
        for name in imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_engine_imports_nothing_from_server_or_client() -> None:
    assert modules("engine")
    assert offenders("engine", ("server", "client")) == []


def test_server_never_imports_keys_blob_chunker_codec_or_dicom() -> None:
    assert modules("server")
    assert offenders("server", (*SERVER_FORBIDDEN, "client")) == []


@pytest.mark.parametrize(
    "folder",
    sorted(
        p.name
        for p in ROOT.iterdir()
        if p.is_dir()
        and p.name not in ("client", "tests", "benchmarks")
        and any(p.rglob("*.py"))
        and not p.name.startswith(".")
    ),
)
def test_nothing_outside_client_tests_and_benchmarks_imports_client(folder: str) -> None:
    assert offenders(folder, ("client",)) == []


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
