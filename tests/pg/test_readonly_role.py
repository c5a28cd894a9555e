"""A SELECT-only role on agno's database: the state lives in another database, same guarantees."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg

from tests.e2e.test_exactly_once import stored_tokens, write_runs
from tests.helpers.scrape import scrape_until
from tests.helpers.support import PgServer
from tests.pg.test_collect_e2e import make_service


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


def test_select_only_role_with_state_elsewhere(db_url: str, sim_url: str, pg_server: PgServer) -> None:
    asyncio.run(write_runs(db_url, sim_url, 2))
    role = "ro_" + uuid.uuid4().hex[:8]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT USAGE ON SCHEMA ai TO "{role}"')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA ai TO "{role}"')
        conn.execute(f'REVOKE CREATE ON SCHEMA public FROM "{role}"')
        conn.execute(f'REVOKE CREATE ON DATABASE "{urlsplit(db_url).path.lstrip("/")}" FROM PUBLIC')
        truth = stored_tokens(conn)
    state_url = pg_server.create_database()
    try:
        async def main() -> None:
            for restart in range(2):  # a restart keeps the totals (from the other database)
                service = make_service(as_user(db_url, role), state={"url": state_url})
                await service.start()
                try:
                    s = await scrape_until(service.port, lambda s: s.sum("agno_runs_total") >= 2)
                    assert s.sum("agno_runs_total") == 2, restart
                    assert s.sum("agno_tokens_total") == truth
                    assert s.sum("agno_exporter_rows_skipped_total") == 0
                finally:
                    await service.stop()

        asyncio.run(main())
        with psycopg.connect(db_url) as conn:  # nothing was written into agno's database
            assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'agno_exporter'"
                                ).fetchone() == (0,)
        with psycopg.connect(state_url) as conn:
            assert conn.execute("SELECT count(*) FROM agno_exporter.runs").fetchone() == (2,)
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
            conn.execute(f'DROP OWNED BY "{role}"')
        pg_server.drop_database(db_url)
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')
        pg_server.drop_database(state_url)
