"""What agno itself reports for each run, and the check that the exported figures add up to it.

Runs are plain dicts (the shape ``agno2_writer.py`` prints for agno 2.x, where the objects live in
another interpreter); :func:`run_truth` gives the same shape for an agno 3.x RunOutput.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from exporter.records.runs import TOKEN_FIELDS
from tests.helpers.scrape import Samples


def _dict(value: Any) -> Any:
    return value.to_dict() if value is not None and hasattr(value, "to_dict") else value


def run_truth(out: Any) -> dict[str, Any]:
    """An agno RunOutput / TeamRunOutput / WorkflowRunOutput (from ``aget_run_output``) in the writer's
    shape. A workflow run's ``metrics`` are agno's WorkflowMetrics (``steps`` and ``duration``)."""
    status = out.status.value if hasattr(out.status, "value") else out.status
    return {
        "run_id": out.run_id, "session_id": out.session_id, "status": status,
        "parent_run_id": getattr(out, "parent_run_id", None),
        "agent_name": getattr(out, "agent_name", None), "team_name": getattr(out, "team_name", None),
        "workflow_name": getattr(out, "workflow_name", None),
        "metrics": _dict(out.metrics),
        "tools": [{"tool_name": t.tool_name, "tool_call_error": t.tool_call_error,
                   "duration": t.metrics.duration if t.metrics else None} for t in getattr(out, "tools", None) or []],
        "messages": [{"role": m.role, "from_history": m.from_history, "metrics": _dict(m.metrics)}
                     for m in getattr(out, "messages", None) or []],
    }


def workflow_truth(out: Any) -> list[dict[str, Any]]:
    """Every run one agno WorkflowRunOutput holds, once each, by agno's own objects: the workflow run,
    its steps' runs (``step_executor_runs``, a nested workflow's in turn), its WorkflowAgent run, and
    the member runs of its team steps (``member_responses``)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(run: Any) -> None:
        if run is None or run.run_id in found:
            return
        found[run.run_id] = run_truth(run)
        for nested in (*(getattr(run, "step_executor_runs", None) or []),
                       *(getattr(run, "member_responses", None) or []),
                       getattr(run, "workflow_agent_run", None)):
            walk(nested)

    walk(out)
    return list(found.values())


def truth_tokens(runs: list[dict[str, Any]]) -> int:
    return sum((r["metrics"] or {}).get(f, 0) for r in runs for f, _ in TOKEN_FIELDS)


def assert_matches_agno(s: Samples, runs: list[dict[str, Any]]) -> None:
    """Every exported run, token, duration, TTFT, tool and model-call figure equals the sum of agno's own."""
    tokens: dict[tuple[str, str], int] = defaultdict(int)
    count: dict[tuple[str, str], int] = defaultdict(int)
    dur: dict[tuple[str, str], list[float]] = defaultdict(list)
    ttft: dict[str, list[float]] = defaultdict(list)
    tools: dict[tuple[str, str], int] = defaultdict(int)
    for r in runs:
        name = r["agent_name"] or r["team_name"] or r.get("workflow_name")
        assert name, r["run_id"]
        m = r["metrics"] or {}
        for f, ttype in TOKEN_FIELDS:
            tokens[(name, ttype)] += m.get(f, 0)
        count[(name, r["status"])] += 1
        if m.get("duration") is not None:
            dur[(name, r["status"])].append(m["duration"])
        if m.get("time_to_first_token") is not None:
            ttft[name].append(m["time_to_first_token"])
        for t in r["tools"]:
            tools[(name, t["tool_name"])] += 1
    exported = s.group("agno_tokens_total", "name", "token_type")
    assert {k: v for k, v in exported.items() if v} == {k: float(v) for k, v in tokens.items() if v}
    assert s.group("agno_runs_total", "name", "status") == {k: float(v) for k, v in count.items()}
    for (name, status), values in dur.items():
        assert s.sum("agno_run_duration_seconds_count", name=name, status=status) == len(values)
        assert abs(s.sum("agno_run_duration_seconds_sum", name=name, status=status) - sum(values)) < 1e-9
    for name, values in ttft.items():
        assert s.sum("agno_run_time_to_first_token_seconds_count", name=name) == len(values)
        assert abs(s.sum("agno_run_time_to_first_token_seconds_sum", name=name) - sum(values)) < 1e-9
    assert s.group("agno_tool_calls_total", "name", "tool") == {k: float(v) for k, v in tools.items()}
    # Tool errors and exact tool durations, as agno stored them on each tool execution.
    execs = [t for r in runs for t in r["tools"]]
    assert s.sum("agno_tool_call_errors_total") == sum(1 for t in execs if t["tool_call_error"])
    timed = [t["duration"] for t in execs if t["duration"] is not None]
    assert s.sum("gen_ai_execute_tool_duration_seconds_count") == len(timed)
    assert abs(s.sum("gen_ai_execute_tool_duration_seconds_sum") - sum(timed)) < 1e-9
    # Per model call: token histogram sums equal the run totals (agno sums its messages).
    for ttype in ("input", "output"):
        assert s.sum("gen_ai_client_token_usage_sum", gen_ai_token_type=ttype) == sum(
            v for (_, t), v in tokens.items() if t == ttype)
    # A model call is an assistant message of the run with metrics (these runs use one model each,
    # so no call is kept only in metrics.details).
    calls = [m["metrics"] for r in runs for m in r["messages"]
             if m["role"] == "assistant" and not m["from_history"] and m["metrics"]]
    assert s.sum("agno_model_calls_total") == len(calls)
    # agno stores a message's duration for non-streamed calls only; a TTFT is observed for streamed
    # calls only (agno stores a non-streamed call's whole duration as its TTFT).
    durations = [c["duration"] for c in calls if c.get("duration") is not None]
    ttfts = [c["time_to_first_token"] for c in calls
             if c.get("duration") is None and c.get("time_to_first_token") is not None]
    for family, values in (("gen_ai_client_operation_duration_seconds", durations),
                           ("gen_ai_server_time_to_first_token_seconds", ttfts)):
        assert s.sum(f"{family}_count") == len(values), family
        assert abs(s.sum(f"{family}_sum") - sum(values)) < 1e-9, family
