"""Typed reads of ``QCIMAGE_*`` variables that collect every problem before failing."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

PREFIX = "QCIMAGE_"


def environment(test_config: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """``test_config`` if given, else the process environment (with ``./.env`` in development)."""
    if test_config is not None:
        return test_config
    environ = dict(os.environ)
    # .env is a development convenience, read only when the real environment asks for
    # development: a stray file must never turn production (the default) into development.
    if environ.get("QCIMAGE_ENV", "").strip().lower() == "development" and Path(".env").is_file():
        file_values = {k: v for k, v in dotenv_values(".env").items() if v is not None}
        # The real environment wins, QCIMAGE_ENV included: the file cannot say production.
        environ = {**file_values, **environ}
    return environ


class ConfigError(ValueError):
    """The environment does not describe a service that can start; ``problems`` lists why."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


class EnvReader:
    """Typed access to the environment; each bad value adds a line to ``errors``."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ
        self.errors: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.environ.get(PREFIX + name)
        return value.strip() if value is not None and value.strip() != "" else None

    def str(self, name: str, default: str | None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def int(self, name: str, default: int, lo: int, hi: int) -> int:
        return self._number(name, default, lo, hi, int, "an integer")

    def float(self, name: str, default: float, lo: float, hi: float) -> float:
        return self._number(name, default, lo, hi, float, "a number")

    def _number(self, name, default, lo, hi, cast, kind):
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = cast(value)
        except ValueError:
            self.errors.append(f"{PREFIX}{name} must be {kind}, got {value!r}")
            return default
        if not lo <= number <= hi:
            self.errors.append(f"{PREFIX}{name} must be between {lo} and {hi}, got {number}")
        return number

    def bool(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        self.errors.append(f"{PREFIX}{name} must be true or false, got {value!r}")
        return default

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() not in choices:
            self.errors.append(f"{PREFIX}{name} must be one of {', '.join(choices)}, got {value!r}")
            return default
        return value.lower()

    def csv(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        return tuple(part.strip() for part in value.split(",") if part.strip())

    def path(self, name: str, default: Path | None) -> Path | None:
        value = self.raw(name)
        return Path(value).expanduser() if value is not None else default

    def url(self, name: str, default: str | None) -> str | None:
        """An http(s) base URL without a query, trailing slash removed."""
        value = self.str(name, default)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            self.errors.append(f"{PREFIX}{name} must be an http(s) base URL, got {value!r}")
        return value.rstrip("/")

    def networks(self, name: str, default: str):
        """IP networks, comma-separated; ``*`` for every address."""
        networks = []
        for entry in self.csv(name) or tuple(default.split(",")):
            if entry == "*":
                return (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.errors.append(
                    f"{PREFIX}{name} entries must be IP networks or *, got {entry!r}")
        return tuple(networks)
