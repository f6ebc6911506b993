"""The service's event log: SQLite in WAL mode, UBI-like tables, written in batches by one background thread.

Tables (after OpenSearch's User Behavior Insights): ``queries`` (one row per search request), ``results``
(every ranked document of every variant that ran: served, shadow, or an interleaving team's list),
``stages`` (per-stage latency and how many candidates the threshold cut), ``feedback`` (impressions and
clicks with positions). Request handlers only enqueue; the writer commits a batch every ``flush_ms`` or
``batch`` events, so a killed server loses at most the batch in flight and never a committed one. Events that are
training data (``/feedback``: clicks) are queued with ``commit``, whose future resolves once their batch is on
disk, so the service acknowledges a click only after it can no longer be lost.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (query_id TEXT PRIMARY KEY, ts REAL, experiment TEXT, user_id TEXT,
    session_id TEXT, query TEXT, mode TEXT, variant TEXT, k INTEGER, latency_ms REAL, flags TEXT, corpus_version INTEGER);
CREATE TABLE IF NOT EXISTS results (query_id TEXT, variant TEXT, role TEXT, rank INTEGER, doc_id TEXT,
    score REAL, cosine REAL, relevance REAL, team TEXT);
CREATE TABLE IF NOT EXISTS stages (query_id TEXT, variant TEXT, role TEXT, stage TEXT, ms REAL, cut INTEGER);
CREATE TABLE IF NOT EXISTS feedback (ts REAL, query_id TEXT, user_id TEXT, doc_id TEXT, position INTEGER,
    event TEXT);
CREATE INDEX IF NOT EXISTS results_query ON results (query_id);
CREATE INDEX IF NOT EXISTS feedback_query ON feedback (query_id);
"""
COLUMNS = {"queries": 12, "results": 9, "stages": 6, "feedback": 6}


class EventLog:
    """Batched, non-blocking writes to one SQLite file; ``close`` flushes everything queued."""

    def __init__(self, path: Path, batch: int = 256, flush_ms: float = 50.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)
            if "corpus_version" not in {row[1] for row in db.execute("PRAGMA table_info(queries)")}:
                db.execute("ALTER TABLE queries ADD COLUMN corpus_version INTEGER")  # a log from before live corpora
        self.batch, self.flush_s = batch, flush_ms / 1000
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | Future[None] | None] = queue.Queue()
        self._direct = self._connect()  # synchronous writes and reads that every worker must see at once
        self._direct_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="siftrank-eventlog", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a process kill never loses a commit
        db.execute("PRAGMA busy_timeout=5000")  # several workers write the same file
        return db

    def add(self, table: str, *row: Any) -> None:
        """Queue one row (never blocks the caller)."""
        if len(row) != COLUMNS[table]:
            raise ValueError(f"{table} rows have {COLUMNS[table]} columns, got {len(row)}")
        self._queue.put((table, row))

    def add_many(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            self.add(table, *row)

    def commit(self, table: str, rows: list[tuple[Any, ...]]) -> Future[None]:
        """Queue ``rows`` like ``add_many``; the future resolves once they are committed (batched with whatever
        else is queued, so a burst of clicks costs one transaction) or fails with the database's error."""
        self.add_many(table, rows)
        done: Future[None] = Future()
        if self._thread.is_alive():
            self._queue.put(done)
        else:
            done.set_exception(RuntimeError("the event log is closed"))
        return done

    def write_now(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Commit ``rows`` before returning: for what another worker process may need to read next (the
        teams of an interleaved list, read back when its clicks arrive at another worker)."""
        if any(len(row) != COLUMNS[table] for row in rows):
            raise ValueError(f"{table} rows have {COLUMNS[table]} columns")
        with self._direct_lock, self._direct:
            self._direct.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({','.join('?' * COLUMNS[table])})", rows)

    def teams(self, query_id: str) -> list[tuple[str, str]]:
        """(doc id, team) of an interleaved list as shown, in rank order (empty when unknown)."""
        with self._direct_lock:
            return self._direct.execute("SELECT doc_id, team FROM results WHERE query_id = ? AND role = 'shown' "
                                        "AND team IS NOT NULL ORDER BY rank", (query_id,)).fetchall()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        db = self._connect()
        stop = False
        while not stop:
            items: list[tuple[str, tuple[Any, ...]]] = []
            waiting: list[Future[None]] = []
            deadline = time.monotonic() + self.flush_s
            while len(items) < self.batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if isinstance(item, Future):  # someone waits for this commit: write now, do not fill the batch
                    waiting.append(item)
                    break
                else:
                    items.append(item)
            if items or waiting:
                self._commit(db, items, waiting)
        db.close()

    def _commit(self, db: sqlite3.Connection, items: list[tuple[str, tuple[Any, ...]]], waiting: list[Future[None]]) -> None:
        """One transaction for the batch; then the futures of ``commit`` calls whose rows it held resolve."""
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for table, row in items:
            by_table.setdefault(table, []).append(row)
        try:
            with db:  # one transaction per batch
                for table, rows in by_table.items():
                    db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({','.join('?' * COLUMNS[table])})", rows)
        except sqlite3.Error as exc:
            log.exception("event log: a batch of %d events could not be written", len(items))
            for done in waiting:
                if done.set_running_or_notify_cancel():  # False: the caller gave up waiting (cancelled)
                    done.set_exception(exc)
            return
        for done in waiting:
            if done.set_running_or_notify_cancel():
                done.set_result(None)

    def close(self) -> None:
        """Flush every queued event and stop the writer."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        with self._direct_lock:
            self._direct.close()
