"""mypy over the packages, with the configuration in pyproject.toml ([tool.mypy]).

Run by the suite so that CI keeps the code type-clean: a new error fails here with mypy's
own message (file, line, code). Marked slow: a cold run takes about a minute of CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mypy_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-color-output", "--no-error-summary"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert "No module named mypy" not in result.stderr, "mypy is in the dev extra: install it"
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_mypy_config_covers_the_packages():
    import re

    text = (ROOT / "pyproject.toml").read_text()
    files = re.search(r"\[tool\.mypy\][^\[]*?\nfiles = \[([^\]]*)\]", text)
    assert files, "pyproject.toml needs [tool.mypy] files = [...]"
    assert {"app", "indexer", "retriever"} <= set(re.findall(r'"([^"]+)"', files.group(1)))
