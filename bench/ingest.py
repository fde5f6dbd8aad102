"""Section 1: webhook ingest against a bare endpoint on the same gunicorn stack.

Both servers run at once; the load alternates between them in short closed-loop slices (the same
connections, the same bodies of new payment_failed events), so each sees the same background
noise of a shared machine. The real webhook then gets an open-loop load at half its own peak,
where the latency target applies. No worker runs here: ingest is the web process alone
(messages wait in this run's Redis namespace, deleted at the end).
"""

from __future__ import annotations

from bench.events import EVT_MARK, INV_MARK, ingest_template
from bench.services import free_port, tree_cpu_seconds, tree_peak_rss


def measure_ingest(run) -> dict:
    cfg = run.cfg
    database_url = run.new_database("ingest")
    env = run.service_env(database_url, run.namespace("ingest"), free_port())
    template = ingest_template(run.tag)
    common = dict(template=template, marks=[EVT_MARK, INV_MARK], concurrency=cfg.concurrency)

    bare, bare_port = run.start_bare(env)
    web, port = run.start_web("web-ingest", env)
    try:
        ports = {"bare": bare_port, "webhook": port}
        # Warm both first (a process reflects the schema and opens its pools on its first
        # requests): CPU, profile and figures count steady state only.
        run.load("ingest-warmup", mode="alternate", ports=ports, rounds=1, duration=2 * cfg.warmup,
                 id_prefix=f"w{run.tag}", **common)
        profiler = run.profiler("web-ingest", web)
        cpu_before = {"bare": tree_cpu_seconds(bare), "webhook": tree_cpu_seconds(web)}
        try:
            both = run.load("ingest", mode="alternate", ports=ports, rounds=cfg.rounds,
                            duration=2 * cfg.duration, id_prefix=f"p{run.tag}", **common)
        finally:
            run.end_profile(profiler)
        bare_peak, peak = both["bare"], both["webhook"]
        bare_peak["cpu_ms_per_request"] = _per_request(tree_cpu_seconds(bare) - cpu_before["bare"], bare_peak)
        peak["cpu_ms_per_request"] = _per_request(tree_cpu_seconds(web) - cpu_before["webhook"], peak)
        half_rate = max(1.0, round(peak["rps"] * 0.5, 1))
        half = run.load("ingest-half", port=port, mode="open", rate=half_rate, duration=cfg.duration,
                        id_prefix=f"h{run.tag}", **common)
    finally:
        bare_rss, web_rss = tree_peak_rss(bare), tree_peak_rss(web)
        run.stop(bare)
        run.stop(web)

    for name, result in (("bare", bare_peak), ("ingest", peak), ("ingest at half peak", half)):
        if not result["ok"]:
            raise RuntimeError(f"{name}: no request succeeded (statuses {result['statuses']})")
    return {
        "database": run.database_kind,
        "concurrency": cfg.concurrency,
        "rounds": cfg.rounds,
        "bare": _public(bare_peak),
        "webhook": _public(peak),
        "ratio": round(peak["rps"] / bare_peak["rps"], 3) if bare_peak["rps"] else None,
        # bare CPU per request / webhook CPU per request (the web processes only, not PostgreSQL)
        "cpu_ratio": (round(bare_peak["cpu_ms_per_request"] / peak["cpu_ms_per_request"], 3)
                      if bare_peak["cpu_ms_per_request"] and peak["cpu_ms_per_request"] else None),
        "half_peak": {"rate": half_rate, **_public(half)},
        "rss": {"bare": bare_rss, "web": web_rss},
    }


def _per_request(cpu_s: float, result: dict) -> float | None:
    return round(cpu_s * 1000 / result["requests"], 3) if result["requests"] else None


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("records", "first_sent", "last_done")}
