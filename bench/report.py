"""One table from the results: each figure next to its baseline, ratio, target and PASS/MISS.

The same rows are printed (plain text), written as markdown for the README
(bench/results/latest.md), and kept with every raw figure in bench/results/latest.json.
"""

from __future__ import annotations

from dataclasses import dataclass

# The targets: goals to beat, not tests.
TARGETS = {
    "ingest_ratio": (">=", 0.5),  # by requests/s (the first benchmark's target)
    "ingest_cpu_ratio": (">=", 0.35),  # by web CPU per request, bare / webhook (issue 17)
    "ingest_p99_half_ms": ("<", 50.0),
    "e2e_ratio": (">=", 0.04),  # issue 17: 0.3 x a no-op actor is out of reach of any durable design
    "e2e_floor_ratio": (">=", 0.7),  # e2e events/s over the floor of its own statements (issue 17)
    "stack_cpu_ms": ("<=", 10.0),  # worker + web + PostgreSQL CPU per event, end to end
    "e2e_p99_half_ms": ("<", 1000.0),
    "tick_scaling": ("<=", 1.5),
    "ingest_scaling": ("<=", 1.5),
    "worker_rss_mb": ("<", 200.0),
    "prune_p99_ratio": ("<=", 2.0),
    "front_ok": (">=", 1.0),  # share of events answered 200 under the stalled-connection attack
    "front_p99_ms": ("<", 1000.0),
    "front_late_closes": ("<=", 0.0),  # stalled connections not closed within WEB_READ_TIMEOUT + 5 s
    "front_healthz_failures": ("<=", 0.0),
    "metrics_scrape_ms": ("<", 50.0),
    "metrics_p99_ratio": ("<", 1.1),
}


@dataclass
class Row:
    section: str
    figure: str
    measured: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    result: str = ""


def verdict(key: str, value) -> tuple[str, str]:
    op, goal = TARGETS[key]
    text = f"{op} {goal:g}"
    if value is None:
        return text, "n/a"
    ok = {">=": value >= goal, "<": value < goal, "<=": value <= goal}[op]
    return text, "PASS" if ok else "MISS"


def _n(x, unit: str = "", digits: int = 0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}{unit}"


def _ms(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f} ms" if x < 10 else f"{x:,.1f} ms" if x < 100 else f"{x:,.0f} ms"


def _err(section: str, data: dict) -> Row | None:
    if "error" in data:
        return Row(section, "error", data["error"].splitlines()[0][:90], result="ERROR")
    if "skipped" in data:
        return Row(section, "skipped", data["skipped"][:90], result="SKIP")
    return None


def build_rows(results: dict) -> tuple[list[Row], dict]:
    rows: list[Row] = []
    checks: dict[str, dict] = {}

    def check(key: str, value) -> tuple[str, str]:
        target, result = verdict(key, value)
        checks[key] = {"value": value, "target": target, "result": result}
        return target, result

    ing = results.get("ingest", {})
    if (row := _err("ingest", ing)) is not None:
        rows.append(row)
    elif ing:
        t, r = check("ingest_ratio", ing["ratio"])
        rows.append(Row("ingest", f"webhook req/s, {ing['concurrency']} connections ({ing['database']})",
                        _n(ing["webhook"]["rps"], "/s"), _n(ing["bare"]["rps"], "/s bare"),
                        _n(ing["ratio"], digits=2), t, r))
        rows.append(Row("ingest", "p50 / p99 at peak", f"{_ms(ing['webhook']['p50_ms'])} / {_ms(ing['webhook']['p99_ms'])}",
                        f"{_ms(ing['bare']['p50_ms'])} / {_ms(ing['bare']['p99_ms'])} bare"))
        if ing.get("cpu_ratio") is not None:
            t, r = check("ingest_cpu_ratio", ing["cpu_ratio"])
            rows.append(Row("ingest", "web CPU per request (bare / webhook = ratio)",
                            _n(ing["webhook"]["cpu_ms_per_request"], " ms", 3),
                            _n(ing["bare"]["cpu_ms_per_request"], " ms bare", 3), _n(ing["cpu_ratio"], digits=2),
                            t, r))
        half = ing["half_peak"]
        t, r = check("ingest_p99_half_ms", half["p99_ms"])
        rows.append(Row("ingest", f"p99 at 50% of peak ({_n(half['rate'], '/s')} open loop)",
                        _ms(half["p99_ms"]), target=t.replace("50", "50 ms"), result=r))

    e2e, noop = results.get("e2e", {}), results.get("noop", {})
    if (row := _err("e2e", e2e) or _err("e2e", noop)) is not None:
        rows.append(row)
    elif e2e:
        shape = f"{e2e['processes']}x{e2e['threads']}"
        if e2e.get("status") != "ok":
            check("e2e_ratio", None)
            check("e2e_p99_half_ms", None)
            rows.append(Row("e2e", f"events/s webhook->email ({shape}, {e2e['database']})", e2e.get("status", "n/a"),
                            _n(noop.get("rate"), "/s no-op"), "n/a", verdict("e2e_ratio", None)[0], "n/a"))
        else:
            peak, half = e2e["peak"], e2e["half_peak"]
            ratio = round(peak["rate"] / noop["rate"], 3) if noop.get("rate") else None
            e2e["ratio"] = ratio
            t, r = check("e2e_ratio", ratio)
            rows.append(Row("e2e", f"events/s webhook->email, 70/20/10 mix ({shape}, {e2e['database']})",
                            _n(peak["rate"], "/s"), _n(noop["rate"], "/s no-op"), _n(ratio, digits=3), t, r))
            if peak.get("worker_cpu_ms_per_event") and noop.get("worker_cpu_ms_per_message"):
                cpu_ratio = round(noop["worker_cpu_ms_per_message"] / peak["worker_cpu_ms_per_event"], 3)
                rows.append(Row("e2e", "worker CPU per event (no-op / pipeline = ratio)",
                                _n(peak["worker_cpu_ms_per_event"], " ms", 2),
                                _n(noop["worker_cpu_ms_per_message"], " ms no-op", 3), _n(cpu_ratio, digits=3)))
            rows.append(Row("e2e", "p50 / p99 receipt->email at peak (burst: queueing)",
                            f"{_ms(peak['p50_ms'])} / {_ms(peak['p99_ms'])}",
                            f"{peak['payment_failed_emails']}/{peak['payment_failed']} emails"))
            t, r = check("e2e_p99_half_ms", half["p99_ms"])
            rows.append(Row("e2e", f"p99 receipt->email at 50% of peak ({_n(half['rate'], '/s', 1)})",
                            _ms(half["p99_ms"]), f"{half['payment_failed_emails']}/{half['payment_failed']} emails",
                            target=t.replace("1000", "1000 ms"), result=r))
            if e2e.get("idle_cpu_ms_per_s") is not None and noop.get("idle_cpu_ms_per_s") is not None:
                rows.append(Row("e2e", f"worker pool CPU while idle ({shape}), ms per second",
                                _n(e2e["idle_cpu_ms_per_s"], " ms/s", 1),
                                _n(noop["idle_cpu_ms_per_s"], " ms/s no-op", 1)))

    fl = results.get("floor", {})
    if (row := _err("floor", fl)) is not None:
        rows.append(row)
    elif fl:
        _floor_rows(fl, e2e, rows, check)

    sc = results.get("scaling", {})
    if (row := _err("scaling", sc)) is not None:
        rows.append(row)
    elif sc:
        tick, ing2 = sc["tick"], sc["ingest"]
        t, r = check("tick_scaling", tick["ratio"])
        rows.append(Row("scaling", f"tick enqueuing {tick['due']:,} due: {tick['large']['open_cases']:,} vs "
                                   f"{tick['small']['open_cases']:,} open cases",
                        _ms(tick["large"]["median_ms"]), _ms(tick["small"]["median_ms"]),
                        _n(tick["ratio"], digits=2), t, r))
        if tick.get("due_query_ratio") is not None:
            rows.append(Row("scaling", "  of which the due query, server-side (EXPLAIN ANALYZE)",
                            _ms(tick["large"]["due_query_ms"]), _ms(tick["small"]["due_query_ms"]),
                            _n(tick["due_query_ratio"], digits=2)))
        t, r = check("ingest_scaling", ing2["ratio"])
        rows.append(Row("scaling", f"ingest req/s: {ing2['large']['stored_events']:,} vs "
                                   f"{ing2['small']['stored_events']:,} stored events",
                        _n(ing2["large"]["rps"], "/s"), _n(ing2["small"]["rps"], "/s"),
                        _n(ing2["ratio"], digits=2), t, r))

    pr = results.get("prune", {})
    if (row := _err("prune", pr)) is not None:
        rows.append(row)
    elif pr:
        rows.append(Row("prune", f"rows removed/s pruning {pr['events']:,} events ({pr['database']}, batches of 1,000)",
                        _n(pr["rows_per_s"], "/s"), f"{_n(pr['removed'])} in {_n(pr['prune_s'], ' s', 1)}"))
        t, r = check("prune_p99_ratio", pr["p99_ratio"])
        rows.append(Row("prune", f"webhook p99 during the prune vs without ({_n(pr['rate'], '/s')} open loop)",
                        _ms(pr["during"]["p99_ms"]), _ms(pr["without"]["p99_ms"]) + " without",
                        _n(pr["p99_ratio"], digits=2), t, r))
    fr = results.get("front", {})
    if (row := _err("front", fr)) is not None:
        rows.append(row)
    elif fr:
        _front_rows(fr, rows, check)

    pe = results.get("peer", {})
    if (row := _err("peer", pe)) is not None:
        rows.append(row)
    elif pe:
        _peer_rows(pe, e2e, rows)

    mem = results.get("memory", {})
    if mem:
        if mem.get("web_mb") is not None:
            rows.append(Row("memory", "peak RSS per web process (gunicorn worker)", _n(mem["web_mb"], " MB", 1),
                            _n(mem.get("bare_mb"), " MB bare", 1)))
        if mem.get("worker_mb") is not None:
            t, r = check("worker_rss_mb", mem.get("worker_mb"))
            rows.append(Row("memory", "peak RSS per worker process (dramatiq)", _n(mem["worker_mb"], " MB", 1),
                            _n(mem.get("noop_worker_mb"), " MB no-op", 1), target=t + " MB", result=r))
    return rows, checks


def _floor_rows(fl: dict, e2e: dict, rows: list[Row], check) -> None:
    rep, vs = fl["replay"], fl.get("vs_e2e") or {}
    shape = f"{fl['processes']}x{fl['threads']}"
    if rep["errors"]:
        rows.append(Row("floor", "replay errors", f"{rep['errors']}/{rep['events']}", rep["first_error"] or "",
                        result="ERROR"))
    peak = e2e.get("peak") or {}
    t, r = check("e2e_floor_ratio", vs.get("rate_ratio"))
    rows.append(Row("floor", f"events/s e2e vs the floor: its statements, raw prepared psycopg ({shape})",
                    _n(peak.get("rate"), "/s"), _n(rep["rate"], "/s floor"), _n(vs.get("rate_ratio"), digits=3), t, r))
    for kind, c in fl["statements"].items():
        if kind == "customer.created":
            continue  # the warm-up's type, not in the timed mix
        parts = ", ".join(f"{name} {p['statements']}" + (f"/{p['transactions']} tx" if p["transactions"] else "")
                          for name, p in c["parts"].items())
        rows.append(Row("floor", f"statements per {kind}", f"{c['statements']} in {c['transactions']} tx"
                        + (f" + {c['autocommit']} autocommit" if c["autocommit"] else ""), parts))
    if vs.get("e2e_stack_cpu_ms_per_event") is not None:
        t, r = check("stack_cpu_ms", vs["e2e_stack_cpu_ms_per_event"])
        rows.append(Row("floor", "whole-stack CPU per event: e2e (worker+web+PostgreSQL) vs floor (client+PostgreSQL)",
                        _n(vs["e2e_stack_cpu_ms_per_event"], " ms", 2), _n(vs["floor_stack_cpu_ms_per_event"], " ms floor", 2),
                        _n(vs["stack_cpu_ratio"], digits=2), t.replace("10", "10 ms"), r))
        rows.append(Row("floor", "  CPU per event by process: worker / web / PostgreSQL backends",
                        " / ".join(_n(peak.get(k), "", 2) for k in ("worker_cpu_ms_per_event", "web_cpu_ms_per_event",
                                                                    "postgres_cpu_ms_per_event")) + " ms",
                        f"client {_n(rep['client_cpu_ms_per_event'], '', 2)} / PostgreSQL "
                        f"{_n(rep['postgres_cpu_ms_per_event'], '', 2)} ms floor", _n(vs.get("postgres_cpu_ratio"), digits=2)))
    else:
        rows.append(Row("floor", "CPU per event: client / PostgreSQL backends (floor)",
                        f"{_n(rep['client_cpu_ms_per_event'], '', 2)} / {_n(rep['postgres_cpu_ms_per_event'], '', 2)} ms"))


def _peer_rows(pe: dict, e2e: dict, rows: list[Row]) -> None:
    """e2e beside dj-stripe: a comparison, not a target (issue 17's "side-by-side")."""
    peak, ours = pe["peak"], (e2e.get("peak") if e2e.get("status") == "ok" else None) or {}
    shape, version = f"{pe['processes']}x{pe['threads']}", pe.get("versions", {}).get("dj-stripe", "?")
    ratio = round(ours["rate"] / peak["rate"], 2) if ours.get("rate") and peak.get("rate") else None
    pe["ratio"] = ratio
    rows.append(Row("peer", f"events/s end to end: e2e vs dj-stripe {version} processing in the request ({shape})",
                    _n(ours.get("rate"), "/s"), _n(peak["rate"], "/s dj-stripe", 1), _n(ratio, digits=2)))
    stack = [ours.get(k) for k in ("worker_cpu_ms_per_event", "web_cpu_ms_per_event", "postgres_cpu_ms_per_event")]
    theirs = [peak.get(k) for k in ("web_cpu_ms_per_event", "postgres_cpu_ms_per_event")]
    if None not in stack and None not in theirs:
        rows.append(Row("peer", "CPU per event: e2e (worker+web+PostgreSQL) vs dj-stripe (web+PostgreSQL); ratio dj-stripe / e2e",
                        _n(sum(stack), " ms", 2), f"{_n(sum(theirs), ' ms', 2)} dj-stripe "
                        f"({_n(theirs[0], '', 2)} + {_n(theirs[1], '', 2)})", _n(sum(theirs) / sum(stack), digits=2)))
    rows.append(Row("peer", "dj-stripe per request: p50 / p99; Stripe API reads per event (stub)",
                    f"{_ms(peak.get('p50_ms'))} / {_ms(peak.get('p99_ms'))}", _n(peak.get("stripe_reads_per_event"), "", 2)))


def _front_rows(fr: dict, rows: list[Row], check) -> None:
    attack, base = fr["attack"], fr["baseline"]
    ev, st, hz = attack["events"], attack["stalled"], attack["healthz"]
    t, r = check("front_ok", round(ev["ok"] / ev["events"], 3) if ev["events"] else None)
    rows.append(Row("front", f"events answered 200 under {st['held']} stalled connections ({fr['hold_s']:g} s)",
                    f"{ev['ok']}/{ev['events']}", f"{base['ok']}/{base['events']} no attack", target=t, result=r))
    t, r = check("front_p99_ms", ev["p99_ms"])
    rows.append(Row("front", f"event p50 / p99 at {ev['rate']:g}/s under attack",
                    f"{_ms(ev['p50_ms'])} / {_ms(ev['p99_ms'])}", f"{_ms(base['p50_ms'])} / {_ms(base['p99_ms'])} no attack",
                    _n(fr.get("p99_ratio"), digits=2), t.replace("1000", "1000 ms"), r))
    t, r = check("front_healthz_failures", hz["failures"])
    rows.append(Row("front", "/healthz polls failed during the attack (max latency)",
                    f"{hz['failures']}/{hz['polls']} ({_ms(hz['max_ms'])})", target=t, result=r))
    t, r = check("front_late_closes", st["late"])
    rows.append(Row("front", f"stalled connections closed later than {st['deadline_s']:g} s (max close)",
                    f"{st['late']}/{st['opened']} (max {st['max_close_s']} s)",
                    f"WEB_READ_TIMEOUT {fr['read_timeout_s']} s", target=t, result=r))
    m = fr.get("metrics", {})
    if "skipped" in m:
        rows.append(Row("front", "metrics", "skipped", m["skipped"][:90], result="SKIP"))
    elif m:
        t, r = check("metrics_scrape_ms", m["scrape_p50_ms"])
        rows.append(Row("front", f"/metrics scrape with {fr['metrics_rows']:,} events (p50, max)",
                        f"{_ms(m['scrape_p50_ms'])} (max {_ms(m['scrape_max_ms'])})",
                        f"one refresh: {_ms(m.get('refresh_ms'))} per 30 s", target=t.replace("50", "50 ms"), result=r))
        if m.get("domain_read_ratio") is not None:
            rows.append(Row("front", f"domain figures read (a snapshot refresh), database time, "
                            f"{fr['metrics_rows']:,} events vs 0", _ms(m["domain_read_server_ms_large"]),
                            _ms(m["domain_read_server_ms_empty"]), _n(m["domain_read_ratio"], digits=2)))
            rows.append(Row("front", "  the same, pages it touches (EXPLAIN BUFFERS)", _n(m["domain_read_pages_large"]),
                            _n(m["domain_read_pages_empty"])))
        t, r = check("metrics_p99_ratio", m["p99_ratio"])
        rows.append(Row("front", f"webhook p99 at {m['rate']:g}/s with 16 scrapers (1/s each) vs none",
                        _ms(m["webhook_p99_ms_with_16_scrapers"]), _ms(m["webhook_p99_ms_without"]),
                        _n(m["p99_ratio"], digits=2), t, r))
        if m.get("p99_ratio_16_vs_1") is not None:
            rows.append(Row("front", "  the same, 16 scrapers vs 1 (the refresh is paid by any scraper)",
                            _ms(m["webhook_p99_ms_with_16_scrapers"]), _ms(m["webhook_p99_ms_with_1_scraper"]),
                            _n(m["p99_ratio_16_vs_1"], digits=2)))


HEADERS = ("section", "figure", "measured", "baseline", "ratio", "target", "result")


def as_text(rows: list[Row], title: str) -> str:
    cells = [HEADERS] + [tuple(getattr(r, h) for h in HEADERS) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line]
    for n, c in enumerate(cells):
        out.append("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
        if n == 0:
            out.append(line)
    return "\n".join(out)


def as_markdown(rows: list[Row], title: str) -> str:
    out = [f"_{title}_", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        out.append("| " + " | ".join(getattr(r, h).replace("|", "\\|") for h in HEADERS) + " |")
    return "\n".join(out) + "\n"


def memory_summary(results: dict) -> dict:
    """Peak RSS per process, by role: gunicorn workers, dramatiq worker processes (the max of each)."""
    def peak(entries, role=None):
        values = [e["peak_rss_mb"] for e in entries or [] if role is None or e["role"] == role]
        return max(values) if values else None

    ing, e2e, noop = results.get("ingest", {}), results.get("e2e", {}), results.get("noop", {})
    web_entries = (ing.get("rss", {}).get("web") or []) + (e2e.get("rss", {}).get("web") or [])
    return {
        "web_mb": peak(web_entries, "child"),
        "web_master_mb": peak(web_entries, "parent"),
        "bare_mb": peak(ing.get("rss", {}).get("bare"), "child"),
        "worker_mb": peak(e2e.get("rss", {}).get("worker")),
        "noop_worker_mb": peak(noop.get("rss")),
        "source": "/proc/<pid>/status VmHWM of each process and its children, read before stopping it",
    }
