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
