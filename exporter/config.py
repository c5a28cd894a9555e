"""Settings: a YAML file plus environment variables, validated strictly.

Two stages, as in query-exporter: a strict schema (unknown keys rejected, durations like ``"5m"``
parsed, ranges checked) and then cross-field checks. The result is a frozen :class:`Settings`.
Every error names the dotted location of the field (``collector.poll_interval: ...``), so a
newcomer can fix the file without reading code. Secrets come by indirection (``!env VAR``,
``!file path``) and are kept as :class:`pydantic.SecretStr`, so they never reach logs or pages.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.cron import cron_trigger  # the parser the scheduler uses (0 or 7 = Sunday)

ENV_PREFIX = "AGNO_EXPORTER_"
DEFAULT_LISTEN = "0.0.0.0:9477"
IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


class ConfigError(Exception):
    """Invalid configuration; the message lists every problem, each naming its field."""


# ---------------------------------------------------------------------------------------------
# value types

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"250ms"``, ``"5s"``, ``"2m"``, ``"1h"``, ``"1d"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s, 2m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 5s, 2m, 1h)")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _identifier(value: str) -> str:
    if not IDENT_RE.match(value):
        raise ValueError(f"{value!r} is not a plain SQL identifier (letters, digits, _; at most 63)")
    return value


Identifier = Annotated[str, BeforeValidator(lambda v: _identifier(str(v)))]


_WAKE_WORDS = {"auto": "auto", "true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _wake_mode(value: Any) -> Any:
    """``auto``, or a boolean (YAML's, or true/false/yes/no/on/off from the environment)."""
    word = _WAKE_WORDS.get(value.strip().lower()) if isinstance(value, str) else value
    if isinstance(word, bool) or word == "auto":
        return word
    raise ValueError(f"{value!r} is not auto, true or false")


WakeMode = Annotated[Literal["auto"] | bool, BeforeValidator(_wake_mode)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


# ---------------------------------------------------------------------------------------------
# sections


class DatabaseSettings(_Strict):
    url: SecretStr | None = Field(
        default=None, description="postgresql:// URL of agno's database; none = embedded (demo only)"
    )
    schema_name: Identifier = Field(default="ai", alias="schema")
    session_table: Identifier = "agno_sessions"
    runs_table: Identifier | None = Field(
        default=None, description="default: agno_runs, or <session_table>_runs for a custom session_table"
    )
    # agno's PostgresDb(traces_table=..., spans_table=...): where agno's own tracing writes
    traces_table: Identifier = "agno_traces"
    spans_table: Identifier = "agno_spans"
    layout: Literal["auto", "v3", "v2", "mixed"] = "auto"
    statement_timeout: Duration = 30.0
    connect_timeout: Duration = 10.0
    application_name: str = "agno-exporter"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def tables_explicit(self) -> bool:
        """``session_table`` or ``runs_table`` set (even to agno's default): read only those tables,
        instead of every agno table found in the schema."""
        return bool({"session_table", "runs_table"} & self.model_fields_set)

    @property
    def runs_table_name(self) -> str:
        if self.runs_table:
            return self.runs_table
        if self.session_table != "agno_sessions":
            return f"{self.session_table}_runs"
        return "agno_runs"


class CollectorSettings(_Strict):
    enabled: bool = True
    poll_interval: Duration = 5.0
    # How often agno's tables are looked for again (a new app's table, a migration); every poll while
    # none is found.
    discovery_interval: Duration = 300.0
    batch_size: int = Field(default=500, ge=1, le=100_000)
    # How far an app host's clock (agno writes updated_at from it) may be behind the database's.
    clock_skew: Duration = 10.0
    # The re-read window never reaches further back than this, whatever transactions stay open.
    max_lookback: Duration = 3600.0
    backfill: bool = True
    max_backoff: Duration = 60.0
    # A run PENDING/RUNNING for longer than this counts as stuck (agno#4174); well above normal durations.
    stuck_after: Duration = 900.0
    # agno saves a session's totals after its run's row: compare them this long after the last run counted
    session_check_delay: Duration = 5.0
    # Wake the poll loop on agno's commits (ingest/notify.py): auto = while a table read has the trigger
    wake_on_notify: WakeMode = "auto"
    # Polls started by notifications are this far apart at least: at most 1/wake_min_interval polls a second
    wake_min_interval: Duration = 0.05

    @field_validator("poll_interval")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v < 0.05:
            raise ValueError("must be at least 50ms")
        return v

    @field_validator("discovery_interval")
    @classmethod
    def _discovery(cls, v: float) -> float:
        if v < 1:
            raise ValueError("must be at least 1s")
        return v


class StateSettings(_Strict):
    schema_name: Identifier = Field(default="agno_exporter", alias="schema")
    url: SecretStr | None = Field(default=None, description="Postgres for the state; default: database.url")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PriceSpec(_Strict):
    """US dollars per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)


class MetricsSettings(_Strict):
    label_value_limit: int = Field(default=300, ge=1, le=100_000)
    # model id (exact; its dated snapshots match too) -> price; merged over the shipped, dated table
    # unless default_prices is off
    prices: dict[str, PriceSpec] = Field(default_factory=dict)
    default_prices: bool = True
    top_sessions: int = Field(default=10, ge=0, le=1000)
    top_sessions_window: Duration = 86400.0


class WebSettings(_Strict):
    listen: str = DEFAULT_LISTEN
    config_file: Path | None = Field(default=None, description="exporter-toolkit style web config (TLS, auth)")

    @field_validator("listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        parse_listen(v)
        return v


class TracesSettings(_Strict):
    enabled: bool | None = Field(default=None, description="default: on when an OTLP endpoint is set")
    endpoint: str | None = None
    protocol: Literal["http/protobuf", "grpc"] | None = None
    capture_content: bool = False
    batch_size: int = Field(default=256, ge=1, le=10_000)
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    timeout: Duration | None = Field(default=None, description="per export request; default: OTEL_* or 10s")
    min_backoff: Duration = 0.5
    max_backoff: Duration = 60.0
    poll_interval: Duration = Field(default=30.0, description="outbox re-check when no new run woke the sink")
    # Also forward the spans agno's own tracing (setup_tracing / AgentOS) writes to database.spans_table,
    # unchanged: agno's ids and exact times.
    forward_agno_spans: bool = False

    @model_validator(mode="after")
    def _backoff(self) -> TracesSettings:
        if not 0 < self.min_backoff <= self.max_backoff:
            raise ValueError("need 0 < min_backoff <= max_backoff")
        if self.forward_agno_spans and not self.on:
            raise ValueError("forward_agno_spans needs traces on: set traces.endpoint or OTEL_EXPORTER_OTLP_ENDPOINT"
                             " (and leave traces.enabled unset or true)")
        return self

    @property
    def on(self) -> bool:
        """Explicit ``enabled``, else on when an OTLP endpoint is configured (here or in the environment)."""
        if self.enabled is not None:
            return self.enabled
        return bool(
            self.endpoint
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )


KNOWN_TOOLS = ("yfinance", "calculator", "sleep", "fail")


class ModelSpec(_Strict):
    id: str = "gpt-4o-mini"
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint; default per scheduler.llm")
    api_key: SecretStr | None = None


class AgentSpec(_Strict):
    name: str
    model: ModelSpec = Field(default_factory=ModelSpec)
    instructions: str | None = None
    tools: tuple[str, ...] = ()
    stream: bool = False

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in v if t not in KNOWN_TOOLS]
        if unknown:
            raise ValueError(f"unknown tool(s) {unknown}; known: {list(KNOWN_TOOLS)}")
        return v


class TeamSpec(_Strict):
    name: str
    model: ModelSpec = Field(default_factory=ModelSpec)
    instructions: str | None = None
    members: tuple[AgentSpec, ...] = Field(min_length=1)


class JobSpec(_Strict):
    name: str
    prompt: str
    agent: AgentSpec | None = None
    team: TeamSpec | None = None
    interval: Duration | None = None
    cron: str | None = None
    jitter: Duration = 0.0
    max_in_flight: int = Field(default=1, ge=1, le=1000)
    misfire_grace_time: Duration = Field(default=30.0, ge=1.0)  # APScheduler 3 takes whole seconds
    session: Literal["per_run", "shared"] = "per_run"
    user_id: str | None = None
    # Fire once as the scheduler starts, then on the schedule: without it an ``interval: 1h`` job
    # says nothing for an hour. Not set in the job: ``scheduler.fire_at_start`` decides.
    fire_at_start: bool = True

    @model_validator(mode="after")
    def _one_of(self) -> JobSpec:
        if (self.agent is None) == (self.team is None):
            raise ValueError("give exactly one of agent or team")
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of interval or cron")
        if self.interval is not None and self.interval < 0.1:
            raise ValueError("interval must be at least 100ms")
        if self.cron is not None:
            try:
                cron_trigger(self.cron)
            except ValueError as exc:
                raise ValueError(f"cron {self.cron!r}: {exc}") from None
        return self


def _seed_job() -> JobSpec:
    """The seed's example: one background run of BackgroundMetricsAgent asking for AAPL's price."""
    return JobSpec(
        name="seed",
        prompt="What is the stock price of AAPL?",
        agent=AgentSpec(name="BackgroundMetricsAgent", tools=("yfinance",)),
        interval=60.0,
    )


class SchedulerSettings(_Strict):
    enabled: bool = False
    # auto: OpenAI when OPENAI_API_KEY is set, the built-in simulated model otherwise.
    llm: Literal["auto", "openai", "simulated"] = "auto"
    shutdown_timeout: Duration = 30.0
    # Every job fires once at start, then on its schedule; a job's own fire_at_start wins.
    fire_at_start: bool = True
    jobs: tuple[JobSpec, ...] = Field(default_factory=lambda: (_seed_job(),))

    @field_validator("jobs")
    @classmethod
    def _unique(cls, v: tuple[JobSpec, ...]) -> tuple[JobSpec, ...]:
        names = [j.name for j in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"job names must be unique; repeated: {dupes}")
        return v

    @model_validator(mode="after")
    def _default_fire_at_start(self) -> SchedulerSettings:
        """Jobs that do not set ``fire_at_start`` take the scheduler's, so the scheduler reads one value."""
        jobs = tuple(j if "fire_at_start" in j.model_fields_set
                     else j.model_copy(update={"fire_at_start": self.fire_at_start}) for j in self.jobs)
        if jobs != self.jobs:
            object.__setattr__(self, "jobs", jobs)  # frozen: set once, during validation
        return self


class HASettings(_Strict):
    enabled: bool = False
    lock_key: int = 0x61676E6F  # "agno"


class LogSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Settings(_Strict):
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    traces: TracesSettings = Field(default_factory=TracesSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    ha: HASettings = Field(default_factory=HASettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @property
    def traces_enabled(self) -> bool:
        return self.traces.on


# ---------------------------------------------------------------------------------------------
# loading


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9477`` for IPv6; ``:9477`` for all interfaces)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Unresolved:
    """A ``!env`` / ``!file`` tag that could not be resolved. The loader keeps it in place of the value
    so the error can name the field it was for (and the line), and every such error is reported."""

    def __init__(self, problem: str, node: yaml.Node) -> None:
        self.problem = problem
        self.line = node.start_mark.line + 1


class _Loader(yaml.SafeLoader):
    environ: Mapping[str, str] = os.environ


def _env_tag(loader: _Loader, node: yaml.Node) -> str | _Unresolved:
    name = str(loader.construct_scalar(node))  # type: ignore[arg-type,unused-ignore]
    if name not in loader.environ:
        return _Unresolved(f"!env {name}: the environment variable is not set", node)
    return loader.environ[name]


def _file_tag(loader: yaml.SafeLoader, node: yaml.Node) -> str | _Unresolved:
    path = Path(str(loader.construct_scalar(node)))  # type: ignore[arg-type]
    try:
        return path.read_text().strip()
    except OSError as exc:
        return _Unresolved(f"!file {path}: {exc.strerror}", node)


_Loader.add_constructor("!env", _env_tag)  # type: ignore[arg-type,unused-ignore]
_Loader.add_constructor("!file", _file_tag)  # type: ignore[arg-type,unused-ignore]


def _bound_loader(environ: Mapping[str, str]) -> type[_Loader]:
    return type("_BoundLoader", (_Loader,), {"environ": environ})


def _take_unresolved(value: Any, path: tuple[str, ...], found: list[tuple[tuple[str, ...], _Unresolved]]) -> Any:
    """``value`` without its unresolved tags (their keys dropped, so no second error follows from them);
    each one is appended to ``found`` with the dotted path of its field."""
    if isinstance(value, _Unresolved):
        found.append((path, value))
        return None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(v, _Unresolved):
                found.append(((*path, str(k)), v))
            else:
                out[k] = _take_unresolved(v, (*path, str(k)), found)
        return out
    if isinstance(value, list):
        return [_take_unresolved(v, (*path, str(i)), found) for i, v in enumerate(value)]
    return value


# Settings people set most: each has a command-line flag (``--schema``), an environment variable
# (``AGNO_EXPORTER_SCHEMA``) and a config key (``database.schema``). The long form
# ``AGNO_EXPORTER_<SECTION>__<KEY>`` works for every key.
# flag -> (section, key, environment variable)
COMMON_SETTINGS: dict[str, tuple[str, str, str]] = {
    "--db-url": ("database", "url", "DATABASE_URL"),
    "--schema": ("database", "schema", ENV_PREFIX + "SCHEMA"),
    "--session-table": ("database", "session_table", ENV_PREFIX + "SESSION_TABLE"),
    "--state-url": ("state", "url", ENV_PREFIX + "STATE_URL"),
    "--poll-interval": ("collector", "poll_interval", ENV_PREFIX + "POLL_INTERVAL"),
    "--listen": ("web", "listen", ENV_PREFIX + "LISTEN"),
    "--log-level": ("log", "level", ENV_PREFIX + "LOG_LEVEL"),
}

# Environment variables that map onto settings without the AGNO_EXPORTER_ prefix.
_PLAIN_ENV = {"DATABASE_URL": ("database", "url")}
_SHORT_ENV = {"DATABASE_URL": ("database", "url")}  # AGNO_EXPORTER_DATABASE_URL, beside DATABASE_URL
_SHORT_ENV.update({env[len(ENV_PREFIX):]: (section, key) for section, key, env in COMMON_SETTINGS.values()
                   if env.startswith(ENV_PREFIX)})

Origins = dict[tuple[str, str], str]  # (section, key) -> where its value came from, for errors


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], list[str], Origins]:
    """``AGNO_EXPORTER_<SECTION>__<KEY>`` (and a few short names) -> nested overrides, errors, origins."""
    out: dict[str, dict[str, Any]] = {}
    errors = []
    origins: Origins = {}
    sections = set(Settings.model_fields)
    loader = _bound_loader(environ)
    for plain, (section, key) in _PLAIN_ENV.items():
        if environ.get(plain):
            out.setdefault(section, {})[key] = environ[plain]
            origins[(section, key)] = f"environment variable {plain}"
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        where = f"environment variable {name}"
        rest = name[len(ENV_PREFIX) :]
        if rest in _SHORT_ENV:
            section, key = _SHORT_ENV[rest]
        elif "__" in rest:
            section, _, key = rest.lower().partition("__")
            if section not in sections:
                errors.append(f"{where}: unknown setting: no section {section!r}{_suggest(section, sections)}")
                continue
            if section == "scheduler" and key == "jobs":
                errors.append(f"{where}: scheduler.jobs cannot come from the environment; list jobs in the config file")
                continue
        else:
            errors.append(f"{where}: unknown variable; use {ENV_PREFIX}<SECTION>__<KEY>, e.g. "
                          f"{ENV_PREFIX}COLLECTOR__POLL_INTERVAL{_suggest(name, [ENV_PREFIX + n for n in _SHORT_ENV])}")
            continue
        parsed: Any = value
        if value and not (key == "url" or key.endswith("api_key")):  # secrets stay strings, never YAML-parsed
            try:
                parsed = yaml.load(value, Loader=loader)
            except yaml.YAMLError:
                parsed = value  # not YAML: the setting's own validation says what is wrong with it
        found: list[tuple[tuple[str, ...], _Unresolved]] = []
        parsed = _take_unresolved(parsed, (section, key), found)
        if found:
            errors.extend(f"{where}: {'.'.join(p)}: {u.problem}" for p, u in found)
            continue
        out.setdefault(section, {})[key] = parsed
        origins[(section, key)] = where
    return out, errors, origins


def _unknown_key(parts: list[str]) -> str:
    """``unknown key`` and the closest known key of the same mapping, when there is one."""
    model: Any = Settings
    for part in parts[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return "unknown key"
        model = field.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return "unknown key"
    names = [f.alias or n for n, f in model.model_fields.items()]
    return "unknown key" + _suggest(parts[-1], names)


def _format(err: ValidationError, source: str, origins: Origins, file_sections: set[str],
            unresolved: set[tuple[str, ...]]) -> list[str]:
    """One line per error: where the value came from (file, environment variable or flag), then the field.
    A field whose tag could not be resolved has said so already: its "missing" error is left out."""
    lines = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith("function-")]
        if tuple(parts) in unresolved:
            continue
        loc = ".".join(parts)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_key(parts)
        where = origins.get((parts[0], parts[1])) if len(parts) >= 2 else None
        if where is None and len(parts) == 1:  # a check across a section's keys: name every source of them
            named = sorted({o for (sec, _), o in origins.items() if sec == parts[0]})
            if parts[0] in file_sections or not named:
                named.insert(0, source)
            where = ", ".join(named)
        lines.append(f"{where or source}: {loc or '(top level)'}: {msg}")
    return lines


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    override_origins: Mapping[tuple[str, str], str] | None = None,
) -> Settings:
    """Read the YAML file (optional), apply environment variables, then command-line overrides.

    Raises :class:`ConfigError` listing every problem, one a line, each naming where the value came from
    (the file, ``environment variable NAME`` or, per ``override_origins``, a flag) and the field.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "settings"
    errors: list[str] = []
    unresolved: set[tuple[str, ...]] = set()
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            loaded = yaml.load(text, Loader=_bound_loader(environ))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        found: list[tuple[tuple[str, ...], _Unresolved]] = []
        raw = _take_unresolved(loaded or {}, (), found)
        errors.extend(f"{path}: {'.'.join(p)}: {u.problem} (line {u.line})" for p, u in found)
        unresolved.update(p for p, _ in found)
    file_sections = set(raw)
    env, env_errors, origins = _env_overrides(environ)
    errors.extend(env_errors)
    for (section, key), where in (override_origins or {}).items():
        origins[(section, key)] = where
    for layer in (env, overrides or {}):
        for section, values in layer.items():
            current = raw.get(section)
            if current is not None and not isinstance(current, dict):
                errors.append(f"{source}: {section}: must be a mapping")
                continue
            raw[section] = {**(current or {}), **values}
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        errors.extend(_format(exc, source, origins, file_sections, unresolved))
        raise ConfigError("\n".join(errors)) from None
    if errors:
        raise ConfigError("\n".join(errors))
    return settings
