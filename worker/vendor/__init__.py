"""Third-party code kept in the tree, unchanged, where installing it from PyPI cannot work.

dramatiq_dashboard/  dramatiq-dashboard 0.4.0 (Bogdan Popa, LGPL-3.0-or-later: COPYING and
                     COPYING.LESSER beside it). Its published metadata pins dramatiq<2 and
                     redis<5, which no resolver can satisfy next to dramatiq 2; the code itself
                     runs on dramatiq 2 and redis 8 (tests/system/test_dashboard.py). Kept here so the
                     lock files stay honest and `pip check` passes; one local change: its Jinja
                     PackageLoader names `__package__` instead of "dramatiq_dashboard". Replace
                     it with the PyPI package once a release lifts those pins.
"""
