"""`make bench`: throughput, latency, scaling and memory of the real service, as ratios.

Every figure is measured in the same run as its baseline on the same stack (a bare endpoint on the
same gunicorn config; a no-op actor on the same broker and worker shape), so the ratios hold on a
noisy shared machine where absolute numbers do not. See bench/__main__.py.
"""
