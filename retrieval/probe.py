"""Speed choices made by measuring, once per machine: the fastest of a few ways to do the same work.

CPUs that report the same flags differ several-fold on bf16 work (AMX against AVX512-BF16 only), so
precision and backend are chosen by timing each candidate on the machine at hand. The outcome is cached
in ``<siftrank cache>/probes/<task>.json`` per CPU model and a caller's key (a model fingerprint, the
shape of the work), so the measurement runs once; the choice is logged with the times behind it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from retrieval.artifacts import cache_dir, write_text_atomic
from retrieval.errors import SiftrankError

log = logging.getLogger(__name__)


def cpu_model() -> str:
    """The CPU's model name with the cores this process may use, e.g. 'Intel(R) Xeon(R) ... (2 cores)'."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({cores} cores)"


class SpeedProbe:
    """Times candidates once per (CPU model, key) and remembers the fastest."""

    def __init__(self, task: str, folder: Path | None = None) -> None:
        if not task or "/" in task:
            raise SiftrankError(f"a probe task is a plain name, not '{task}'")
        self.task = task
        self.path = (folder or probe_folder() or cache_dir("probes")) / f"{task}.json"

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}  # a missing or damaged cache is measured again

    def lookup(self, key: str) -> dict | None:
        """The stored outcome for this CPU model and ``key`` (``choice``, ``seconds``, any notes), or None."""
        entry = self._read().get(f"{cpu_model()} | {key}")
        return entry if isinstance(entry, dict) and "choice" in entry else None

    def fastest(self, key: str, candidates: Mapping[str, Callable[[], object]], repeats: int = 2,
                notes: dict | None = None) -> tuple[str, dict[str, float]]:
        """The name of the fastest candidate and the seconds of each (best of ``repeats`` after a warm-up
        call), measured on the first call for this CPU model and ``key`` and read from the cache after;
        ``notes`` are stored beside the outcome (why some ways were not candidates)."""
        if not candidates:
            raise SiftrankError("a speed probe needs at least one candidate")
        entry = f"{cpu_model()} | {key}"
        cached = self._read().get(entry)
        if cached and cached.get("choice") in candidates:
            return cached["choice"], cached["seconds"]
        seconds: dict[str, float] = {}
        for name, work in candidates.items():
            work()  # warm-up: first-call allocations and kernel selection
            best = float("inf")
            for _ in range(max(1, repeats)):
                start = time.perf_counter()
                work()
                best = min(best, time.perf_counter() - start)
            seconds[name] = round(best, 4)
        choice = min(seconds, key=lambda n: seconds[n])
        data = self._read()
        data[entry] = {"choice": choice, "seconds": seconds, **(notes or {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(data, indent=1) + "\n")
        log.info("%s on %s: %s (seconds %s)", self.task, entry, choice, seconds)
        return choice, seconds


def probe_folder() -> Path | None:
    """``SIFTRANK_PROBES`` when set (tests share one folder of measurements), else the cache's."""
    folder = os.environ.get("SIFTRANK_PROBES")
    return Path(folder) if folder else None
