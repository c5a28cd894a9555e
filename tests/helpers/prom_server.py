"""A real Prometheus server for tests: scrapes the exporter the way production does.

Starts the ``prometheus`` binary (Debian's package: a missing binary skips the test with the install
command as the reason, and fails it under CI, see :func:`support.system_tool`) with a config and a
TSDB in a temporary directory, listening on a free 127.0.0.1 port, with exemplar storage on,
scraping the given targets every ``scrape_interval``.
:meth:`PromServer.start` waits until ``/-/ready``; :meth:`PromServer.stop` terminates the process
and removes the directory. Queries go through the HTTP API (``/api/v1/...``) with urllib, so the
helper works from sync code (use ``asyncio.to_thread`` from a running loop).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from tests.helpers.support import free_port, system_tool


def prometheus_binary() -> str:
    """Debian's prometheus; skips the test (fails it under CI) when it is not installed. Call it first
    in a test, before any other work."""
    return system_tool("prometheus")


class PromServer:
    """One Prometheus process scraping ``targets`` (``host:port`` of /metrics endpoints)."""

    def __init__(self, targets: Sequence[str], scrape_interval: str = "1s", job: str = "agno-exporter") -> None:
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.job = job
        self.port = 0
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        # JSON is YAML: no yaml dependency for writing the config.
        return json.dumps({
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{
                "job_name": self.job,
                "scrape_interval": self.scrape_interval,
                "static_configs": [{"targets": self.targets}],
            }],
        }, indent=1)

    def start(self, timeout: float = 60.0) -> PromServer:
        binary = prometheus_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="aeprom-"))
        (self.dir / "prometheus.yml").write_text(self.config())
        self.port = free_port()
        self._log = (self.dir / "prometheus.log").open("w")
        try:
            self._proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--enable-feature=exemplar-storage",
                    "--log.level=info",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        if self.dir is None or not (self.dir / "prometheus.log").exists():
            return ""
        if self._log is not None:
            self._log.flush()
        return "\n".join((self.dir / "prometheus.log").read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/{path}``; returns ``data`` (raises on a non-success answer)."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            exc.close()
            raise RuntimeError(f"{url}: HTTP {exc.code}: {detail}") from exc
        if body.get("status") != "success":
            raise RuntimeError(f"{url}: {body}")
        return body["data"]

    def query_exemplars(self, query: str, start: float, end: float) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.api("query_exemplars", query=query, start=f"{start:.3f}",
                                              end=f"{end:.3f}")
        return data

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_health(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PromServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
