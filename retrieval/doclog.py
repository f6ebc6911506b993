"""The document write log: every upsert and delete, durable before it is acknowledged.

SQLite in WAL mode with ``synchronous=FULL``: a batch is one transaction, and once :meth:`DocumentLog.append`
returns its commit has been fsync'd, so a kill -9 (or a power cut) after the acknowledgment loses nothing,
and a crash before the commit leaves nothing half-written (the transaction is rolled back on open). Each
batch gets a version number (increasing); a live corpus's snapshot records the version it holds, start-up
replays the batches after it, and :meth:`truncate` drops what every snapshot already holds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retrieval.errors import SiftrankError

SCHEMA = """
CREATE TABLE IF NOT EXISTS ops (seq INTEGER PRIMARY KEY AUTOINCREMENT, version INTEGER NOT NULL,
                                op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')), doc_id TEXT NOT NULL, doc TEXT);
CREATE INDEX IF NOT EXISTS ops_version ON ops (version);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class DocumentLog:
    """Append-only log of document batches (one SQLite file beside the snapshots)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise SiftrankError(f"{self.path}: not a document log ({exc})") from None
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        """The last version written (or truncated through); 0 for a new log."""
        row = self._conn.execute("SELECT max(version) FROM ops").fetchone()
        return max(int(row[0] or 0), self.truncated)

    @property
    def truncated(self) -> int:
        """Versions up to this one were dropped (every snapshot holds them)."""
        row = self._conn.execute("SELECT value FROM state WHERE key = 'truncated'").fetchone()
        return int(row[0]) if row else 0

    def append(self, upserts: list[dict[str, Any]], deletes: list[str]) -> int:
        """Write one batch durably; returns its version. ``upserts`` are documents (``id``, ``text``, ...)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                version = self.version + 1
                self._conn.executemany("INSERT INTO ops (version, op, doc_id, doc) VALUES (?, ?, ?, ?)",
                                       [(version, "upsert", d["id"], json.dumps(d)) for d in upserts]
                                       + [(version, "delete", d, None) for d in deletes])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return version

    def since(self, version: int) -> Iterator[tuple[int, list[dict[str, Any]], list[str]]]:
        """Every batch after ``version``, in order: (version, upserted documents, deleted ids)."""
        if version < self.truncated:
            raise SiftrankError(f"{self.path}: batches up to version {self.truncated} were compacted away, but a snapshot "
                                f"at version {version} needs them: delete the stale snapshot's variant or rebuild it")
        batch: tuple[int, list[dict[str, Any]], list[str]] | None = None
        for v, op, doc_id, doc in self._conn.execute(
                "SELECT version, op, doc_id, doc FROM ops WHERE version > ? ORDER BY seq", (version,)):
            if batch is None or batch[0] != v:
                if batch is not None:
                    yield batch
                batch = (v, [], [])
            if op == "upsert":
                batch[1].append(json.loads(doc))
            else:
                batch[2].append(doc_id)
        if batch is not None:
            yield batch

    def truncate(self, through: int) -> int:
        """Drop the batches up to ``through`` (held by every snapshot); returns how many operations went."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                gone = self._conn.execute("DELETE FROM ops WHERE version <= ?", (through,)).rowcount
                self._conn.execute("INSERT INTO state (key, value) VALUES ('truncated', ?) "
                                   "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)", (through,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return int(gone)

    def close(self) -> None:
        self._conn.close()
