"""Reading /metrics in tests: every sample parsed by prometheus_client."""


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value} (parsed by prometheus_client)."""
    from prometheus_client.parser import text_string_to_metric_families
    resp = client.simulate_get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)
