from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.eventlog import EventLog

ROOT = Path(__file__).resolve().parents[2]
WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from serving.eventlog import EventLog
log = EventLog({path!r}, batch=50, flush_ms=5)
i = 0
while True:
    log.add("feedback", time.time(), f"q{{i}}", "u", "d", 1, "click")
    i += 1
    if i % 50 == 0:
        time.sleep(0.01)
"""


def count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


def test_close_flushes_everything(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db", batch=7, flush_ms=1000)
    for i in range(100):
        log.add("feedback", 0.0, f"q{i}", None, "d", 1, "impression")
    log.close()
    assert count(tmp_path / "events.db") == 100
    with pytest.raises(ValueError, match="6 columns"):
        log.add("feedback", 1, 2)


def test_kill_minus_9_keeps_every_committed_batch(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    process = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), path=str(path))])
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not path.exists() or count(path) < 500):
            time.sleep(0.1)
        before = count(path)
        assert before >= 500
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    # Everything committed before the kill is still there, and the file is a readable database.
    after = count(path)
    assert after >= before
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


ACKER = """
import sys, time
sys.path.insert(0, {root!r})
from serving.eventlog import EventLog
log = EventLog({path!r}, batch=10_000, flush_ms=60_000)  # batches would wait a minute: only commit() writes now
log.add("feedback", time.time(), "queued", "u", "d", 1, "impression")
log.commit("feedback", [(time.time(), "acked", "u", "d", 1, "click")]).result(timeout=30)
print("acked", flush=True)
time.sleep(600)
"""


def test_commit_resolves_only_after_the_rows_are_on_disk_and_survive_kill_minus_9(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    process = subprocess.Popen([sys.executable, "-c", ACKER.format(root=str(ROOT), path=str(path))],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "acked"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    with sqlite3.connect(path) as db:
        # The acknowledged click and everything queued before it were committed in the same transaction.
        assert sorted(q for (q,) in db.execute("SELECT query_id FROM feedback")) == ["acked", "queued"]


def test_commit_on_a_closed_log_fails_instead_of_waiting(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db")
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.commit("feedback", [(0.0, "q", None, "d", 1, "click")]).result(timeout=5)
