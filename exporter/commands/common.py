"""What the commands share: settings from flags, environment and config file; logging setup.

Why a module of its own: ``demo`` needs the same flag handling and logging as ``run`` and ``collect``;
borrowing them from ``cli`` made cli and demo import each other.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from exporter.config import COMMON_SETTINGS, Settings, load_settings


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(settings: Settings) -> None:
    """One stderr handler on the root logger, text or JSON lines (``log.format``) at ``log.level``."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log.level.upper())
    for noisy in ("httpx", "httpx2", "apscheduler.executors.default", "apscheduler.scheduler",
                  "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# flag -> its argparse dest and (section, key) of the setting it overrides
_FLAG_SETTINGS: dict[str, tuple[str, str, str]] = {
    **{flag: (flag[2:].replace("-", "_"), section, key) for flag, (section, key, _) in COMMON_SETTINGS.items()},
    "--web.config.file": ("web_config_file", "web", "config_file"),
}


def _overrides(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    """The flags given -> settings overrides, and which flag set each (for error messages)."""
    out: dict[str, dict[str, Any]] = {}
    origins: dict[tuple[str, str], str] = {}
    for flag, (dest, section, key) in _FLAG_SETTINGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            out.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
            origins[(section, key)] = flag
    return out, origins


def settings_from_args(args: argparse.Namespace, extra: dict[str, dict[str, Any]] | None = None) -> Settings:
    """The settings a command runs with: the config file (``args.config``), the environment, then the flags
    given (flags win), then ``extra`` ({section: {key: value}}, the command's own). Raises ConfigError."""
    overrides, origins = _overrides(args)
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    return load_settings(args.config, overrides=overrides, override_origins=origins)
