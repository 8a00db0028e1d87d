"""The service's settings: typed, read from a config file, the environment and the CLI.

Precedence, lowest first: the defaults, a JSON or TOML config file (``--config``), the
environment (``GLIMPSE_HOST``, ``GLIMPSE_DATA``, ``GLIMPSE_TOKEN``, ...), the CLI flags
(:meth:`Settings.load`'s overrides). ``GLIMPSE_DATA`` is a JSON list or a
``os.pathsep``-separated string (``/data/a:/data/b``), as ``PATH`` is.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import InputError

logger = logging.getLogger("glimpse.service.settings")

__all__ = ["ENV_PREFIX", "Settings"]

ENV_PREFIX = "GLIMPSE_"


class Settings(BaseSettings):
    """What ``glimpse serve`` runs with; see the contract (issue 10) for each field."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path("."), Path("glimpse-demo")], min_length=1)
    token: SecretStr | None = None
    sessions_dir: Path | None = None
    max_body_bytes: int = Field(1_048_576, gt=0)
    ws_max_message_bytes: int = Field(65_536, gt=0)
    ws_queue: int = Field(4, ge=1)
    ws_slow_after_s: float = Field(5.0, gt=0)
    device: str = "cpu"
    backend: str = "auto"
    threads: int | None = Field(1, ge=1)
    stop_timeout_s: float = Field(10.0, gt=0)
    # A second worker per session, loaded and waiting, takes over within a second when
    # the active one dies (a restart from scratch takes 3-10 s); costs a model copy.
    standby_worker: bool = True

    @field_validator("data", mode="before")
    @classmethod
    def _split_data(cls, value: Any) -> Any:
        """A JSON list or an os.pathsep-separated string (the environment) -> a list."""
        if isinstance(value, (str, os.PathLike)):
            text = os.fspath(value).strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        # GLIMPSE_TOKEN="" would otherwise accept requests that carry no token at all.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def loopback(self) -> bool:
        """True when ``host`` only accepts connections from this machine."""
        host = self.host.strip().strip("[]").lower()
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a host name other than localhost may resolve anywhere

    def check(self) -> Settings:
        """Refuse a non-loopback bind without a token; returns ``self``."""
        if not self.loopback and self.token is None:
            raise InputError(f"a token when binding {self.host} (any address but 127.0.0.1, "
                             "::1 or localhost)", "no token",
                             "pass --token SECRET or set GLIMPSE_TOKEN, or bind --host 127.0.0.1")
        return self

    @classmethod
    def load(cls, config: str | os.PathLike | None = None, **overrides: Any) -> Settings:
        """Settings from ``config`` (JSON or TOML) < the environment < ``overrides``.

        ``overrides`` are CLI flags; those that are None (not given) are ignored.
        Raises InputError naming the setting, the value and where it came from.
        """
        file_values = _read_config(Path(config)) if config is not None else {}
        unknown = sorted(set(file_values) - set(cls.model_fields))
        if unknown:
            raise InputError(f"settings among {', '.join(cls.model_fields)}",
                             f"{', '.join(unknown)} in {config}", "fix or remove those keys")
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            from_env = cls()
            # Fields the environment set are in model_fields_set: they beat the file.
            env_values = {k: getattr(from_env, k) for k in from_env.model_fields_set}
            return cls(**{**file_values, **env_values, **given})
        except ValidationError as err:
            raise _settings_error(err, config) from None


def _read_config(path: Path) -> dict[str, Any]:
    """The flat table of a JSON or TOML config file; dashes in keys become underscores."""
    fix = "write a JSON object or a TOML table of settings, e.g. port = 8000"
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as err:
        raise InputError("a readable config file (JSON or TOML)", f"{path} ({err.strerror})",
                         "check the --config path") from None
    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise InputError("a config file in JSON (.json) or TOML (any other name)",
                         f"{path}, which does not parse ({err})", fix) from None
    if not isinstance(values, dict):
        raise InputError("a JSON object of settings", f"{type(values).__name__} in {path}", fix)
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _settings_error(err: ValidationError, config: str | os.PathLike | None) -> InputError:
    """One InputError for all the settings pydantic refused."""
    fields = [".".join(str(p) for p in e["loc"]) or "settings" for e in err.errors()]
    expected = "; ".join(f"{f}: {e['msg']}" for f, e in zip(fields, err.errors(), strict=True))
    got = "; ".join(f"{f}=" + ("(hidden)" if f == "token" else f"{e.get('input')!r:.80}")
                    for f, e in zip(fields, err.errors(), strict=True))
    names = dict.fromkeys(f.split(".")[0] for f in fields)
    fix = "correct " + ", ".join(f"--{n.replace('_', '-')} / {ENV_PREFIX}{n.upper()}" for n in names)
    return InputError(expected, got, fix + (f" (or {config})" if config is not None else ""))
