"""Rendering ``/metrics`` fast: the persisted families from lines cached per series.

prometheus_client formats every sample of every series on every scrape; with 10^4 series that took
over 100 ms (measured, ``python -m benchmarks``). A series changes only when runs touch it, so
:class:`exporter.sinks.prometheus.series.SeriesStore` keeps each series' formatted lines until it changes, and the
families come out of the store as :class:`LazyFamily`: rendered from those lines here, yet still
ordinary metrics (samples built on demand) for anyone reading the registry another way. Every
line is produced by prometheus_client's own encoder, so the output is byte for byte what it would
have written (a test compares them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

Encoder = Callable[[Any], bytes]
EOF = b"# EOF\n"


class _Only(Collector):
    """A registry-like holder of given metrics, for prometheus_client's encoders."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def encoder_key(encoder: Encoder) -> Any:
    """Cache key of an encoder: ``choose_encoder`` returns a fresh partial (format version, escaping) each time."""
    if isinstance(encoder, functools.partial):
        return (encoder.func, tuple(sorted(encoder.keywords.items())))
    return encoder


def encode(encoder: Encoder, metrics: Iterable[Metric]) -> bytes:
    """The encoder's output for ``metrics`` without the OpenMetrics ``# EOF`` (added once, at the end)."""
    out = encoder(_Only(metrics))
    return out[:-len(EOF)] if out.endswith(EOF) else out


class LazyFamily(Metric):
    """A metric family whose samples are built only when read, and that can render itself."""

    _samples: list[Any] | None = None

    def __init__(self, header: Metric, build: Callable[[], Metric], render: Callable[[Encoder], bytes]) -> None:
        super().__init__(header.name, header.documentation, header.type)
        self.unit = header.unit
        self._build = build
        self.render = render

    @property
    def samples(self) -> list[Any]:
        if self._samples is None:
            self._samples = self._build().samples
        return self._samples

    @samples.setter
    def samples(self, value: list[Any]) -> None:
        self._samples = value or None


def render(registry: Collector, encoder: Encoder) -> bytes:
    """What ``encoder(registry)`` returns, with the store's families rendered from their cached lines."""
    parts: list[bytes] = []
    plain: list[Metric] = []
    for metric in registry.collect():
        if isinstance(metric, LazyFamily):
            if plain:
                parts.append(encode(encoder, plain))
                plain = []
            parts.append(metric.render(encoder))
        else:
            plain.append(metric)
    if plain:
        parts.append(encode(encoder, plain))
    body = b"".join(parts)
    # OpenMetrics ends with # EOF: an encoder given nothing shows whether this one is OpenMetrics.
    return body + EOF if encoder(_Only([])).endswith(EOF) else body
