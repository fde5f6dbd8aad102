"""`dunning ...` run in the test process, as a process of the test's service would run it."""

from __future__ import annotations

import json

from click.testing import CliRunner, Result

from worker.cli import main


def cli_env(runtime) -> dict[str, str]:
    """The environment a `dunning` process of this test's service would have."""
    s = runtime.settings
    return {"STRIPE_WEBHOOK_SECRET": ",".join(s.stripe_webhook_secrets), "ADMIN_TOKEN": s.admin_token,
            "DATABASE_URL": s.database_url, "DUNNING_VAR_DIR": str(s.var_dir),
            "DUNNING_POLICY": str(s.dunning_policy), "LOG_FORMAT": "json",
            "QUEUE_NAMESPACE": s.queue_namespace, "REDIS_URL": s.redis_url or "", "BROKER_URL": s.broker_url or ""}


def invoke(*args, code: int = 0) -> Result:
    """Invoke `dunning ARGS` against the current test runtime's service and check its exit code.

    The runtime stays current: read-only commands build their own runtime on the same database, as
    a separate process does, and the test goes on with its own afterwards."""
    import dramatiq

    from worker import runtime as rt
    current = rt.current()
    try:
        result = CliRunner().invoke(main, list(args), env=cli_env(current))
    finally:
        rt._current = current
        dramatiq.set_broker(current.broker)
    assert result.exit_code == code, result.output
    return result


def run(*args, code: int = 0) -> str:
    """What `dunning ARGS` wrote (stdout and stderr, as a terminal shows them)."""
    return invoke(*args, code=code).output


def run_json(*args):
    return json.loads(run(*args, "--json"))
