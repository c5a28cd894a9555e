"""Command line: collect, run, demo, check, create-index, create-notify-trigger, drop-notify-trigger,
simulate-llm, runs show, sessions show.

Every flag that sets a setting is also an environment variable and a config key
(:data:`exporter.config.COMMON_SETTINGS`); its help says which, with the default taken from the
settings model, so help and behaviour cannot drift apart. Errors a user can fix (a port in use, a
missing privilege, an unreachable database) end the command with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exporter.commands.common import settings_from_args as _settings
from exporter.commands.common import setup_logging
from exporter.config import COMMON_SETTINGS, ENV_PREFIX, ConfigError, Settings

log = logging.getLogger("agno_exporter")

DESCRIPTION = """\
Prometheus metrics and OpenTelemetry traces for Agno agents, read from the PostgreSQL database
agno already writes. No change to your agents' code."""

EPILOG = """\
examples:
  agno-exporter demo                                  try it: nothing else needed
  agno-exporter check   --db-url postgresql://user:pass@host:5432/db
  agno-exporter collect --db-url postgresql://user:pass@host:5432/db --listen 0.0.0.0:9477
  agno-exporter runs show RUN_ID --db-url ...

Settings come from a YAML file (-c), environment variables and flags (flags win).
Run 'agno-exporter COMMAND --help' for a command's flags."""


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# --- commands ------------------------------------------------------------------------------------


async def cmd_collect(args: argparse.Namespace) -> int:
    from exporter.commands.service import Service

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
    from exporter.commands.check import run_check

    settings = _settings(args)
    return int(await run_check(settings, sys.stdout))


async def cmd_run(args: argparse.Namespace) -> int:
    from exporter.commands.stack import run_all

    settings = _settings(args, {"scheduler": {"enabled": True}})
    setup_logging(settings)
    return await run_all(settings, _until_signal)


async def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.commands.demo import run_demo

    return await run_demo(args, _until_signal)


async def cmd_create_index(args: argparse.Namespace) -> int:
    from exporter.commands.index import create_index
    from exporter.commands.service import database_url
    from exporter.db import ConnectOptions

    settings = _settings(args)
    d = settings.database
    opts = ConnectOptions(database_url(settings), d.application_name, d.statement_timeout, d.connect_timeout)
    for table in await _runs_tables(settings):
        print(await create_index(opts, d.schema_name, table))
    return 0


async def cmd_notify_trigger(args: argparse.Namespace) -> int:
    from exporter.commands.notify_trigger import create_triggers, drop_triggers, watched_tables
    from exporter.commands.service import database_url
    from exporter.db import ConnectOptions

    settings = _settings(args)
    d = settings.database
    opts = ConnectOptions(database_url(settings), d.application_name, d.statement_timeout, d.connect_timeout)
    if args.drop:
        lines = await drop_triggers(opts, d.schema_name)
    else:
        # The tables the collector reads, found as it finds them: agno 3.x runs tables, and agno 2.x
        # session tables whose runs column holds runs.
        lines = await create_triggers(opts, await watched_tables(opts, settings))
    for line in lines:
        print(line)
    return 0


async def _runs_tables(settings: Settings) -> list[str]:
    """The runs tables the collector reads (every one of the schema unless database.session_table or
    runs_table names one); the configured name when none is found, so the error names it."""
    from exporter.commands.service import database_url
    from exporter.db import ConnectOptions, Database
    from exporter.ingest.discovery import discover

    d = settings.database
    if d.tables_explicit:
        return [d.runs_table_name]
    db = Database(ConnectOptions(database_url(settings), d.application_name, d.statement_timeout,
                                 d.connect_timeout, read_only=True))
    try:
        layout = await discover(db, d.schema_name)
    finally:
        await db.close()
    return [p.runs_table for p in layout.pairs if p.runs_table] or [d.runs_table_name]


async def cmd_simulate_llm(args: argparse.Namespace) -> int:
    from exporter.probes.simllm import start_server
    from exporter.probes.simplan import SimSettings
    from exporter.web.app import listen_error

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    settings = SimSettings(ttft=args.ttft, per_token=args.per_token, failure_rate=args.failure_rate,
                           seed=args.seed)
    try:
        server = await start_server(settings, args.host, args.port)
    except OSError as exc:
        raise listen_error(args.host, args.port, exc, "give another port with --port (or address with --host)"
                           ) from None
    log.info("simulated OpenAI-compatible model on %s", server.url)
    try:
        await _until_signal()
    finally:
        await server.close()
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    from exporter.commands.show import show_run, show_session

    settings = _settings(args)
    if args.what == "runs":
        return int(await show_run(settings, args.id, sys.stdout, sys.stderr))
    return int(await show_session(settings, args.id, sys.stdout, sys.stderr))


# --- the parser ----------------------------------------------------------------------------------


def _default(section: str, key: str) -> Any:
    """The settings model's default of ``section.key`` (by field name or alias)."""
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type)
    fields = model.model_fields
    field = fields.get(key) or next(f for f in fields.values() if f.alias == key)
    return field.default


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _setting_help(flag: str, what: str, default: str | None = None) -> str:
    """``what`` plus where else the setting comes from and its default (from the settings model)."""
    section, key, env = COMMON_SETTINGS[flag]
    if default is None:
        value = _default(section, key)
        default = "none" if value is None else _seconds(value) if isinstance(value, float) else str(value)
    return f"{what} (env {env}, config {section}.{key}; default: {default})"


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _database_flags(sp: argparse.ArgumentParser, db_default: str = "none, required") -> None:
    sp.add_argument("-c", "--config", type=Path, metavar="FILE",
                    help=f"YAML settings file (env {ENV_PREFIX}CONFIG; default: none, built-in defaults)")
    sp.add_argument("--db-url", metavar="URL", help=_setting_help(
        "--db-url", "agno's PostgreSQL database, postgresql://user:password@host:5432/dbname", db_default)
        .replace("(env DATABASE_URL,", f"(env DATABASE_URL or {ENV_PREFIX}DATABASE_URL,"))
    sp.add_argument("--schema", metavar="NAME", help=_setting_help(
        "--schema", "schema of agno's tables: the db_schema given to agno's PostgresDb"))
    sp.add_argument("--session-table", metavar="NAME", help=_setting_help(
        "--session-table", "agno's session table: the session_table given to agno's PostgresDb; another name "
        "than the default makes the runs table NAME_runs"))


def _state_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--state-url", metavar="URL", help=_setting_help(
        "--state-url", "a PostgreSQL database the exporter may write, for its own records of which runs it "
        "counted; needed when its role may only read agno's database", "agno's database"))


def _server_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--listen", metavar="HOST:PORT", help=_setting_help(
        "--listen", "address of the HTTP server for /metrics"))
    sp.add_argument("--web.config.file", dest="web_config_file", type=Path, metavar="FILE",
                    help="TLS and basic auth for /metrics, in Prometheus's exporter-toolkit web config format "
                         f"(env {ENV_PREFIX}WEB__CONFIG_FILE, config web.config_file; default: none, plain HTTP)")
    sp.add_argument("--log-level", choices=("debug", "info", "warning", "error"), metavar="LEVEL",
                    help=_setting_help("--log-level", "debug, info, warning or error"))


def _poll_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--poll-interval", metavar="DURATION", help=_setting_help(
        "--poll-interval", "how often to look for newly finished runs, e.g. 500ms, 5s, 1m"))


def _collect_flags(sp: argparse.ArgumentParser) -> None:
    """collect's flags, which run and check take too."""
    _database_flags(sp)
    _state_flag(sp)
    _poll_flag(sp)
    _server_flags(sp)


def build_parser() -> argparse.ArgumentParser:
    from exporter import __version__
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="agno-exporter", description=DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    p.add_argument("--version", action="version", version=f"agno-exporter {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".")

    sp = command("collect", "read finished agno runs from agno's database and serve their metrics on /metrics")
    _collect_flags(sp)
    sp.set_defaults(func=cmd_collect)

    sp = command("run", "like collect, and also run the agents listed in the config file's scheduler.jobs on "
                 "their schedules, to measure your model provider's latency")
    _collect_flags(sp)
    sp.set_defaults(func=cmd_run)

    sp = command("demo", "try it on this machine: an embedded PostgreSQL (its data kept in --data-dir), a "
                 "simulated model and example agents writing runs, with /metrics, in one process")
    _database_flags(sp, db_default="an embedded PostgreSQL started for the demo")
    _server_flags(sp)
    sp.add_argument("--data-dir", type=Path, default=Path(".agno-exporter/demo-pg"), metavar="DIR",
                    help="where the embedded PostgreSQL keeps its files (default: .agno-exporter/demo-pg)")
    sp.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                    help="stop after this many seconds (default: run until Ctrl-C)")
    sp.set_defaults(func=cmd_demo)

    sp = command("check", "check the settings, connect, and report which agno tables were found and whether "
                 "the exporter may write its records; exits 1 when it could not run. Takes collect's flags")
    _collect_flags(sp)
    sp.set_defaults(func=cmd_check)

    sp = command("create-index", "add an index on (updated_at, run_id) to each agno runs table read, built without "
                 "blocking agno, so each poll stays fast however large the table grows (needs the table's owner)")
    _database_flags(sp)
    sp.set_defaults(func=cmd_create_index)

    sp = command("create-notify-trigger", "add a trigger to each agno table read that notifies the exporter when a "
                 "run finishes, so runs reach /metrics within a fraction of a second instead of at the next poll "
                 "(needs the TRIGGER privilege on the tables and CREATE on agno's schema)")
    _database_flags(sp)
    sp.set_defaults(func=cmd_notify_trigger, drop=False)

    sp = command("drop-notify-trigger", "remove the triggers create-notify-trigger added, and their function "
                 "(needs the tables' owner)")
    _database_flags(sp)
    sp.set_defaults(func=cmd_notify_trigger, drop=True)

    sp = command("simulate-llm", "serve the built-in simulated OpenAI-compatible model, for trying agents "
                 "without an API key")
    sp.add_argument("--host", default="127.0.0.1", metavar="HOST",
                    help="address to listen on (default: 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8001, metavar="PORT", help="port to listen on (default: 8001)")
    sp.add_argument("--ttft", type=_non_negative, default=0.25, metavar="SECONDS",
                    help="time to first token of each answer, in seconds (default: 0.25)")
    sp.add_argument("--per-token", type=_non_negative, default=0.004, metavar="SECONDS",
                    help="time per further output token, in seconds (default: 0.004)")
    sp.add_argument("--failure-rate", type=_fraction, default=0.0, metavar="FRACTION",
                    help="share of requests answered with an HTTP 429 or 500 error, 0 to 1 (default: 0)")
    sp.add_argument("--seed", type=int, default=None, metavar="N",
                    help="random seed, for the same timings and failures every time (default: none, random)")
    sp.set_defaults(func=cmd_simulate_llm)

    for what, ident, shows in (
        ("runs", "RUN_ID", "one run's metrics as agno reports them: token totals, each model's tokens, tool calls"),
        ("sessions", "SESSION_ID", "a session's runs, the sum of their metrics, and agno's stored session "
                                   "totals beside it (a disagreement is marked)"),
    ):
        sp = command(what, f"{what} show {ident}: print {shows}")
        actions = sp.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")
        show = actions.add_parser("show", help=f"print {shows}", description=f"Print {shows}.")
        show.add_argument("id", metavar=ident, help=f"the {what[:-1]}'s id ({what[:-1]}_id in agno)")
        _database_flags(show)
        show.set_defaults(func=cmd_show, what=what)
    return p


def _socket_hint(exc: BaseException) -> str:
    """What libpq's "No such file or directory" on a Unix socket means here: most often the demo's embedded
    server (whose URL the demo prints), which runs only while ``agno-exporter demo`` does."""
    text = str(exc)
    if ".s.PGSQL." in text and "No such file or directory" in text:
        return ("; no server is listening on that socket (the demo's embedded PostgreSQL runs only while"
                " `agno-exporter demo` does)")
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors exit here, before the heavy imports

    import psycopg

    from exporter.commands.index import CreateIndexError
    from exporter.commands.notify_trigger import NotifyTriggerError
    from exporter.web.app import ListenError

    if getattr(args, "config", None) is None and os.environ.get(ENV_PREFIX + "CONFIG"):
        args.config = Path(os.environ[ENV_PREFIX + "CONFIG"])
    name = " ".join(["agno-exporter", args.command, *([args.action] if getattr(args, "action", None) else [])])
    try:
        return int(asyncio.run(args.func(args)))
    except ConfigError as exc:
        print(f"{name}: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except (ListenError, CreateIndexError, NotifyTriggerError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:  # the one-shot commands; collect and run retry instead
        from exporter.db import one_line, redact

        print(f"{name}: database error: {redact(one_line(exc))}{_socket_hint(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
