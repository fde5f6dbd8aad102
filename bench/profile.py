"""`--profile`: sample the service's processes with py-spy during a timed phase, summarize hot spots.

py-spy attaches from outside (no code change, ~no overhead with --nonblocking) and follows the
children of gunicorn and dramatiq (--subprocesses). The raw collapsed stacks are kept next to the
results (open them with speedscope or flamegraph.pl); the summary lists the functions with the
most samples on CPU, by self time and by inclusive time. Figures from a profiled run are slower:
read them for where the time goes, not for the table.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.services import BIN


def py_spy() -> str | None:
    found = BIN / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, out_dir: Path, name: str, pid: int, rate: int = 200, gil: bool = False):
        self.name = name + ("-cpu" if gil else "-wall")
        self.output = out_dir / f"profile-{self.name}.txt"
        out_dir.mkdir(parents=True, exist_ok=True)
        # --gil samples only the thread holding the GIL: Python CPU. Without it: busy threads'
        # wall clock, time blocked on PostgreSQL or Redis included. Read --gil with care: a thread
        # taking the GIL back after a query is sampled at its next line, so a cheap line right
        # after I/O can look hot (issue 17's sixth pass; bench/results/floor-paired.md).
        self.proc = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                                      "--rate", str(rate), "--format", "raw", "--output", str(self.output),
                                      *(["--gil"] if gil else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.output.exists():
            return {"error": (err or b"").decode(errors="replace").strip()[-500:] or "py-spy wrote nothing"}
        return summarize(self.output)


def _frame(frame: str) -> str:
    """`func (path/to/mod.py:12)` -> `func (mod.py)`; line numbers split one function into many."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{name} ({short})"


def summarize(path: Path, top: int = 15) -> dict:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    pct = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    ours = [(f, n) for f, n in inclusive.most_common() if f.split(" (", 1)[1].startswith(OUR_PACKAGES)]
    return {"samples": total, "file": str(path),
            "self": [[f, pct(n)] for f, n in self_time.most_common(top)],
            "inclusive": [[f, pct(n)] for f, n in inclusive.most_common(top * 2)],
            "ours": [[f, pct(n)] for f, n in ours[:top * 2]]}


# Frames of this project's code: where in our code the time is spent (inclusive of what it calls).
OUR_PACKAGES = ("worker/", "handlers/", "config/", "cli/")


def available() -> bool:
    if py_spy() is None:
        print("--profile needs py-spy (pip install py-spy); profiling skipped", file=sys.stderr)
        return False
    return True
