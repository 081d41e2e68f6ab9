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


def test_an_s3_store_takes_its_table_and_the_aws_variables_win(tmp_path: Path) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text(
        'data_dir = "/srv/node"\nstore = "s3://bucket/prod/eu"\n'
        '[s3]\nendpoint = "http://file:8333"\nregion = "eu-1"\naccess_key_id = "from-file"\n'
    )
    config = load_config(cfg, s3_env={"access_key_id": "from-env", "secret_access_key": "s"})
    store = config.store
    assert store is not None and (store.bucket, store.prefix) == ("bucket", "prod/eu")
    assert (store.endpoint, store.region) == ("http://file:8333", "eu-1")
    assert (store.access_key_id, store.secret_access_key) == ("from-env", "s")
    flag = load_config(cfg, store="s3://other", s3_env={})
    assert flag.store is not None and (flag.store.bucket, flag.store.prefix) == ("other", "")
    assert load_config(data_dir=tmp_path).store is None  # the folder stays the default


@pytest.mark.parametrize(
    "text",
    ['store = "https://bucket/x"', 'store = "s3://b/UPPER"', '[s3]\nendpoint = "http://x"'],
)
def test_a_bad_store_setting_is_a_usage_error(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text(f'data_dir = "/srv/node"\n{text}\n')
    with pytest.raises(UsageError):
        load_config(cfg)
