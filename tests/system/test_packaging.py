"""`pip install .` then `dunning run` works outside the checkout: the wheel carries the templates,
schema.sql, the migrations, the Procfile and the default policy, and var/ goes where it is run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from config.settings import PROJECT_ROOT
from tests.support.helpers import ADMIN_TOKEN, WEBHOOK_SECRET
from tests.support.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project built as a wheel and installed (without its dependencies: the venv has them)."""
    root = tmp_path_factory.mktemp("installed")
    wheels = root / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                            str(PROJECT_ROOT)], capture_output=True, text=True, timeout=240)
    if built.returncode != 0:
        pytest.skip(f"cannot build the wheel here: {built.stderr.strip().splitlines()[-1:]}")
    [wheel] = wheels.glob("*.whl")
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    return target


def env_for(installed, workdir, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "BROKER_", "DUNNING_"))}
    env.update({"PYTHONPATH": str(installed), "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "ADMIN_TOKEN": ADMIN_TOKEN,
                "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
                "LOG_FORMAT": "json"})
    env.update(extra)
    return env


def dunning(installed, workdir, *args, **extra):
    return subprocess.run([sys.executable, "-c", "from worker.cli import main; main()", *args], cwd=workdir,
                          env=env_for(installed, workdir, **extra), capture_output=True, text=True, timeout=120)


def test_the_installed_package_finds_its_files_and_keeps_var_where_it_runs(installed, tmp_path):
    where = dunning(installed, tmp_path, "policy", "show")
    assert where.returncode == 0, where.stderr
    upgraded = dunning(installed, tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "var" / "dunning.sqlite3").is_file()
    previews = dunning(installed, tmp_path, "emails", "preview", "--out", str(tmp_path / "previews"))
    assert previews.returncode == 0, previews.stderr
    assert (tmp_path / "previews" / "index.html").is_file()
    probe = subprocess.run([sys.executable, "-c", "import worker, config.settings as s; print(worker.__file__);"
                            " print(s.PROJECT_ROOT)"], cwd=tmp_path, env=env_for(installed, tmp_path),
                           capture_output=True, text=True)
    module, root = probe.stdout.split()
    assert module.startswith(str(installed)) and root == str(installed / "dunning_files")


def test_dunning_run_from_the_installed_package_serves_and_stops_cleanly(installed, tmp_path):
    port = free_port()
    env = env_for(installed, tmp_path, PORT=str(port), HOST="127.0.0.1", WORKER_PROCESSES="1", WORKER_THREADS="1")
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", "from worker.cli import main; main()", "run"], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.5)
        assert (tmp_path / "var" / "dunning.sqlite3").is_file()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, "Ctrl-C is a requested stop: exit 0"
        assert "CRITICAL" not in (tmp_path / "run.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_the_installed_requirements_are_consistent_and_the_vendored_dashboard_ships(installed):
    """`pip check` passes (the dashboard's stale pins are not installed: it is vendored), and the
    wheel carries the vendored dashboard's templates, Lua script and licence."""
    checked = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shipped = installed / "worker" / "vendor" / "dramatiq_dashboard"
    for name in ("templates/dashboard.html", "redis/dispatch.lua", "COPYING", "COPYING.LESSER", "application.py"):
        assert (shipped / name).is_file(), name
