"""The settings people set most, through the command line as a user types them: each flag works, and so do
its environment variable and its config key; the top-level help lists every command; every flag's help
gives its default (and unit), its environment variable and config key; the README documents exactly
the commands and flags ``--help`` shows."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from agno.agent import Agent
from agno.db.postgres import PostgresDb
from agno.models.openai import OpenAIChat

from exporter.commands.cli import build_parser
from exporter.config import COMMON_SETTINGS, load_settings
from tests.helpers.agno_app import DONE, get_stock_price
from tests.helpers.cli_support import Running, cli, one_line_error
from tests.helpers.paths import ROOT
from tests.helpers.scrape import Samples, scrape_text
from tests.helpers.support import sqlalchemy_url


def run_in_custom_tables(db_url: str, sim_url: str) -> Any:
    """One real agno run stored with PostgresDb(db_schema="myapp", session_table="my_sessions")."""

    async def main() -> Any:
        db = PostgresDb(db_url=sqlalchemy_url(db_url), db_schema="myapp", session_table="my_sessions")
        model = OpenAIChat(id="gpt-4o-mini", base_url=sim_url, api_key="sim", max_retries=0)
        agent = Agent(name="CustomTablesAgent", model=model, db=db, tools=[get_stock_price], telemetry=False)
        try:
            pending = await agent.arun("What is the stock price of AAPL?", background=True)
            for _ in range(300):
                out = await agent.aget_run_output(run_id=pending.run_id, session_id=pending.session_id)
                if out is not None and out.status in DONE:
                    return out
                await asyncio.sleep(0.05)
            raise AssertionError("the run did not finish")
        finally:
            from agno.run.background import await_background_runs

            await await_background_runs(timeout=10)
            await model.get_async_client().close()
            db.db_engine.dispose()

    return asyncio.run(main())


def test_schema_and_session_table_by_flag_environment_and_config_file(db_url: str, sim_url: str,
                                                                      tmp_path: Path) -> None:
    out = run_in_custom_tables(db_url, sim_url)
    assert out.metrics.total_tokens > 0
    total = f"total_tokens={out.metrics.total_tokens},"
    # agno's default tables are not where this app writes
    assert one_line_error(cli("runs", "show", out.run_id, "--db-url", db_url)).startswith(
        f"no run '{out.run_id}' in schema 'ai'")

    by_flag = cli("runs", "show", out.run_id, "--db-url", db_url, "--schema", "myapp", "--session-table", "my_sessions")
    assert by_flag.returncode == 0 and total in by_flag.stdout, by_flag.stdout + by_flag.stderr

    by_env = cli("sessions", "show", out.session_id, "--db-url", db_url,
                 env={"AGNO_EXPORTER_SCHEMA": "myapp", "AGNO_EXPORTER_SESSION_TABLE": "my_sessions"})
    assert by_env.returncode == 0, by_env.stderr
    assert re.search(rf"^  total_tokens\s+{out.metrics.total_tokens}\s+{out.metrics.total_tokens}$", by_env.stdout,
                     re.M), by_env.stdout

    config = tmp_path / "exporter.yaml"
    config.write_text("database:\n  schema: myapp\n  session_table: my_sessions\n")
    by_file = cli("runs", "show", out.run_id, "--db-url", db_url, "-c", str(config))
    assert by_file.returncode == 0 and total in by_file.stdout, by_file.stderr
    by_file_env = cli("runs", "show", out.run_id, "--db-url", db_url, env={"AGNO_EXPORTER_CONFIG": str(config)})
    assert by_file_env.returncode == 0 and total in by_file_env.stdout, by_file_env.stderr
    # a flag wins over the config file
    assert one_line_error(cli("runs", "show", out.run_id, "--db-url", db_url, "-c", str(config),
                              "--schema", "ai")).startswith(f"no run '{out.run_id}' in schema 'ai'")

    # the collector reads the same tables and polls as often as asked
    exporter = Running("collect", "--db-url", db_url, "--schema", "myapp", "--session-table", "my_sessions",
                       "--listen", "127.0.0.1:0", "--poll-interval", "100ms")
    try:
        port = exporter.metrics_port()

        async def counted() -> Samples:
            for _ in range(600):
                s = Samples(await scrape_text(port))
                if s.sum("agno_runs_total"):
                    return s
                await asyncio.sleep(0.1)
            raise AssertionError(exporter.stderr())

        s = asyncio.run(counted())
        assert s.sum("agno_runs_total") == 1
        assert s.sum("agno_tokens_total") == out.metrics.input_tokens + out.metrics.output_tokens
        assert " INFO " in exporter.stderr()  # the default level (test_log_level_warning_... raises it)
    finally:
        exporter.close()


def test_log_level_warning_keeps_info_lines_out(db_url: str) -> None:
    exporter = Running("collect", "--db-url", db_url, "--listen", "127.0.0.1:0", "--log-level", "warning",
                       env={"AGNO_EXPORTER_POLL_INTERVAL": "100ms"})
    try:
        # agno's tables do not exist in this database: the collector warns, and says nothing at INFO
        exporter.wait_for(r" WARNING ")
        assert " INFO " not in exporter.stderr()
    finally:
        exporter.close()


def test_every_common_setting_is_a_flag_an_environment_variable_and_a_config_key() -> None:
    values = {"--db-url": "postgresql://u@db/agno", "--schema": "myapp", "--session-table": "my_sessions",
              "--state-url": "postgresql://u@state/exporter", "--poll-interval": "2s", "--listen": "127.0.0.1:9999",
              "--log-level": "debug"}
    assert set(values) == set(COMMON_SETTINGS)
    expected = {"--poll-interval": 2.0}
    for flag, (section, key, env) in COMMON_SETTINGS.items():
        want = expected.get(flag, values[flag])
        by_env = load_settings(None, environ={env: values[flag]})
        by_flag = load_settings(None, environ={}, overrides={section: {key: values[flag]}})

        def read(settings: Any, section: str = section, key: str = key) -> Any:
            model = getattr(settings, section)
            attr = "schema_name" if key == "schema" else key
            value = getattr(model, attr)
            return value.get_secret_value() if hasattr(value, "get_secret_value") else value

        assert read(by_env) == read(by_flag) == want, flag
        args = build_parser().parse_args(["collect", flag, values[flag]])
        assert getattr(args, flag[2:].replace("-", "_")) == values[flag]


# --- help ----------------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """command path ("runs show") -> its parser, for every command that runs something."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = subcommands(sub)
                if nested:
                    out.update({f"{name} {k}": v for k, v in nested.items()})
                else:
                    out[name] = sub
    return out


def flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of the parser (``-c`` and ``--config`` both) -> its action."""
    return {opt: action for action in parser._actions if action.dest not in ("help", "version")
            for opt in action.option_strings}


COMMANDS = subcommands(build_parser())


def test_top_level_help_lists_every_command() -> None:
    proc = cli("--help")
    assert proc.returncode == 0
    listed = set(re.findall(r"^    ([a-z-]+)\s", proc.stdout, re.M))
    assert listed == {path.split()[0] for path in COMMANDS} == {
        "collect", "run", "demo", "check", "create-index", "create-notify-trigger", "drop-notify-trigger",
        "simulate-llm", "runs", "sessions"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_says_its_default_and_where_else_it_is_set(command: str) -> None:
    proc = cli(*command.split(), "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for flag, action in flags(COMMANDS[command]).items():
        assert flag in text, (command, flag)
        assert action.help and "default" in action.help, (command, flag)
        if flag in COMMON_SETTINGS:
            section, key, env = COMMON_SETTINGS[flag]
            assert f"env {env}" in action.help and f"config {section}.{key}" in action.help, (command, flag)
        if action.metavar in ("SECONDS", "DURATION"):  # a time says its unit
            assert re.search(r"seconds|\d(ms|s|m)\b", action.help), (command, flag)
    # flags and setting names are the user's words; the prose around them must not be ours
    prose = re.sub(r"(--[\w.-]+|\bconfig [\w.]+|\benv [A-Z_]+( or [A-Z_]+)?)", "", text)
    for word in ("sidecar", "the seed", "collector", "outbox", "watermark", "probe", "state"):
        assert not re.search(rf"\b{word}", prose), (command, word, prose)


# --- README --------------------------------------------------------------------------------------


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_readme_command_reference_matches_the_help() -> None:
    """Each command's row in the README lists exactly its flags; each setting's row gives the help's
    environment variable, config key and default."""
    section = readme_section("Command reference")
    row = r"^\| `agno-exporter ([a-z -]+?)(?: [A-Z_]+)?` \|.*?\| (.*) \|$"
    rows = {m.group(1): m.group(2) for m in re.finditer(row, section, re.M)}
    assert set(rows) == set(COMMANDS), sorted(rows)
    for command, cell in rows.items():
        documented = set(re.findall(r"`(-[-\w.]+)", cell))
        assert documented == set(flags(COMMANDS[command])), command
    settings = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| `(--[\w-]+)[^`]*` \| (.+?) \| `([\w.]+)` \| (.+?) \|$", section, re.M)}
    assert set(settings) == set(COMMON_SETTINGS)
    for flag, (envs, key, default) in settings.items():
        section_name, key_name, env = COMMON_SETTINGS[flag]
        assert f"`{env}`" in envs and key == f"{section_name}.{key_name}", flag
        help_text = flags(COMMANDS["collect"])[flag].help or ""
        help_default = help_text.rsplit("default: ", 1)[1].rstrip(")")
        assert default.strip("`") == help_default, flag


def test_readme_quick_start_commands_parse() -> None:
    """Every ``agno-exporter ...`` line in the README's shell blocks is a command line the parser accepts."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    commands = [line for line in lines if line.startswith("agno-exporter ")]
    assert len(commands) >= 8
    for line in commands:
        argv = ["postgresql://db" if a == "..." else a for a in line.split()[1:]]
        build_parser().parse_args(argv)  # exits (fails the test) on an unknown command or flag
