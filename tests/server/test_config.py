"""Server configuration: TOML file, command-line overrides, refusal of unknown settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import UsageError
from server.config import load_config


def test_toml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('data_dir = "/srv/dv"\nlisten = "0.0.0.0:9000"\nmax_body_size = 1048576\n')
    config = load_config(path, listen="[::1]:8443", tls_cert=None)
    assert (config.data_dir, config.host, config.port) == (Path("/srv/dv"), "::1", 8443)
    assert config.max_body_size == 1048576 and config.tls_cert is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('data_dir = "/x"\nbogus = 1\n', "unknown"),
        ('listen = "nope"\ndata_dir = "/x"\n', "HOST:PORT"),
        ('data_dir = "/x"\ntls_cert = "/c.pem"\n', "both"),
        ("max_body_size = 3\n", "data folder"),
        ("not toml = = \n", "cannot read"),
    ],
)
def test_bad_configs_are_usage_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_config(path)
