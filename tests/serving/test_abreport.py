"""A replay session over the tiny collection drives A/B, interleaving and a shadow; the report reads its log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from eval.abreport import ABReport, kendall, rbo
from retrieval.data import Dataset
from retrieval.errors import SiftrankError
from serving.app import create_app
from serving.replay import Replayer
from serving.variants import VariantPool


def test_rank_agreement_measures() -> None:
    assert rbo(["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1.0)
    assert rbo(["a", "b"], ["c", "d"]) == 0.0
    assert 0 < rbo(["a", "b", "c"], ["b", "a", "d"]) < 1
    assert kendall(["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1.0)
    assert kendall(["a", "b", "c"], ["c", "b", "a"]) == pytest.approx(-1.0)
    assert kendall(["a"], ["a"]) is None


def test_replay_then_report(built, tmp_path: Path, cli) -> None:
    path, pool = built
    config = pool.config.model_copy(deep=True)
    config.service.event_log = tmp_path / "events.db"
    data = Dataset.load(path.parent / "tiny")
    with TestClient(create_app(config, path, VariantPool(config, pool.variants))) as client:
        counts = Replayer(client, data.queries, data.qrels, k=5, seed=1).run(users=12, progress=False)
        client.portal.call(client.app.state.service.shadows.drain)
    assert sum(v for k, v in counts.items() if k.startswith("served:")) == 36 and counts["clicks"] > 0
    assert {k for k in counts if k.startswith("served:")} >= {"served:dense+bm25"}

    report = ABReport(tmp_path / "events.db")
    latency = report.latency()
    assert any(k.endswith("(served)") for k in latency) and "bm25 (shadow)" in latency
    agreement = report.shadow_agreement()
    assert "dense vs bm25" in agreement and 0 <= agreement["dense vs bm25"]["overlap@10"] <= 1
    wins = report.interleaving()["dense+bm25"]
    assert wins["dense wins"] + wins["bm25 wins"] + wins["ties"] > 0
    ndcg = report.ndcg(data.queries, data.qrels)
    assert set(ndcg) == {"dense", "bm25"} and all(0 < r["nDCG@10"] <= 1 for r in ndcg.values())

    code, out, err = cli("ab-report", "--event-log", tmp_path / "events.db", "--dataset", path.parent / "tiny", "--out", tmp_path / "report")
    assert code == 0, err
    assert "Team-draft interleaving" in out and "nDCG@10" in out
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report" / "report.json").read_text())["ndcg"]["dense"]["queries"] == 3


def test_report_bad_input(tmp_path: Path, cli) -> None:
    with pytest.raises(SiftrankError, match="event log not found"):
        ABReport(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 10)
    code, _, err = cli("ab-report", "--event-log", tmp_path / "junk.db")
    assert code == 2 and "not a siftrank event log" in err


def write_ab_log(path: Path, users_a: int, users_b: int, clicks_a: float = 0.5, clicks_b: float = 0.5) -> Path:
    """An event log with A/B queries only: one query per user, a click on a share of each arm's queries."""
    import sqlite3

    from serving.eventlog import SCHEMA

    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        for arm, users, rate in (("a", users_a, clicks_a), ("b", users_b, clicks_b)):
            for u in range(users):
                qid = f"{arm}{u}"
                db.execute("INSERT INTO queries VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                           (qid, 0.0, "x", f"{arm}-user{u}", None, "q", "ab", arm, 10, 5.0 + u % 7, "", None))
                if u < rate * users:
                    db.execute("INSERT INTO feedback VALUES (?,?,?,?,?,?)", (0.0, qid, f"{arm}-user{u}", "d1", 1, "click"))
    return path


def test_sample_ratio_mismatch_is_flagged_on_60_40_and_not_on_50_50(tmp_path: Path) -> None:
    skewed = ABReport(write_ab_log(tmp_path / "skewed.db", 600, 400)).arms({"a": 0.5, "b": 0.5})
    assert skewed["a"]["SRM"] == "MISMATCH" and skewed["a"]["SRM p"] < 1e-6
    even = ABReport(write_ab_log(tmp_path / "even.db", 500, 500, 0.3, 0.6)).arms({"a": 0.5, "b": 0.5})
    assert even["a"]["SRM"] == "ok" and even["b"]["SRM p"] == pytest.approx(1.0)
    assert even["a"]["CTR"] == pytest.approx(0.3) and even["b"]["CTR"] == pytest.approx(0.6)
    assert even["a"]["CTR 95% low"] < 0.3 < even["a"]["CTR 95% high"] < even["b"]["CTR 95% low"]
    # the configured split is what is expected: 60/40 users under a 60/40 split is no mismatch
    assert ABReport(tmp_path / "skewed.db").arms({"a": 0.6, "b": 0.4})["b"]["SRM"] == "ok"


def write_interleaved_log(path: Path, b_wins: int, a_wins: int) -> Path:
    """Interleaved searches of pair a+b, each with one click on the given team's document."""
    import sqlite3

    from serving.eventlog import SCHEMA

    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        for n, team in enumerate(["b"] * b_wins + ["a"] * a_wins):
            qid = f"s{n}"
            db.execute("INSERT INTO queries VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                       (qid, 0.0, "x", f"u{n}", None, "q", "interleave", "a+b", 2, 1.0, "", None))
            db.executemany("INSERT INTO results VALUES (?,?,?,?,?,?,?,?,?)",
                           [(qid, "a+b", "shown", 1, "d1", 0.0, 0.0, None, "a"), (qid, "a+b", "shown", 2, "d2", 0.0, 0.0, None, "b")])
            db.execute("INSERT INTO feedback VALUES (?,?,?,?,?,?)", (0.0, qid, f"u{n}", "d1" if team == "a" else "d2", 1, "click"))
    return path


def test_interleaving_promotes_the_candidate_only_when_it_wins_significantly(tmp_path: Path) -> None:
    clear = ABReport(write_interleaved_log(tmp_path / "clear.db", b_wins=40, a_wins=20)).interleaving()["a+b"]
    assert clear["decision"] == "promote b" and clear["p-value"] < 0.05
    close = ABReport(write_interleaved_log(tmp_path / "close.db", b_wins=22, a_wins=18)).interleaving()["a+b"]
    assert close["decision"] == "keep a" and close["p-value"] > 0.05
    worse = ABReport(write_interleaved_log(tmp_path / "worse.db", b_wins=10, a_wins=40)).interleaving()["a+b"]
    assert worse["decision"] == "keep a" and worse["p-value"] < 0.05
