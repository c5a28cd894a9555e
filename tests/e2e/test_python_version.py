"""Which Pythons are supported: pyproject.toml, the README and the Docker image say the same, and a Python
older than requires-python gets one line from `agno-exporter`, not a traceback.

pip refuses the install itself (requires-python); the one-line test covers what pip did not install: a
source tree on PYTHONPATH, ``pip install --ignore-requires-python``. It runs with the two newest CPythons
older than 3.11 found on PATH or under pyenv; skipped where there is none.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT


def old_pythons() -> list[str]:
    """Interpreters older than 3.11 that actually run (a pyenv shim for an inactive version does not)."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(6, 11)]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False).stdout.strip()
        candidates += [str(p) for p in sorted(Path(root, "versions").glob("3.*/bin/python3"))] if root else []
    found: dict[tuple[int, int], str] = {}
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            continue
        if out.returncode == 0:
            major, minor = (int(x) for x in out.stdout.split())
            if (major, minor) < (3, 11):
                found.setdefault((major, minor), exe)
    return [found[v] for v in sorted(found, reverse=True)[:2]]  # the two newest of them


@pytest.mark.parametrize("python", old_pythons() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no CPython older than 3.11 on this machine"))])
def test_an_old_python_gets_one_line(python: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(ROOT)
    # What the console script runs: `from exporter.commands.cli import main`.
    proc = subprocess.run([python, "-c", "from exporter.commands.cli import main; main(['--help'])"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"agno-exporter needs CPython 3.11 or newer; this is Python {version} ({python})"]


def test_requires_python_classifiers_readme_and_docker_image_agree() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floor = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert floor, project["requires-python"]  # a floor, no cap (see the comment in pyproject.toml)
    minors = sorted(int(m) for c in project["classifiers"]
                    for m in re.findall(r"^Programming Language :: Python :: 3\.(\d+)$", c))
    assert minors and minors[0] == int(floor.group(1)), minors
    assert minors == list(range(minors[0], minors[-1] + 1)), minors  # no gap in what is claimed
    supported = f"CPython 3.{minors[0]} to 3.{minors[-1]}"
    readme = (ROOT / "README.md").read_text()
    quick_start = " ".join(readme.split("## Quick start", 1)[1].split("\n## ", 1)[0].split())  # one line
    assert f"On a fresh machine ({supported}," in quick_start
    assert f"Supported Pythons: {supported}" in quick_start
    image = re.findall(r"^FROM python:3\.(\d+)-slim$", (ROOT / "Dockerfile").read_text(), re.M)
    assert len(image) == 1 and int(image[0]) in minors, image
    assert f"the Docker image is 3.{image[0]})" in quick_start
