"""The suite's own scheduling holds: `--dist loadgroup` keeps each xdist group on one worker.

tests/conftest.py puts the tests that start the service's processes in one group, so they run one
at a time and their timings and kills never compete. Nothing fails when the grouping stops
working: pytest 9.2's structured node ids made pytest-xdist 3.8 ignore every group
(pytest-dev/pytest-xdist#1386), and the process tests ran two at a time unnoticed (pytest is held
below 9.2 in requirements-dev.in). This runs a small suite the way `make test` runs the real one and
checks where each test ran.
"""

from __future__ import annotations

import re
import subprocess
import sys

SUITE = '''
import pytest

@pytest.mark.xdist_group("marked")
@pytest.mark.parametrize("i", range(6))
def test_marked(i):
    pass

@pytest.mark.parametrize("i", range(6))
def test_added_by_the_conftest(i):
    pass

@pytest.mark.parametrize("i", range(6))
def test_free(i):
    pass
'''

CONFTEST = '''
import pytest

@pytest.hookimpl(tryfirst=True)  # as tests/conftest.py adds its group: before xdist reads them
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.name.startswith("test_added_by_the_conftest"):
            item.add_marker(pytest.mark.xdist_group("processes"))
'''


def test_each_xdist_group_runs_on_a_single_worker(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_grouped.py").write_text(SUITE)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2",
                           "--dist", "loadgroup", "-v", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    workers: dict[str, set[str]] = {}
    for worker, name in re.findall(r"\[(gw\d)\].*PASSED \S*::(test_\w+)\[", done.stdout):
        workers.setdefault(name, set()).add(worker)
    assert set(workers) == {"test_marked", "test_added_by_the_conftest", "test_free"}, done.stdout[-3000:]
    assert len(workers["test_marked"]) == 1, f"a marked group ran on {sorted(workers['test_marked'])}"
    assert len(workers["test_added_by_the_conftest"]) == 1, \
        f"a group added by a conftest ran on {sorted(workers['test_added_by_the_conftest'])}"
