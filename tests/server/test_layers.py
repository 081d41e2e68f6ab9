"""The server holds no keys: nothing under server/ imports keys, codecs, chunker or crypto."""

from __future__ import annotations

import ast
from pathlib import Path

import server

ALLOWED_ENGINE = {
    "engine.ids",
    "engine.errors",
    "engine.pack",
    "engine.commit",
    "engine.keyobject",  # the key object's format and bounds, no cryptography
    "engine.store",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_server_imports_only_keyless_engine_modules() -> None:
    root = Path(server.__file__).parent
    for path in root.rglob("*.py"):
        for name in _imports(path):
            if name.startswith("engine"):
                assert any(name == a or name.startswith(a + ".") for a in ALLOWED_ENGINE), (
                    f"{path.name} imports {name}"
                )
            assert not name.startswith("client"), f"{path.name} imports {name}"
            assert not name.startswith("cryptography"), f"{path.name} imports {name}"
