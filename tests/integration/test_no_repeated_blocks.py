"""No block of six or more lines repeated (the same lines, or the same shape with other names) in
worker/ and handlers/ (issue 11): a mechanism is written once. Checked with the `duplicates` tool
when it is installed (skipped otherwise); a pair it marks as boilerplate (thin, not logic) passes."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from config.settings import PROJECT_ROOT


@pytest.mark.parametrize("folder", ["worker", "handlers"])
def test_no_block_of_six_lines_is_repeated(folder):
    tool = shutil.which("duplicates")
    if tool is None:
        pytest.skip("the `duplicates` tool is not installed")
    done = subprocess.run([tool, "--most", "200", "--seconds", "120"], cwd=PROJECT_ROOT / folder,
                          capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert not any(line.startswith("incomplete:") for line in lines), done.stdout
    pairs = [line for line in lines if line.startswith("D") and " boilerplate" not in line]
    assert pairs == [], f"repeated blocks in {folder}/ (write the mechanism once):\n" + "\n".join(pairs)
