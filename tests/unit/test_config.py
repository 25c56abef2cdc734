"""Settings from TOML and PROVISIOND_* variables; bad values name key, value and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisiond.config import load_settings
from provisiond.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISIOND_CONFIG", raising=False)
    monkeypatch.chdir(Path("/tmp"))


def test_defaults_use_sqlite_in_the_data_dir() -> None:
    s = load_settings()
    assert s.db_url == f"sqlite:///{Path('/tmp/.provisiond/provisiond.db')}"
    assert s.listen_host == "127.0.0.1" and s.listen_port == 8080


def test_toml_file_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        'data_dir = "/srv/p"\nlisten_port = 9000\n'
        'database_url = "postgresql+psycopg://u:pw@127.0.0.1/p"\n[timeouts]\ndeploying = 120\n'
    )
    s = load_settings(cfg)
    assert (s.listen_port, s.timeouts.deploying, s.data_dir) == (9000, 120, Path("/srv/p"))
    monkeypatch.setenv("PROVISIOND_LISTEN_PORT", "9100")
    monkeypatch.setenv("PROVISIOND_TIMEOUTS__DEPLOYING", "60")
    s = load_settings(cfg)
    assert (s.listen_port, s.timeouts.deploying) == (9100, 60)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "listen_port = 99999\n",
            "listen_port = 99999: Input should be less than or equal to 65535",
        ),
        ('listen_port = "http"\n', "listen_port = 'http': Input should be a valid integer"),
        ("[timeouts]\ndeploying = -5\n", "timeouts.deploying = -5: Input should be greater than 0"),
        ("lisen_port = 80\n", "lisen_port = 80: Extra inputs are not permitted"),
        ('database_url = "mysql://x"\n', "database_url = 'mysql://x': Value error, expected a"),
        ('log_level = "loud"\n', "log_level = 'loud': Input should be 'debug', 'info'"),
        ("listen_port = \n", "cannot read"),
    ],
)
def test_bad_config_names_key_value_and_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert expected in exc.value.message
    assert str(cfg) in exc.value.message
    assert exc.value.hint


def test_bad_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISIOND_REAPER_INTERVAL_S", "often")
    with pytest.raises(ConfigError, match="reaper_interval_s = 'often'"):
        load_settings()


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
