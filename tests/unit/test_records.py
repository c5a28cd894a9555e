"""records.py: agno's stored JSON -> typed records. Pure; real rows from agno 3.1.10 plus hand-made bad ones."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from exporter.records.nesting import build_row_runs
from exporter.records.parse import build_run_record
from exporter.records.runs import BadRow, TokenAnomaly
from exporter.records.sessions import build_session_record
from exporter.records.values import MAX_RUN_SECONDS, MAX_RUN_TOKENS, MAX_RUN_USD, MAX_TIMESTAMP, provider_name
from tests.helpers.reference import runs_v3, sessions_v2, sessions_v3


def by_prefix(prefix: str) -> dict[str, Any]:
    return next(r for r in runs_v3() if r["run_id"].startswith(prefix))


def test_agent_run_with_tool_call() -> None:
    row = by_prefix("485a6b32")
    r = build_run_record(row, row["run_data"])
    assert (r.run_type, r.name, r.status, r.entity_id) == ("agent", "BackgroundMetricsAgent", "COMPLETED",
                                                           "backgroundmetricsagent")
    assert r.totals["input"] == 300 and r.totals["output"] == 40 and r.totals["cache_read"] == 0
    assert {(t.model_role, t.model, t.provider, t.token_type, t.count) for t in r.tokens} == {
        ("model", "gpt-4o-mini", "openai", "input", 300), ("model", "gpt-4o-mini", "openai", "output", 40)}
    assert [c.input_tokens for c in r.model_calls] == [150, 150]
    assert r.model_calls[0].tool_call_ids == ("call_1",)
    assert r.model_calls[1].time_to_first_token == pytest.approx(0.20702255700001615)
    assert r.time_to_first_token == pytest.approx(0.34369816000003084)
    (tool,) = r.tool_calls
    assert (tool.name, tool.call_id, tool.error) == ("get_stock_price", "call_1", False)
    assert tool.start_time == pytest.approx(1795523262.448956) and tool.end_time == pytest.approx(1795523262.4493754)
    assert r.error_type is None and r.anomalies == ()
    assert r.input_content is None  # content only on request


def test_team_and_member_runs_do_not_double_count() -> None:
    team = build_run_record(by_prefix("33c13799"), by_prefix("33c13799")["run_data"])
    member = build_run_record(by_prefix("06655f9a"), by_prefix("06655f9a")["run_data"])
    assert (team.run_type, team.name) == ("team", "FinanceTeam")
    assert (member.run_type, member.name, member.parent_run_id) == ("agent", "StockAgent", team.run_id)
    # the session's stored total (680) is the leader's own tokens plus the member's
    session = next(s for s in sessions_v3() if s["session_id"] == team.session_id)
    stored = build_session_record(session)
    assert team.totals["input"] + team.totals["output"] + member.totals["input"] + member.totals["output"] == (
        stored.totals["input"] + stored.totals["output"]) == 680


def test_failed_delegation_is_a_tool_error() -> None:
    r = build_run_record(by_prefix("a294fee3"), by_prefix("a294fee3")["run_data"])
    assert [(t.name, t.error) for t in r.tool_calls] == [("delegate_task_to_member", True)]


def test_error_run_has_only_duration() -> None:
    r = build_run_record(by_prefix("0080d6cb"), by_prefix("0080d6cb")["run_data"])
    assert r.status == "ERROR" and r.error_type == "APIConnectionError" and r.error_message == "Connection error."
    assert r.tokens == () and r.model_calls == () and r.duration == pytest.approx(0.0911427129999538)
    assert r.time_to_first_token is None


def test_content_is_captured_only_when_asked() -> None:
    row = by_prefix("485a6b32")
    r = build_run_record(row, row["run_data"], with_content=True)
    assert r.input_content == "What is the stock price of AAPL?"
    assert r.output_content == "AAPL is trading at 123.45 USD."


def test_provider_names_follow_genai_conventions() -> None:
    assert provider_name("OpenAI Chat") == provider_name("OpenAI") == "openai"
    assert provider_name("Anthropic") == "anthropic"
    assert provider_name("Some New Provider") == "some_new_provider"
    assert provider_name(None) == "unknown"


def mutate(path: str, value: Any) -> tuple[dict[str, Any], Any]:
    row = copy.deepcopy(by_prefix("485a6b32"))
    target: Any = row["run_data"]
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    target[keys[-1] if not isinstance(target, list) else int(keys[-1])] = value
    return row, row["run_data"]


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("metrics.input_tokens", -5, "negative"),
        ("metrics.input_tokens", "300", "wrong_type"),
        ("metrics.input_tokens", 1.5, "wrong_type"),
        ("metrics.duration", math.nan, "not_finite"),
        ("metrics.duration", math.inf, "not_finite"),
        ("metrics.time_to_first_token", True, "wrong_type"),
        ("metrics", [], "wrong_type"),
        ("metrics.details", "model", "wrong_type"),
        ("messages", {"role": "assistant"}, "wrong_type"),
        ("tools.0.metrics.start_time", "yesterday", "wrong_type"),
        ("messages.1.metrics.output_tokens", -1, "negative"),
    ],
)
def test_malformed_values_are_rejected_with_a_reason(path: str, value: Any, reason: str) -> None:
    row, data = mutate(path, value)
    with pytest.raises(BadRow) as info:
        build_run_record(row, data)
    assert info.value.reason == reason
    assert path.split(".")[-1] in str(info.value) or reason in str(info.value)


# Every number agno stores, each with a value just beyond its bound and one far beyond (the kind of
# value a buggy provider integration writes): the run is a counted skip with the unit's reason.
BOUNDED = [
    *[(f"metrics.{f}", MAX_RUN_TOKENS, "tokens_out_of_range") for f in (
        "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
        "audio_input_tokens", "audio_output_tokens")],
    ("metrics.details.model.0.input_tokens", MAX_RUN_TOKENS, "tokens_out_of_range"),
    ("metrics.details.model.0.output_tokens", MAX_RUN_TOKENS, "tokens_out_of_range"),
    ("messages.1.metrics.input_tokens", MAX_RUN_TOKENS, "tokens_out_of_range"),
    ("messages.3.metrics.output_tokens", MAX_RUN_TOKENS, "tokens_out_of_range"),
    ("metrics.duration", MAX_RUN_SECONDS, "seconds_out_of_range"),
    ("metrics.time_to_first_token", MAX_RUN_SECONDS, "seconds_out_of_range"),
    ("messages.1.metrics.duration", MAX_RUN_SECONDS, "seconds_out_of_range"),
    ("messages.3.metrics.time_to_first_token", MAX_RUN_SECONDS, "seconds_out_of_range"),
    ("tools.0.metrics.duration", MAX_RUN_SECONDS, "seconds_out_of_range"),
    ("metrics.cost", MAX_RUN_USD, "cost_out_of_range"),
    ("metrics.details.model.0.cost", MAX_RUN_USD, "cost_out_of_range"),
    ("messages.1.created_at", MAX_TIMESTAMP, "timestamp_out_of_range"),
    ("tools.0.metrics.start_time", MAX_TIMESTAMP, "timestamp_out_of_range"),
    ("tools.0.metrics.end_time", MAX_TIMESTAMP, "timestamp_out_of_range"),
]


@pytest.mark.parametrize(("path", "bound", "reason"), BOUNDED)
def test_numbers_beyond_their_bound_are_rejected(path: str, bound: float, reason: str) -> None:
    at_bound = int(bound) if path.endswith(("tokens", "created_at")) else float(bound)
    row, data = mutate(path, at_bound)
    build_run_record(row, data)  # the bound itself is accepted
    for value in (at_bound + 1, 1e300, 10**400):
        row, data = mutate(path, value)
        with pytest.raises(BadRow) as info:
            build_run_record(row, data)
        assert info.value.reason == reason, (path, value)
        message = str(info.value)
        assert path.split(".")[-1] in message and len(message) < 200, message


@pytest.mark.parametrize("column", ["created_at", "updated_at"])
def test_row_timestamps_beyond_2100_are_rejected(column: str) -> None:
    row = copy.deepcopy(by_prefix("485a6b32"))
    row[column] = int(row[column]) * 1000  # milliseconds: a unit error
    with pytest.raises(BadRow) as info:
        build_run_record(row, row["run_data"])
    assert info.value.reason == "timestamp_out_of_range" and column in str(info.value)


def test_session_totals_may_exceed_a_run_bound() -> None:
    """A session sums many runs: only float64's exact integers bound what it may claim."""
    row = copy.deepcopy(sessions_v3()[0])
    row["session_data"]["session_metrics"]["input_tokens"] = MAX_RUN_TOKENS * 1000
    assert build_session_record(row).totals["input"] == MAX_RUN_TOKENS * 1000
    row["session_data"]["session_metrics"]["input_tokens"] = 1e300
    with pytest.raises(BadRow, match="tokens_out_of_range"):
        build_session_record(row)


@pytest.mark.parametrize("run_data", [None, [], "text", 42])
def test_run_data_must_be_an_object(run_data: Any) -> None:
    with pytest.raises(BadRow) as info:
        build_run_record({"run_id": "x", "status": "COMPLETED"}, run_data)
    assert info.value.reason == "run_data_not_object"


def test_unknown_status_and_missing_id() -> None:
    row = copy.deepcopy(by_prefix("485a6b32"))
    row["status"] = "EXPLODED"
    with pytest.raises(BadRow, match="unknown_status"):
        build_run_record(row, row["run_data"])
    with pytest.raises(BadRow, match="missing_run_id"):
        build_run_record({"status": "COMPLETED"}, {})


def test_names_with_control_characters_are_sanitised() -> None:
    row, data = mutate("agent_name", "Bad\x00Agent\n" + "x" * 300)
    r = build_run_record(row, data)
    assert r.name.isprintable() and len(r.name) <= 128
    assert set(r.sanitized) == {"control_chars", "too_long"}
    row, data = mutate("agent_name", "Agente ñandú 🚀")
    assert build_run_record(row, data).name == "Agente ñandú 🚀"


def test_absent_metrics_mean_zero() -> None:
    r = build_run_record({"run_id": "r1", "status": "COMPLETED", "run_type": "agent"}, {"agent_name": "A"})
    assert all(v == 0 for v in r.totals.values()) and r.tokens == () and r.duration is None


def test_token_anomalies_are_flagged_on_the_models_own_numbers() -> None:
    row, data = mutate("metrics.details.model.0.total_tokens", 999)
    assert build_run_record(row, data).anomalies == (TokenAnomaly("total_mismatch", "gpt-4o-mini", "openai"),)
    row, data = mutate("metrics.details.model.0.cache_read_tokens", 5000)
    assert TokenAnomaly("cache_exceeds_input", "gpt-4o-mini", "openai") in build_run_record(row, data).anomalies


def test_details_below_run_total_keep_run_total_exact() -> None:
    row, data = mutate("metrics.input_tokens", 350)  # details still say 300
    r = build_run_record(row, data)
    assert sum(t.count for t in r.tokens if t.token_type == "input") == 350
    assert r.anomaly_kinds == ("details_below_total",)


def test_reported_cost_is_kept() -> None:
    row, data = mutate("metrics.details.model.0.cost", 0.0021)
    r = build_run_record(row, data)
    assert r.cost_usd == pytest.approx(0.0021) and r.costs[0].model == "gpt-4o-mini"


def test_a_workflow_run_has_no_tokens_of_its_own() -> None:
    r = build_run_record(
        {"run_id": "w1", "status": "COMPLETED", "run_type": "workflow", "workflow_id": "wf"},
        {"workflow_name": "Pipeline", "metrics": {"duration": 3.5, "steps": {"research": {}, "write": {}}}},
    )
    assert (r.run_type, r.name, r.duration) == ("workflow", "Pipeline", 3.5)
    assert r.tokens == () and r.workflow_step_names == ("research", "write")
    # real workflows (and their nested step runs) are in test_workflows.py


def test_malformed_nested_runs_are_skipped_alone() -> None:
    """Hand-made bad nesting: each bad nested run is skipped with a reason; the row and the others count."""
    step = copy.deepcopy(by_prefix("485a6b32")["run_data"])
    bad_metrics = {**copy.deepcopy(step), "run_id": "s2", "metrics": {"input_tokens": -1}}
    deep: dict[str, Any] = {"run_id": "n0", "workflow_name": "Nest", "status": "COMPLETED", "step_executor_runs": []}
    level = deep
    for i in range(1, 12):  # deeper than agno itself reads nested workflows
        child = {"run_id": f"n{i}", "workflow_name": "Nest", "status": "COMPLETED", "step_executor_runs": []}
        level["step_executor_runs"].append(child)
        level = child
    data = {"workflow_name": "Pipeline", "metrics": {"steps": {}},
            "step_executor_runs": [step, "not a run", bad_metrics, deep, step]}
    runs = build_row_runs({"run_id": "w1", "status": "COMPLETED", "run_type": "workflow", "session_id": "s"}, data)
    assert runs.run.run_id == "w1"
    assert [r.run_id for r in runs.nested] == [step["run_id"], *(f"n{i}" for i in range(10))]
    assert all(r.host_run_id == "w1" for r in runs.nested)
    # session from the copy, else the row's
    assert [r.session_id for r in runs.nested] == [step["session_id"], *["s"] * 10]
    assert runs.nested[0].parent_run_id == "w1" and runs.nested[2].parent_run_id == "n0"
    assert runs.skipped == (("w1/w1.step_executor_runs[1]", "wrong_type"), ("s2", "negative"),
                            ("n10", "nested_too_deep"))
    with pytest.raises(BadRow, match="wrong_type"):  # the row's own run is still all or nothing
        build_row_runs({"run_id": "w1", "status": "COMPLETED"}, {**data, "metrics": {"steps": []}})


def test_agno2_session_run_element() -> None:
    """agno 2.9's layout: the run is an element of the session's ``runs`` array; the legacy reader hands it
    over as ``run_data`` beside the session's columns (``LegacyTable.fetch_runs``)."""
    (session,) = sessions_v2()
    (element,) = session["runs"]
    row = {"session_id": session["session_id"], "user_id": session["user_id"], "updated_at": session["updated_at"]}
    r = build_run_record(row, element)
    assert (r.run_id, r.status, r.run_type, r.session_id) == (element["run_id"], "COMPLETED", "agent",
                                                              session["session_id"])
    metrics = element["metrics"]
    assert (r.totals["input"], r.totals["output"]) == (metrics["input_tokens"], metrics["output_tokens"])
    stored = build_session_record(session)
    assert stored.totals["input"] + stored.totals["output"] == metrics["total_tokens"]
