"""Config: strict schema, errors that name the field, env overrides, secrets by indirection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.config import ConfigError, load_settings, parse_duration


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_defaults_reproduce_the_seed() -> None:
    s = load_settings(None, environ={})
    (job,) = s.scheduler.jobs
    assert job.agent is not None and job.agent.name == "BackgroundMetricsAgent"
    assert job.agent.model.id == "gpt-4o-mini" and job.agent.tools == ("yfinance",)
    assert job.prompt == "What is the stock price of AAPL?"
    assert s.database.schema_name == "ai" and s.database.runs_table_name == "agno_runs"


def test_custom_session_table_names_the_runs_table() -> None:
    s = load_settings(None, environ={}, overrides={"database": {"session_table": "my_sessions"}})
    assert s.database.runs_table_name == "my_sessions_runs"


def test_tables_named_in_the_config_restrict_reading_to_them() -> None:
    assert not load_settings(None, environ={}).database.tables_explicit  # every agno table of the schema
    for environ in ({"AGNO_EXPORTER_DATABASE__SESSION_TABLE": "agno_sessions"},
                    {"AGNO_EXPORTER_DATABASE__RUNS_TABLE": "my_runs"}):
        assert load_settings(None, environ=environ).database.tables_explicit, environ


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("collector:\n  poll_intervall: 5s\n", "collector.poll_intervall: unknown key"),
        ("collector:\n  poll_interval: soon\n", "collector.poll_interval: 'soon' is not a duration"),
        ("collector:\n  poll_interval: 1ms\n", "collector.poll_interval: must be at least 50ms"),
        ("collector:\n  discovery_interval: 100ms\n", "collector.discovery_interval: must be at least 1s"),
        ("web:\n  listen: nowhere\n", "web.listen: 'nowhere' is not host:port"),
        ("database:\n  schema: 'ai; drop'\n", "database.schema: 'ai; drop' is not a plain SQL identifier"),
        ("metrics:\n  label_value_limit: 0\n", "metrics.label_value_limit"),
        ("scheduler:\n  jobs:\n    - name: a\n      prompt: hi\n",
         "scheduler.jobs.0: give exactly one of agent or team"),
        ("scheduler:\n  jobs:\n    - name: a\n      prompt: hi\n      agent: {name: A, tools: [hammer]}\n"
         "      interval: 5s\n", "scheduler.jobs.0.agent.tools: unknown tool(s) ['hammer']"),
        ("scheduler:\n  jobs:\n    - name: a\n      prompt: hi\n      agent: {name: A}\n      cron: '99 * * * *'\n",
         "scheduler.jobs.0: cron '99 * * * *'"),
        ("state:\n  backend: sqlite\n", "state.backend: unknown key"),
        ("nonsense: 1\n", "nonsense: unknown key"),
        ("- a\n- b\n", "the top level must be a mapping"),
    ],
)
def test_every_error_names_its_field(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert needle in str(info.value)


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "collector:\n  batch_size: -1\n  poll_interval: x\n"), environ={})
    assert "collector.batch_size" in str(info.value) and "collector.poll_interval" in str(info.value)


def test_environment_overrides_and_rejects_unknown_variables() -> None:
    env = {"DATABASE_URL": "postgresql://u:secret@db/agno", "AGNO_EXPORTER_COLLECTOR__POLL_INTERVAL": "2s",
           "AGNO_EXPORTER_LISTEN": "127.0.0.1:9999"}
    s = load_settings(None, environ=env)
    assert s.collector.poll_interval == 2.0 and s.web.listen == "127.0.0.1:9999"
    assert s.database.url is not None and "secret" not in repr(s) and "secret" not in str(s.database)
    with pytest.raises(ConfigError, match="AGNO_EXPORTER_COLECTOR__POLL_INTERVAL: unknown setting"):
        load_settings(None, environ={"AGNO_EXPORTER_COLECTOR__POLL_INTERVAL": "2s"})
    with pytest.raises(ConfigError, match="AGNO_EXPORTER_POLLING: unknown variable"):
        load_settings(None, environ={"AGNO_EXPORTER_POLLING": "2s"})


def test_secrets_by_indirection(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("postgresql://u:filesecret@db/agno\n")
    s = load_settings(write(tmp_path, f"database:\n  url: !file {tmp_path / 'pw'}\n"), environ={})
    assert s.database.url is not None and s.database.url.get_secret_value() == "postgresql://u:filesecret@db/agno"
    s = load_settings(write(tmp_path, "database:\n  url: !env MY_DB\n"), environ={"MY_DB": "postgresql://x"})
    with pytest.raises(ConfigError, match="!env NOPE_NOT_SET"):
        load_settings(write(tmp_path, "database:\n  url: !env NOPE_NOT_SET\n"), environ={})


def test_errors_say_where_the_value_came_from(tmp_path: Path) -> None:
    """A tag that cannot be resolved names the file, the field and the line; every one is reported, and the
    rest of the file is still checked. A value from the environment or a flag says so."""
    path = write(tmp_path, "database:\n  url: !env NOPE_A\nstate:\n  url: !file /nonexistent/pw\n"
                           "scheduler:\n  jobs:\n    - name: a\n      prompt: !env NOPE_B\n"
                           "      agent: {name: A}\n      interval: 5s\ncollector:\n  batch_size: -1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value).splitlines() == [
        f"{path}: database.url: !env NOPE_A: the environment variable is not set (line 2)",
        f"{path}: state.url: !file /nonexistent/pw: No such file or directory (line 4)",
        f"{path}: scheduler.jobs.0.prompt: !env NOPE_B: the environment variable is not set (line 8)",
        f"{path}: collector.batch_size: Input should be greater than or equal to 1",
    ]
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"AGNO_EXPORTER_TRACES__FORWARD_AGNO_SPANS": "true",
                                     "AGNO_EXPORTER_METRICS__TOP_SESSIONS": "!env NOPE_C"})
    assert str(info.value).splitlines() == [
        "environment variable AGNO_EXPORTER_METRICS__TOP_SESSIONS: metrics.top_sessions: !env NOPE_C: the"
        " environment variable is not set",
        "environment variable AGNO_EXPORTER_TRACES__FORWARD_AGNO_SPANS: traces: forward_agno_spans needs traces on:"
        " set traces.endpoint or OTEL_EXPORTER_OTLP_ENDPOINT (and leave traces.enabled unset or true)",
    ]
    with pytest.raises(ConfigError, match=r"^--schema: database\.schema: 'a b' is not a plain SQL identifier"):
        load_settings(None, environ={}, overrides={"database": {"schema": "a b"}},
                      override_origins={("database", "schema"): "--schema"})


def test_durations() -> None:
    assert parse_duration("250ms") == 0.25 and parse_duration("2m") == 120 and parse_duration(3) == 3.0
    assert parse_duration("1.5h") == 5400
    with pytest.raises(ValueError):
        parse_duration("-1s")


def test_forwarding_agno_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings(None, environ={})
    assert not s.traces.forward_agno_spans
    assert (s.database.traces_table, s.database.spans_table) == ("agno_traces", "agno_spans")  # agno's defaults
    env = {"AGNO_EXPORTER_TRACES__FORWARD_AGNO_SPANS": "true", "AGNO_EXPORTER_TRACES__ENDPOINT": "http://otel:4318",
           "AGNO_EXPORTER_DATABASE__SPANS_TABLE": "my_spans"}
    s = load_settings(None, environ=env)
    assert s.traces.forward_agno_spans and s.database.spans_table == "my_spans"
    # Forwarding without anywhere to send to is a configuration error, not a silent no-op.
    with pytest.raises(ConfigError, match="traces: forward_agno_spans needs traces on"):
        load_settings(None, environ={"AGNO_EXPORTER_TRACES__FORWARD_AGNO_SPANS": "true"})
    with pytest.raises(ConfigError, match="traces: forward_agno_spans needs traces on"):
        load_settings(None, environ={**env, "AGNO_EXPORTER_TRACES__ENABLED": "false"})
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318")
    assert load_settings(None, environ={"AGNO_EXPORTER_TRACES__FORWARD_AGNO_SPANS": "yes"}).traces.forward_agno_spans
    with pytest.raises(ConfigError, match=r"database\.spans_table: 'a b' is not a plain SQL identifier"):
        load_settings(None, environ={"AGNO_EXPORTER_DATABASE__SPANS_TABLE": "a b"})


def test_wake_settings_are_validated_naming_the_field() -> None:
    def collector(**values: Any) -> Any:
        return load_settings(None, environ={}, overrides={"collector": values}).collector

    assert collector().wake_on_notify == "auto" and collector().wake_min_interval == 0.05
    assert collector(wake_on_notify="off").wake_on_notify is False
    assert collector(wake_min_interval="10ms").wake_min_interval == 0.01
    with pytest.raises(ConfigError, match=r"collector\.wake_on_notify: 'maybe' is not auto, true or false"):
        collector(wake_on_notify="maybe")
    with pytest.raises(ConfigError, match=r"collector\.wake_min_interval: 'soon' is not a duration"):
        collector(wake_min_interval="soon")
