"""The `dicomvault` CLI as a user runs it, for tests and benchmarks alike: the command line, a
run's result, and the cheap KDF that test repositories are initialised with (`init` takes it
only in test mode, `DICOMVAULT_TEST_CHEAP_KDF=1`). Tests import this module; it imports no test.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any

from engine.keys import CHEAP_KDF

PASSPHRASE = b"correct horse battery staple"
CHEAP_KDF_ENV = {"DICOMVAULT_TEST_CHEAP_KDF": "1"}
CHEAP_KDF_ARGS = ("--kdf-memory-mib", str(CHEAP_KDF.memory_kib / 1024), "--kdf-iterations", "1")


def cli_command() -> list[str]:
    script = shutil.which("dicomvault")
    return [script] if script else [sys.executable, "-m", "client"]


def cli_env(**settings: str) -> dict[str, str]:
    """The environment of a `dicomvault` run: this process's without any DICOMVAULT_ variable
    (a developer's own settings must not reach a test), then `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    env.update(settings)
    return env


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str

    @property
    def doc(self) -> Any:
        return json.loads(self.out)
