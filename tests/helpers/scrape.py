"""Reading /metrics the way Prometheus does, for assertions."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.support import DEADLINE


async def scrape_text(port: int, accept: str = "text/plain", auth: aiohttp.BasicAuth | None = None) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics",
                                                    headers={"Accept": accept}, auth=auth) as r:
        assert r.status == 200, await r.text()
        return await r.text()


class Samples:
    """name -> list of (labels, value), with helpers to sum over label filters."""

    def __init__(self, text: str) -> None:
        self.by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.by_name[s.name].append((dict(s.labels), s.value))

    def sum(self, metric: str, /, **match: str) -> float:
        return sum(v for labels, v in self.by_name.get(metric, []) if _match(labels, match))

    def group(self, metric: str, /, *keys: str, **match: str) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for labels, v in self.by_name.get(metric, []):
            if _match(labels, match):
                out[tuple(labels.get(k, "") for k in keys)] += v
        return dict(out)


def _match(labels: Mapping[str, str], match: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match.items())


async def scrape_until(port: int, done: Callable[[Samples], bool], timeout: float = DEADLINE) -> Samples:
    """Scrape every 100 ms until ``done`` holds (or ``timeout`` seconds passed: then the caller's
    assertions say what is missing); returns the last scrape for assertions."""
    deadline = time.monotonic() + timeout
    s = Samples(await scrape_text(port))
    while not done(s) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        s = Samples(await scrape_text(port))
    return s
