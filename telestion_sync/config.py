"""Telestion service configuration: dev defaults < config file < environment < CLI < overrides.

The keys Telestion defines are ``NATS_URL``, ``NATS_USER``, ``NATS_PASSWORD`` (optional),
``SERVICE_NAME``, ``DATA_DIR``, ``CONFIG_FILE`` and ``CONFIG_KEY``; every other key passes
through, so services read their own settings (``DATA_SUBJECT``, ``FREQUENCY``...) from the same
place. ``--dev`` supplies defaults for local development.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

from .errors import ConfigError
from .options import check_argv, check_mapping

REQUIRED_KEYS = ("NATS_URL", "SERVICE_NAME", "DATA_DIR")
_SECRET_KEYS = ("NATS_PASSWORD",)


def dev_defaults() -> Dict[str, str]:
    """What ``--dev`` fills in (``NATS_USER``/``NATS_PASSWORD`` stay unset)."""
    return {"NATS_URL": "localhost:4222", "SERVICE_NAME": f"dev-{os.getpid()}", "DATA_DIR": "./data"}


def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    """``--KEY=value``, ``--KEY value`` and bare ``--FLAG`` (``"true"``); other words are ignored."""
    out: Dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            continue
        key, eq, value = arg[2:].partition("=")
        if not key:
            continue
        if not eq:
            if i < len(argv) and not argv[i].startswith("--"):
                value = argv[i]
                i += 1
            else:
                value = "true"
        out[key] = value
    return out


class Config(Mapping[str, Any]):
    """A read-only mapping of the service configuration; keys are attributes too
    (``config.SERVICE_NAME``). Values from the environment and CLI are strings; a JSON
    config file may add other JSON values."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"the service configuration is read-only (cannot set {key!r})")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"the service configuration has no {key!r}") from None

    def __repr__(self) -> str:
        shown = {k: ("***" if k in _SECRET_KEYS else v) for k, v in self._values.items()}
        return f"Config({shown!r})"


def _read_config_file(path: str, key: Optional[str]) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"CONFIG_FILE {path!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"CONFIG_FILE {path!r} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"CONFIG_FILE {path!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"CONFIG_FILE {path!r} must hold a JSON object, not {type(data).__name__}")
    if key:
        section = data.get(key)
        if not isinstance(section, dict):
            raise ConfigError(f"CONFIG_FILE {path!r} has no JSON object under CONFIG_KEY {key!r}")
        data = section
    return data


def load_config(
    argv: Optional[Sequence[str]] = None,
    env: Optional[Mapping[str, str]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> Config:
    """Assemble and validate the configuration.

    Precedence, lowest first: ``--dev`` defaults, the JSON ``CONFIG_FILE`` (optionally its object
    under ``CONFIG_KEY``), the environment, CLI arguments, ``overrides``. Raises
    :class:`ConfigError` naming every missing required key (and suggesting ``--dev``), or naming
    the config file and key that could not be used.
    """
    check_argv("argv", argv)
    check_mapping("env", env)
    check_mapping("overrides", overrides)
    cli = parse_args(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ if env is None else env)
    extra = dict(overrides or {})
    above_file = {**environ, **cli, **extra}
    dev = str(above_file.get("dev", "")).lower() in ("true", "1", "yes")
    values: Dict[str, Any] = dev_defaults() if dev else {}
    config_file = above_file.get("CONFIG_FILE")
    if config_file:
        values.update(_read_config_file(str(config_file), above_file.get("CONFIG_KEY")))
    values.update(above_file)
    missing = [k for k in REQUIRED_KEYS if values.get(k) in (None, "")]
    if missing:
        raise ConfigError(
            f"missing required configuration: {', '.join(missing)}; set them in the environment, "
            "as --KEY=value arguments or in CONFIG_FILE, or start with --dev for development defaults"
        )
    return Config(values)
