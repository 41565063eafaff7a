from pathlib import Path

import pytest

from avatar.config import AppConfig, load_config, with_overrides
from avatar.errors import ConfigError


def test_repository_config_matches_defaults() -> None:
    # config.toml documents every key with its default value.
    assert load_config() == AppConfig()


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 0\n[webrtc]\nhost_addresses = ["127.0.0.1"]\n')
    config = load_config(path)
    assert config.server.port == 0
    assert config.server.host == AppConfig().server.host
    assert config.webrtc.host_addresses == ("127.0.0.1",)
    assert config.video == AppConfig().video


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nprot = 1\n", "server"),
        ("[nope]\nx = 1\n", "unknown section"),
        ("[video]\nfps = 'fast'\n", "video.fps"),
        ("[vad]\nframe_ms = 25\n", "vad.frame_ms"),
        ("[video]\nwidth_px = 500\n", "video.width_px"),
        ("[video\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_overrides() -> None:
    config = with_overrides(AppConfig(), server={"port": 0}, generator={})
    assert config.server.port == 0
    assert config.generator == AppConfig().generator
