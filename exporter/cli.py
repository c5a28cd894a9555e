"""Command line: collect, run, demo, check, simulate-llm, runs show, sessions show."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import DEFAULT_LISTEN, ConfigError, Settings, load_settings

log = logging.getLogger("agno_exporter")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(settings: Settings) -> None:
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


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if getattr(args, "db_url", None):
        out.setdefault("database", {})["url"] = args.db_url
    if getattr(args, "listen", None):
        out.setdefault("web", {})["listen"] = args.listen
    if getattr(args, "schema", None):
        out.setdefault("database", {})["schema"] = args.schema
    if getattr(args, "web_config_file", None):
        out.setdefault("web", {})["config_file"] = args.web_config_file
    return out


def _settings(args: argparse.Namespace, extra: dict[str, dict[str, Any]] | None = None) -> Settings:
    overrides = _overrides(args)
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    return load_settings(args.config, overrides=overrides)


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# --- commands ------------------------------------------------------------------------------------


async def cmd_collect(args: argparse.Namespace) -> int:
    from .service import Service

    settings = _settings(args, {"scheduler": {"enabled": False}})
    setup_logging(settings)
    service = Service(settings)
    await service.start()
    try:
        await _until_signal()
    finally:
        await service.stop()
    return 0


async def cmd_check(args: argparse.Namespace) -> int:
    from .check import run_check

    settings = _settings(args)
    return int(await run_check(settings, sys.stdout))


async def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_all

    settings = _settings(args, {"scheduler": {"enabled": True}})
    setup_logging(settings)
    return await run_all(settings, _until_signal)


async def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return await run_demo(args, _until_signal)


async def cmd_create_index(args: argparse.Namespace) -> int:
    from .db import ConnectOptions
    from .index import create_index
    from .service import database_url

    settings = _settings(args)
    d = settings.database
    opts = ConnectOptions(database_url(settings), d.application_name, d.statement_timeout, d.connect_timeout)
    print(await create_index(opts, d.schema_name, d.runs_table_name))
    return 0


async def cmd_simulate_llm(args: argparse.Namespace) -> int:
    from .simllm import SimSettings, run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    settings = SimSettings(ttft=args.ttft, per_token=args.per_token, failure_rate=args.failure_rate,
                           seed=args.seed)
    log.info("simulated OpenAI-compatible model on http://%s:%d/v1", args.host, args.port)
    task = asyncio.create_task(run_server(settings, args.host, args.port))
    await _until_signal()
    task.cancel()
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    from .show import show_run, show_session

    settings = _settings(args)
    if args.what == "runs":
        return int(await show_run(settings, args.id, sys.stdout))
    return int(await show_session(settings, args.id, sys.stdout))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agno-exporter", description=__doc__)
    from . import __version__

    p.add_argument("--version", action="version", version=f"agno-exporter {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, listen: bool = True) -> None:
        sp.add_argument("-c", "--config", type=Path, help="YAML config file (env AGNO_EXPORTER_CONFIG)")
        sp.add_argument("--db-url", help="agno's database, postgresql://user:pass@host:5432/db (env DATABASE_URL)")
        sp.add_argument("--schema", help="schema of agno's tables (default ai)")
        if listen:
            sp.add_argument("--listen", help=f"address for /metrics (default {DEFAULT_LISTEN})")
            sp.add_argument("--web.config.file", dest="web_config_file", type=Path,
                            help="web config file for TLS and basic auth (exporter-toolkit format)")

    sp = sub.add_parser("collect", help="the sidecar: collect finished runs from agno's database and serve /metrics")
    common(sp)
    sp.set_defaults(func=cmd_collect)
    sp = sub.add_parser("run", help="scheduler + collector + exporter, as configured")
    common(sp)
    sp.set_defaults(func=cmd_run)
    sp = sub.add_parser("demo", help="everything in one process: embedded Postgres, simulated model, scheduler")
    common(sp)
    sp.add_argument("--data-dir", type=Path, default=Path(".agno-exporter/demo-pg"),
                    help="embedded PostgreSQL data directory")
    sp.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    sp.set_defaults(func=cmd_demo)
    sp = sub.add_parser("check", help="validate the config, connect, report agno's tables and the state")
    common(sp, listen=False)
    sp.set_defaults(func=cmd_check)
    sp = sub.add_parser("create-index", help="opt in: index agno's runs table on updated_at (CREATE INDEX "
                        "CONCURRENTLY) so a poll costs the same at any table size")
    common(sp, listen=False)
    sp.set_defaults(func=cmd_create_index)
    sp = sub.add_parser("simulate-llm", help="serve the built-in OpenAI-compatible simulated model")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8001)
    sp.add_argument("--ttft", type=float, default=0.25)
    sp.add_argument("--per-token", type=float, default=0.004)
    sp.add_argument("--failure-rate", type=float, default=0.0)
    sp.add_argument("--seed", type=int, default=None)
    sp.set_defaults(func=cmd_simulate_llm)
    for what in ("runs", "sessions"):
        sp = sub.add_parser(what, help=f"print one {what[:-1]} from the database as the seed prints it")
        ssub = sp.add_subparsers(dest="action", required=True)
        show = ssub.add_parser("show")
        show.add_argument("id")
        common(show, listen=False)
        show.set_defaults(func=cmd_show, what=what)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    if getattr(args, "config", None) is None and os.environ.get("AGNO_EXPORTER_CONFIG"):
        args.config = Path(os.environ["AGNO_EXPORTER_CONFIG"])
    try:
        return int(asyncio.run(args.func(args)))
    except ConfigError as exc:
        print(f"agno-exporter: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
