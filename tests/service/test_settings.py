"""glimpse.service.settings: defaults, file < environment < flags, and the loopback rule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from glimpse.service.settings import Settings
from glimpse.streaming.errors import InputError

# Pure configuration parsing: 30 s is far above the ~0.1 s it takes.
pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """The developer's own GLIMPSE_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("GLIMPSE_"):
            monkeypatch.delenv(name)


def test_defaults_follow_the_contract():
    s = Settings.load()
    assert (s.host, s.port, s.token, s.sessions_dir) == ("127.0.0.1", 8000, None, None)
    assert s.data == [Path("."), Path("glimpse-demo")]
    assert (s.max_body_bytes, s.ws_max_message_bytes, s.ws_queue) == (1_048_576, 65_536, 4)
    assert (s.device, s.backend, s.threads, s.stop_timeout_s) == ("cpu", "auto", 1, 10.0)
    assert s.loopback and s.check() is s


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False), ("::", False),
    ("192.168.1.20", False), ("example.org", False),
])
def test_loopback_hosts(host, loopback):
    assert Settings(host=host).loopback is loopback


def test_a_non_loopback_bind_needs_a_token(monkeypatch):
    with pytest.raises(InputError, match="GLIMPSE_TOKEN") as err:
        Settings.load(host="0.0.0.0").check()
    assert "--token" in err.value.fix and err.value.got == "no token"
    assert Settings.load(host="0.0.0.0", token="s3cret").check().token.get_secret_value() == "s3cret"
    monkeypatch.setenv("GLIMPSE_TOKEN", "from-env")
    assert Settings.load(host="0.0.0.0").check().token.get_secret_value() == "from-env"
    monkeypatch.setenv("GLIMPSE_TOKEN", "  ")  # empty: no token, not one that anything matches
    with pytest.raises(InputError):
        Settings.load(host="0.0.0.0").check()


def test_file_then_environment_then_flags(tmp_path, monkeypatch):
    config = tmp_path / "glimpse.toml"
    config.write_text('host = "0.0.0.0"\nport = 9000\nmax-body-bytes = 2048\ndata = ["/d1"]\n')
    s = Settings.load(config)
    assert (s.host, s.port, s.max_body_bytes, s.data) == ("0.0.0.0", 9000, 2048, [Path("/d1")])
    monkeypatch.setenv("GLIMPSE_PORT", "9100")
    monkeypatch.setenv("GLIMPSE_DATA", os.pathsep.join(["/e1", "/e2"]))
    s = Settings.load(config, port=None, host=None)  # flags not given: None is ignored
    assert (s.host, s.port, s.data) == ("0.0.0.0", 9100, [Path("/e1"), Path("/e2")])
    s = Settings.load(config, port=9200, data=[Path("/f")])
    assert (s.port, s.data, s.max_body_bytes) == (9200, [Path("/f")], 2048)
    json_config = tmp_path / "glimpse.json"
    json_config.write_text(json.dumps({"ws_queue": 2, "token": "t"}))
    monkeypatch.setenv("GLIMPSE_DATA", '["/j1", "/j2"]')
    s = Settings.load(json_config)
    assert (s.ws_queue, s.token.get_secret_value(), s.data) == (2, "t", [Path("/j1"), Path("/j2")])


def test_bad_settings_name_the_setting_and_where_to_fix_it(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="port") as err:
        Settings.load(port=70000)
    assert "--port / GLIMPSE_PORT" in err.value.fix
    monkeypatch.setenv("GLIMPSE_WS_QUEUE", "many")
    with pytest.raises(InputError, match="ws_queue"):
        Settings.load()
    monkeypatch.delenv("GLIMPSE_WS_QUEUE")
    bad = tmp_path / "bad.toml"
    bad.write_text("port = \n")
    with pytest.raises(InputError, match="does not parse"):
        Settings.load(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"prot": 1}')
    with pytest.raises(InputError, match="prot"):
        Settings.load(unknown)
    with pytest.raises(InputError, match="readable config file"):
        Settings.load(tmp_path / "missing.toml")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        Settings.load(listed)
    with pytest.raises(InputError) as err:  # a refused token is never echoed
        Settings.load(token=12)
    assert "12" not in err.value.got
