"""The command line as a user types it: the installed ``agno-exporter`` console script in a subprocess.

``cli()`` runs one command to its end; ``Running`` keeps a long-running one (collect, run) going, with
its stderr in a file the test can wait on. The environment is the test's own minus every setting the
exporter reads (``AGNO_EXPORTER_*``, ``DATABASE_URL``, ``OPENAI_API_KEY``, OTLP), plus what the test
passes, so a developer's shell never changes a result.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.helpers.support import exporter_cmd

_READ_BY_THE_EXPORTER = ("AGNO_EXPORTER_", "DATABASE_URL", "OPENAI_API_KEY", "OTEL_")


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_READ_BY_THE_EXPORTER)}
    env["COLUMNS"] = "200"  # help texts on one line each, whatever the terminal
    env.update(extra or {})
    return env


def cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 180,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*exporter_cmd(), *args], env=cli_env(env), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed on stderr (asserting there is exactly one, no traceback)."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


class Running:
    """A long-running command; stderr goes to a file so the test can wait for lines in it."""

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="aecli-")
        self.stderr_path = Path(self._dir.name) / "stderr"
        self._err = self.stderr_path.open("w")
        self.proc = subprocess.Popen([*exporter_cmd(), *args], env=cli_env(env), stdout=subprocess.DEVNULL,
                                     stderr=self._err, text=True)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first match of ``pattern`` in stderr, waiting for it (fails early if the process ends)."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.stderr())
            if found:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {pattern!r}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} after {timeout}s:\n{self.stderr()}")
            time.sleep(0.1)

    def metrics_port(self) -> int:
        return int(self.wait_for(r"serving /metrics on [^\s]+:(\d+)").group(1))

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


def until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s")
        time.sleep(0.1)
