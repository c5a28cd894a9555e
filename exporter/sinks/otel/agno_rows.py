"""agno's own span rows (``agno.tracing``'s table) -> :class:`SpanData` (and SDK ``ReadableSpan``), ids and times
kept as agno wrote them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from exporter.sinks.otel.traces import AGNO_TRACING_SCOPE, Attributes, SpanData, json_attribute, readable

# ---------------------------------------------------------------------------------------------
# agno's own tracing tables


def _iso_ns(value: Any, column: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # agno's Span.from_dict also accepts epoch nanoseconds
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise ValueError(f"{column} is {type(value).__name__}, expected an ISO 8601 string")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _attribute(value: Any) -> AttributeValue | None:
    if value is None:
        return None
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, list) and value:
        kinds = {type(v) for v in value}
        if len(kinds) == 1 and kinds <= {str, bool, int, float}:
            return list(value)
    return json_attribute(value)


def span_from_agno_row(row: Mapping[str, Any], *, resource: Resource) -> ReadableSpan:
    """:func:`span_data_from_agno_row` as a ``ReadableSpan`` with ``resource``."""
    return readable(span_data_from_agno_row(row), resource)


def span_data_from_agno_row(row: Mapping[str, Any]) -> SpanData:
    """One row of agno's own ``agno_spans`` table (agno.tracing / AgentOS) as a span.

    The original ids and times are kept (agno stores ISO 8601 times, so microsecond precision).
    These spans belong to agno's trace ids, not to the ids this exporter derives from run ids; the
    resource is the sink's because agno does not store one. Raises ``ValueError`` on a bad row.
    """
    try:
        trace_id = int(str(row["trace_id"]), 16)
        span_id = int(str(row["span_id"]), 16)
        parent_hex = row.get("parent_span_id")
        parent_id = int(str(parent_hex), 16) if parent_hex else None
    except (KeyError, ValueError) as exc:
        raise ValueError(f"agno span row without valid hex ids: {exc}") from exc
    if not trace_id or not span_id:
        raise ValueError("agno span row with a zero trace or span id")
    start = _iso_ns(row.get("start_time"), "start_time")
    end = _iso_ns(row.get("end_time"), "end_time")
    raw_attrs = row.get("attributes") or {}
    if isinstance(raw_attrs, str):
        raw_attrs = json.loads(raw_attrs)
    if not isinstance(raw_attrs, Mapping):
        raise ValueError(f"attributes is {type(raw_attrs).__name__}, expected an object")
    attrs: Attributes = {}
    for key, value in raw_attrs.items():
        converted = _attribute(value)
        if converted is not None:
            attrs[str(key)] = converted
    kind = SpanKind.__members__.get(str(row.get("span_kind") or "INTERNAL").upper(), SpanKind.INTERNAL)
    code = StatusCode.__members__.get(str(row.get("status_code") or "UNSET").upper(), StatusCode.UNSET)
    message = row.get("status_message")
    return SpanData(
        name=str(row.get("name") or "span"),
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_id or None,
        kind=kind,
        attributes=attrs,
        start_ns=start,
        end_ns=max(start, end),
        scope=AGNO_TRACING_SCOPE,
        status=code,
        status_message=str(message) if code is StatusCode.ERROR and message else None,
    )
