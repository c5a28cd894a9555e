from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.agno2_support import agno2_python  # noqa: F401  (fixture: the agno 2.9 virtualenv's python)
from tests.helpers.support import PgServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    yield server
    server.stop()


@pytest.fixture
def db_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the real server, dropped after the test."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    """The project's simulated OpenAI-compatible model, on a loop of its own for the whole session."""
    from exporter.probes.simllm import start_server
    from exporter.probes.simplan import SimSettings
    from tests.helpers.support import ThreadLoop

    loop = ThreadLoop()
    server = loop.run(start_server(SimSettings(ttft=0.03, per_token=0.001, seed=7)))
    yield server.url
    loop.run(server.close())
    loop.close()


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hermetic OTel environment; a short per-request timeout so a refused export fails at once
    (the HTTP exporter retries refused connections with 1 s, 2 s, 4 s... backoff within its timeout)."""
    for var in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_COMPRESSION",
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
                "OTEL_EXPORTER_OTLP_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0.5")  # seconds in the Python SDK
    yield
