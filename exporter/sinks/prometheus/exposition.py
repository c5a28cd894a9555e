"""Rendering ``/metrics`` fast: the persisted families from lines cached per series.

prometheus_client formats every sample of every series on every scrape; with 10^4 series that took
over 100 ms (measured, ``python -m benchmarks``). A series changes only when runs touch it, so
:class:`exporter.sinks.prometheus.series.SeriesStore` keeps each series' formatted lines until it changes, and the
families come out of the store as :class:`LazyFamily`: rendered from those lines here, yet still
ordinary metrics (samples built on demand) for anyone reading the registry another way. Every
line is produced by prometheus_client's own encoder, so the output is byte for byte what it would
have written (a test compares them).

The body is handed out as parts (:func:`render_parts`): the cached lines themselves, not a copy, so a
scrape of 10^4 series no longer holds the body two or three times over while it joins it (the peak
RSS of the running collect is measured after scrapes; the web handler writes the parts out in
chunks of :data:`CHUNK` bytes).
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
    """A metric family whose samples are built only when read, and that renders itself: ``parts`` gives its
    exposition for an encoder as a list of bytes (its header, then each series' cached lines)."""

    _samples: list[Any] | None = None

    def __init__(self, header: Metric, build: Callable[[], Metric], parts: Callable[[Encoder], list[bytes]]) -> None:
        super().__init__(header.name, header.documentation, header.type)
        self.unit = header.unit
        self._build = build
        self.parts = parts

    @property
    def samples(self) -> list[Any]:
        if self._samples is None:
            self._samples = self._build().samples
        return self._samples

    @samples.setter
    def samples(self, value: list[Any]) -> None:
        self._samples = value or None


# the web handler's writes: a few round trips for a body of megabytes, a small buffer each
CHUNK = 256 * 1024


def render_parts(registry: Collector, encoder: Encoder) -> list[bytes]:
    """What ``encoder(registry)`` returns, as parts to write one after the other: the store's families
    as their cached lines (the objects the store holds, not copies), the other metrics encoded. Built
    in one go, so a scrape is one consistent reading of the registry however long its writing takes."""
    parts: list[bytes] = []
    plain: list[Metric] = []
    for metric in registry.collect():
        if isinstance(metric, LazyFamily):
            if plain:
                parts.append(encode(encoder, plain))
                plain = []
            parts.extend(metric.parts(encoder))
        else:
            plain.append(metric)
    if plain:
        parts.append(encode(encoder, plain))
    # OpenMetrics ends with # EOF: an encoder given nothing shows whether this one is OpenMetrics.
    if encoder(_Only([])).endswith(EOF):
        parts.append(EOF)
    return parts


def render(registry: Collector, encoder: Encoder) -> bytes:
    """:func:`render_parts` joined: the whole body."""
    return b"".join(render_parts(registry, encoder))


def chunks(parts: Iterable[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """``parts`` joined into pieces of about ``size`` bytes (a part larger than that is one piece)."""
    batch: list[bytes] = []
    n = 0
    for part in parts:
        batch.append(part)
        n += len(part)
        if n >= size:
            yield b"".join(batch)
            batch, n = [], 0
    if batch:
        yield b"".join(batch)
