"""Mistakes a user makes, answered in one line through the real command line (no traceback, non-zero exit):
a port in use, create-index without the privilege or the schema, a read-only role with nowhere to
write, a configuration error that names its field and where it came from, an unreachable database."""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.e2e.test_exactly_once import stored_tokens, write_runs
from tests.helpers.cli_support import Running, cli, one_line_error
from tests.helpers.scrape import Samples, scrape_text
from tests.helpers.support import PgServer, free_port


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("command", ["collect", "run", "demo"])
def test_metrics_port_in_use(command: str, busy_port: int, db_url: str) -> None:
    proc = cli(command, "--db-url", db_url, "--listen", f"127.0.0.1:{busy_port}")
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert line == (f"agno-exporter {command}: cannot listen on 127.0.0.1:{busy_port}: the address is already in use"
                    " (by another program, or another agno-exporter); give another address with --listen HOST:PORT"
                    " (or web.listen, AGNO_EXPORTER_LISTEN)")


def test_simulated_model_port_in_use(busy_port: int) -> None:
    line = one_line_error(cli("simulate-llm", "--port", str(busy_port)))
    assert f"cannot listen on 127.0.0.1:{busy_port}: the address is already in use" in line
    assert line.endswith("give another port with --port (or address with --host)")


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, parts.fragment))


@pytest.fixture
def reader_role(db_url: str) -> Iterator[str]:
    """A role that may only read agno's tables (created by a real agno run), as its URL."""
    role = "reader_" + uuid.uuid4().hex[:8]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        yield role
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def grant_read_only(db_url: str, role: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'GRANT USAGE ON SCHEMA ai TO "{role}"')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA ai TO "{role}"')
        conn.execute(f'REVOKE CREATE ON SCHEMA public FROM "{role}"')
        conn.execute(f'REVOKE CREATE ON DATABASE "{urlsplit(db_url).path.lstrip("/")}" FROM PUBLIC')


def test_create_index_names_the_privilege_or_the_schema_it_misses(db_url: str, sim_url: str,
                                                                  reader_role: str) -> None:
    # no agno schema yet
    line = one_line_error(cli("create-index", "--db-url", db_url))
    assert line == ("agno-exporter create-index: no schema 'ai' in this database: give agno's db_schema with"
                    " --schema (database.schema; agno's default is ai)")
    asyncio.run(write_runs(db_url, sim_url, 1))  # agno creates its tables
    grant_read_only(db_url, reader_role)
    line = one_line_error(cli("create-index", "--db-url", as_role(db_url, reader_role)))
    assert line == (f"agno-exporter create-index: role '{reader_role}' does not own ai.agno_runs and has no CREATE"
                    " on schema ai: CREATE INDEX needs a role that owns ai.agno_runs (agno's own role, or a member"
                    " of it) and has CREATE on schema ai; run create-index with that role's --db-url")
    line = one_line_error(cli("create-index", "--db-url", db_url, "--session-table", "my_sessions"))
    assert line.startswith("agno-exporter create-index: no table ai.my_sessions_runs in this database:")
    # agno's own role may: the same command then works
    proc = cli("create-index", "--db-url", db_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("created index ai.agno_runs_exporter_updated_at on ai.agno_runs"
                                   " (updated_at, run_id)")


def test_read_only_role_without_state_url_says_what_check_says_once(db_url: str, sim_url: str, reader_role: str,
                                                                    pg_server: PgServer) -> None:
    asyncio.run(write_runs(db_url, sim_url, 2))
    grant_read_only(db_url, reader_role)
    reader = as_role(db_url, reader_role)
    check = cli("check", "--db-url", reader)
    assert check.returncode == 1
    (advice,) = [line.removeprefix("[FAIL] state: ") for line in check.stdout.splitlines()
                 if line.startswith("[FAIL] state: ")]
    assert advice == ("role may not create or write schema 'agno_exporter'; point state.url (--state-url) at a"
                      " Postgres it may write")

    exporter = Running("collect", "--db-url", reader, "--listen", "127.0.0.1:0", "--poll-interval", "100ms")
    try:
        port = exporter.metrics_port()
        exporter.wait_for(re.escape(advice))

        async def failing() -> Samples:
            for _ in range(600):  # backoff doubles from 0.2 s: three failures within seconds
                s = Samples(await scrape_text(port))
                if s.sum("agno_exporter_poll_errors_total", reason="state") >= 3:
                    return s
                await asyncio.sleep(0.1)
            raise AssertionError(exporter.stderr())

        s = asyncio.run(failing())
        assert s.sum("agno_exporter_poll_errors_total", reason="query") == 0
        assert s.sum("agno_exporter_poll_errors_total", reason="database") == 0
        assert s.sum("agno_exporter_up") == 0
        assert exporter.stderr().count(advice) == 1, exporter.stderr()  # said once, counted every time
    finally:
        exporter.close()

    # pointed at a database it may write, check is content and the same role counts every run
    state_url = pg_server.create_database()
    try:
        check = cli("check", "--db-url", reader, env={"AGNO_EXPORTER_STATE_URL": state_url})
        assert check.returncode == 0 and "[ok] state: may write its state in schema 'agno_exporter'" in check.stdout
        exporter = Running("collect", "--db-url", reader, "--listen", "127.0.0.1:0", "--poll-interval", "100ms",
                           "--state-url", state_url)
        try:
            port = exporter.metrics_port()
            with psycopg.connect(db_url) as conn:
                truth = stored_tokens(conn)

            async def counted() -> Samples:
                for _ in range(600):
                    s = Samples(await scrape_text(port))
                    if s.sum("agno_runs_total") >= 2:
                        return s
                    await asyncio.sleep(0.1)
                raise AssertionError(exporter.stderr())

            s = asyncio.run(counted())
            assert s.sum("agno_runs_total") == 2 and s.sum("agno_tokens_total") == truth
            assert s.sum("agno_exporter_poll_errors_total") == 0
        finally:
            exporter.close()
    finally:
        pg_server.drop_database(state_url)


def test_config_errors_name_the_field_and_where_it_came_from(tmp_path: Path) -> None:
    config = tmp_path / "exporter.yaml"
    config.write_text("database:\n  url: !env NOPE_VAR_FOR_TEST\ncollector:\n  poll_interval: 2s\n")
    proc = cli("check", "-c", str(config))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{config}: database.url: !env NOPE_VAR_FOR_TEST: the environment variable is not set (line 2)" \
        in proc.stderr.splitlines()

    proc = cli("check", "--db-url", "postgresql://localhost/agno",
               env={"AGNO_EXPORTER_COLLECTOR__POLL_INTERVALL": "2s"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("environment variable AGNO_EXPORTER_COLLECTOR__POLL_INTERVALL: collector.poll_intervall: unknown key"
            " (did you mean poll_interval?)") in proc.stderr.splitlines()

    proc = cli("check", "-c", str(config), "--db-url", "postgresql://localhost/agno", "--poll-interval", "soon",
               env={"NOPE_VAR_FOR_TEST": "postgresql://localhost/agno"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("--poll-interval: collector.poll_interval: 'soon' is not a duration (use e.g. 500ms, 5s, 2m, 1h)"
            in proc.stderr.splitlines())


@pytest.mark.parametrize("command", [("runs", "show", "some-run"), ("sessions", "show", "some-session"),
                                     ("create-index",)])
def test_unreachable_database_is_one_line_without_the_password(command: tuple[str, ...]) -> None:
    url = f"postgresql://agno:s3cret-pw@127.0.0.1:{free_port()}/agno"
    line = one_line_error(cli(*command, "--db-url", url))
    name = " ".join(command[:2]) if len(command) > 1 else command[0]
    assert line.startswith(f"agno-exporter {name}: database error: connection failed:"), line
    assert "s3cret-pw" not in line


def test_demo_data_dir_and_web_config_file_mistakes(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = cli("demo", "--data-dir", str(blocker / "pg"), "--duration", "1")
    assert proc.returncode == 2
    assert one_line_error(proc) == f"agno-exporter demo: --data-dir {blocker / 'pg'}: Not a directory"
    proc = cli("collect", "--db-url", "postgresql://localhost/agno", "--listen", "127.0.0.1:0",
               "--web.config.file", str(tmp_path / "missing.yml"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"web.config_file: {tmp_path / 'missing.yml'}: cannot read: No such file or directory" in proc.stderr


@pytest.mark.parametrize("command", [("collect",), ("runs", "show", "some-run"), ("sessions", "show", "some-session"),
                                     ("check",), ("create-index",), ("create-notify-trigger",)])
def test_no_database_url_is_invalid_configuration_for_every_command(tmp_path: Path, command: tuple[str, ...]) -> None:
    # One exit status for one mistake: `runs show` exited 1 and `check` printed "[ok] configuration is
    # valid" above its failure, while `collect` said invalid configuration with 2 (README: 2 = invalid
    # configuration or command line). cwd is empty, so no config file is found there either.
    proc = cli(*command, cwd=tmp_path, timeout=60)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said
    assert "Traceback" not in said and "configuration is valid" not in said
    assert "database.url: not set (use --db-url, DATABASE_URL or the config file)" in said


def test_a_unix_socket_with_no_server_says_the_demo_server_runs_only_with_the_demo(tmp_path: Path) -> None:
    """What a user meets running `runs show` with the URL the demo printed, after the demo stopped."""
    url = f"postgresql://postgres@/postgres?host={tmp_path}"
    line = one_line_error(cli("runs", "show", "some-run", "--db-url", url))
    assert line.startswith("agno-exporter runs show: database error: ") and "No such file" in line, line
    assert line.endswith("no server is listening on that socket (the demo's embedded PostgreSQL runs only while"
                         " `agno-exporter demo` does)"), line


def test_check_says_an_unreachable_database_in_one_line() -> None:
    """libpq's message has a newline and a tab ("Is the server running ..."): one [FAIL] line all the same."""
    proc = cli("check", "--db-url", f"postgresql://agno:pw@127.0.0.1:{free_port()}/agno")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    fail = [line for line in lines if "cannot connect or read" in line]
    assert len(fail) == 1 and fail[0].startswith("[FAIL] database.url: cannot connect or read: "), lines
    assert "Is the server running" in fail[0] and not any(line.startswith("\t") for line in lines), lines
