"""The search service end to end on the tiny collection: search, A/B, interleaving, shadows, log, admin."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import API_KEY_ENV, create_app
from serving.experiment import ExperimentConfig
from serving.variants import VariantPool


def make_app(built, tmp_path: Path, **experiment_changes):
    """An app over the module's pool, with its own event log (and optionally another experiment section)."""
    path, pool = built
    config = pool.config.model_copy(deep=True)
    config.service.event_log = tmp_path / "events.db"
    if experiment_changes:
        config.experiment = config.experiment.model_copy(update=experiment_changes)
    return create_app(config, path, VariantPool(config, pool.variants)), config.service.event_log


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_search_returns_hits_and_logs_them(built, tmp_path: Path) -> None:
    app, db = make_app(built, tmp_path, ab={}, interleave=[], shadows=[])
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        body = client.post("/search", json={"query": "why do volcanoes erupt", "k": 3}).json()
        assert body["mode"] == "primary" and body["variant"] == "dense"
        assert [h["rank"] for h in body["hits"]] == [1, 2, 3]
        assert body["hits"][0]["id"] == "d3" and "magma" in body["hits"][0]["text"]
        assert body["hits"][0]["cosine"] is not None and body["hits"][0]["variant"] == "dense"
        bm25 = client.post("/search", json={"query": "why do volcanoes erupt", "k": 2, "variant": "bm25"}).json()
        assert bm25["mode"] == "explicit" and bm25["hits"][0]["text"]
        flagged = client.post("/search", json={"query": "bread", "rerank": True}).json()
        assert "rerank_unavailable" in flagged["flags"]
        metrics = client.get("/metrics").text
        assert 'siftrank_request_seconds_count{role="served",variant="dense"}' in metrics
        assert "siftrank_stage_seconds_bucket" in metrics
    assert rows(db, "SELECT COUNT(*) FROM queries")[0][0] == 3  # shutdown flushed the log
    shown = rows(db, f"SELECT doc_id FROM results WHERE query_id = '{body['query_id']}' AND role = 'shown' ORDER BY rank")
    assert [d for (d,) in shown] == [h["id"] for h in body["hits"]]
    assert rows(db, "SELECT COUNT(*) FROM stages WHERE stage = 'dense'")[0][0] >= 2


def test_not_ready_until_loaded(built, tmp_path: Path) -> None:
    path, pool = built
    config = pool.config.model_copy(deep=True)
    config.service.event_log = tmp_path / "events.db"
    client = TestClient(create_app(config, path))  # no lifespan run: the pool never loads
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    assert client.post("/search", json={"query": "bread"}).status_code == 503


@pytest.mark.parametrize(("payload", "status", "message"), [
    ({"query": ""}, 422, "at least 1 character"),
    ({"query": "   "}, 422, "empty or whitespace"),
    ({"query": "x" * 201}, 422, "longer than 200"),
    ({"query": "bread", "k": 0}, 422, "greater than or equal to 1"),
    ({"query": "bread", "k": 21}, 422, "k must be <= 20"),
    ({"query": "bread", "variant": "nope"}, 404, "unknown variant 'nope'"),
    ({"query": "bread", "min_relevance": 0.5}, 422, "needs a relevance filter"),
    ({"query": "bread", "surprise": 1}, 422, "Extra inputs"),
])
def test_bad_search_input_is_4xx(built, tmp_path: Path, payload: dict, status: int, message: str) -> None:
    app, _ = make_app(built, tmp_path, ab={}, interleave=[], shadows=[])
    with TestClient(app) as client:
        response = client.post("/search", json=payload)
        counted = client.get("/metrics").text
    assert response.status_code == status and message in response.text
    assert f'siftrank_errors_total{{status="{status}"}} 1.0' in counted


def test_malformed_and_oversized_bodies(built, tmp_path: Path) -> None:
    app, _ = make_app(built, tmp_path)
    with TestClient(app) as client:
        bad = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 422 and "JSON" in bad.text
        big = client.post("/search", json={"query": "x" * 10_000})
        assert big.status_code == 413 and "over 4096 bytes" in big.text

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(10):
                yield b" " * 1000

        streamed = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert client.post("/feedback", json={"query_id": "q", "events": []}).status_code == 422


def test_ab_assignment_is_sticky_and_splits_users(built, tmp_path: Path) -> None:
    app, _ = make_app(built, tmp_path, interleave=[], shadows=[])
    with TestClient(app) as client:
        seen = {}
        for user in range(30):
            first = client.post("/search", json={"query": "bread", "user_id": f"u{user}"}).json()
            again = client.post("/search", json={"query": "volcano", "user_id": f"u{user}"}).json()
            assert first["mode"] == "ab" and first["variant"] == again["variant"]
            seen[user] = first["variant"]
    assert set(seen.values()) == {"dense", "bm25"}


def test_interleaving_credits_clicks_to_teams(built, tmp_path: Path) -> None:
    app, db = make_app(built, tmp_path, ab={}, interleave_share=1.0, shadows=[])
    with TestClient(app) as client:
        body = client.post("/search", json={"query": "how to bake bread at home", "k": 6, "user_id": "u1"}).json()
        assert body["mode"] == "interleave" and body["variant"] == "dense+bm25"
        ids = [h["id"] for h in body["hits"]]
        assert len(ids) == len(set(ids)) == 6 and {h["variant"] for h in body["hits"]} == {"dense", "bm25"}
        clicked = body["hits"][0]
        feedback = client.post("/feedback", json={"query_id": body["query_id"], "user_id": "u1", "events": [
            {"doc_id": clicked["id"], "position": 1, "event": "impression"},
            {"doc_id": clicked["id"], "position": 1, "event": "click"}]}).json()
        assert feedback["accepted"] == 2 and feedback["credited"][clicked["variant"]] == 1
        page = client.get("/ui/ab").text  # one win is no evidence: the page says to keep the incumbent, with p
        assert "keep dense" in page and "p-value" in page
    teams = rows(db, f"SELECT team FROM results WHERE role = 'shown' AND query_id = '{body['query_id']}'")
    assert {t for (t,) in teams} == {"dense", "bm25"}


def test_shadow_runs_after_response_and_its_failures_stay_inside(built, tmp_path: Path) -> None:
    app, db = make_app(built, tmp_path, ab={}, interleave=[])
    service = app.state.service
    with TestClient(app) as client:
        body = client.post("/search", json={"query": "why do tides happen", "k": 3}).json()
        assert body["variant"] == "dense"
        client.portal.call(service.shadows.drain)  # the shadow's results reach the log; checked after shutdown
        # A failing shadow: the primary answer is unchanged, the failure is counted.
        broken = VariantPool(service.pool.config, dict(service.pool.variants))
        original = broken.variants["bm25"]

        class Boom:
            depth = 0

            async def search(self, query: str):
                raise RuntimeError("shadow exploded")

        broken.variants["bm25"] = type(original)(original.name, original.config, Boom(), original.pipeline)
        service.pool = broken
        again = client.post("/search", json={"query": "why do tides happen", "k": 3}).json()
        assert [h["id"] for h in again["hits"]] == [h["id"] for h in body["hits"]]
        client.portal.call(service.shadows.drain)
        assert 'siftrank_shadow_dropped_total{reason="error",variant="bm25"} 1.0' in client.get("/metrics").text
    logged = rows(db, f"SELECT variant, COUNT(*) FROM results WHERE role = 'shadow' AND query_id = '{body['query_id']}'")
    assert logged == [("bm25", 3)]


def test_full_shadow_queue_drops_and_counts(built, tmp_path: Path) -> None:
    app, _ = make_app(built, tmp_path)
    service = app.state.service

    async def never() -> None:
        raise AssertionError("not run")

    for _ in range(3):  # before start the runner refuses everything, counted as dropped
        assert service.shadows.offer("bm25", 1.0, never) is False
    assert 'reason="stopped"' in service.metrics.render().decode()


def test_admin_reload_and_promote(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = built
    app, _ = make_app(built, tmp_path, ab={}, interleave=[])
    with TestClient(app) as client:
        monkeypatch.delenv(API_KEY_ENV, raising=False)
        assert client.post("/admin/promote", json={"variant": "bm25"}).status_code == 403
        monkeypatch.setenv(API_KEY_ENV, "s3cret")
        assert client.post("/admin/promote", json={"variant": "bm25"}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/admin/promote", json={"variant": "dense"}, headers={"X-API-Key": "s3cret"}).status_code == 409
        # A reload that fails (the file now names an unknown primary) keeps the old variants serving.
        saved = path.read_text()
        path.write_text(saved.replace('primary = "dense"', 'primary = "ghost"'))
        try:
            failed = client.post("/admin/reload", headers={"X-API-Key": "s3cret"})
        finally:
            path.write_text(saved)
        assert failed.status_code == 422 and "keep serving" in failed.text and "ghost" in failed.text
        assert client.post("/search", json={"query": "bread"}).json()["variant"] == "dense"
        promoted = client.post("/admin/promote", json={"variant": "bm25"}, headers={"X-API-Key": "s3cret"})
        assert promoted.status_code == 200
        assert client.post("/search", json={"query": "bread"}).json()["variant"] == "bm25"
        listed = client.get("/variants").json()
        assert listed["primary"] == "bm25"
        encoders = {v["name"]: v["encoder"] for v in listed["variants"]}
        assert encoders["dense"].startswith("torch ") and encoders["bm25"] is None  # how each variant encodes, and why


def test_experiment_config_errors(tmp_path: Path) -> None:
    from retrieval.errors import SiftrankError

    good = ('[variants.dense]\n[variants.bm25]\npipeline = "bm25.toml"\n[experiment]\nprimary = "dense"\n')
    path = tmp_path / "e.toml"
    path.write_text(good.replace('primary = "dense"', 'primary = "ghost"'))
    with pytest.raises(SiftrankError, match="unknown variant"):
        ExperimentConfig.load(path)
    for bad, message in [("ab = { dense = -1.0 }", "A/B weights"), ('interleave = ["dense"]', "exactly two"),
                         ("shadows = [{ variant = \"bm25\", sample_rate = 2 }]", "less than or equal to 1"),
                         ("colour = 1", "Extra inputs")]:
        path.write_text(good + bad + "\n")
        with pytest.raises(SiftrankError, match=message):
            ExperimentConfig.load(path)
    path.write_text("[experiment\n")
    with pytest.raises(SiftrankError, match="invalid TOML"):
        ExperimentConfig.load(path)
    config = ExperimentConfig.model_validate({"variants": {"a": {}, "b": {}},
                                              "experiment": {"primary": "a", "ab": {"a": 1, "b": 3}}})
    share = sum(config.assign(f"user{i}") == "b" for i in range(2000)) / 2000
    assert 0.70 < share < 0.80 and config.assign("user7") == config.assign("user7")


def test_shadow_only_variant_runs_in_its_own_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import write_dataset

    write_dataset(tmp_path / "tiny")
    path = tmp_path / "experiment.toml"
    path.write_text('[service]\ndata = "tiny"\nevent_log = "events.db"\nevent_flush_ms = 5\n'
                    '[variants.dense]\n[variants.bm25]\npipeline = "bm25.toml"\n'
                    '[experiment]\nprimary = "dense"\nshadows = [{ variant = "bm25" }]\n')
    (tmp_path / "bm25.toml").write_text('[first_stage]\nkind = "bm25"\n')
    config = ExperimentConfig.load(path)
    pool = VariantPool.build(config)
    assert in_child(pool["bm25"].batcher) and not in_child(pool["dense"].batcher)
    assert pool["bm25"].pipeline is None and pool["bm25"].stages == ["bm25"]  # built only in its own process
    monkeypatch.setenv(API_KEY_ENV, "k")
    app = create_app(config, path, pool)
    with TestClient(app) as client:
        body = client.post("/search", json={"query": "why do volcanoes erupt", "k": 3}).json()
        client.portal.call(app.state.service.shadows.drain)
        assert client.post("/admin/promote", json={"variant": "bm25"}, headers={"X-API-Key": "k"}).status_code == 200
        promoted = app.state.service.pool["bm25"].batcher
        assert not in_child(promoted)  # the new primary runs at full priority, in the serving process
        assert client.post("/search", json={"query": "bread"}).json()["variant"] == "bm25"
    shadow = rows(tmp_path / "events.db", f"SELECT doc_id FROM results WHERE role = 'shadow' AND query_id = '{body['query_id']}'")
    assert ("d3",) in shadow  # BM25 ran in the worker process and its ranking reached the log
    for variant in pool.variants.values():
        variant.batcher.executor.shutdown(wait=True)


def in_child(batcher) -> bool:
    """Whether a variant's batcher runs its pipeline in a child process (a shadow at low priority)."""
    from concurrent.futures import ProcessPoolExecutor

    return isinstance(batcher.executor, ProcessPoolExecutor)


def test_feedback_is_acknowledged_only_once_committed(built, tmp_path: Path) -> None:
    app, db = make_app(built, tmp_path, ab={}, interleave=[], shadows=[])
    app.state.service.log.flush_s = 60.0  # ordinary batches now wait a minute: only the click's commit writes
    with TestClient(app) as client:
        body = client.post("/search", json={"query": "bread", "k": 2}).json()
        answer = client.post("/feedback", json={"query_id": body["query_id"], "events": [
            {"doc_id": body["hits"][0]["id"], "position": 1, "event": "click"}]})
        assert answer.status_code == 200
        # Read while the service still runs: the click is on disk before the answer came back.
        assert rows(db, "SELECT query_id, event FROM feedback") == [(body["query_id"], "click")]


def test_explore_swaps_move_the_top_hit_for_a_share_of_searches_and_say_so(built, tmp_path: Path) -> None:
    app, db = make_app(built, tmp_path, ab={}, interleave=[], shadows=[], explore_swaps=0.5)
    with TestClient(app) as client:
        plain = [h["id"] for h in client.post("/search", json={"query": "bread", "k": 5, "variant": "dense"}).json()["hits"]]
        swapped = 0
        for _ in range(40):
            body = client.post("/search", json={"query": "bread", "k": 5}).json()
            ids = [h["id"] for h in body["hits"]]
            flags = [f for f in body["flags"] if f.startswith("swap:")]
            if flags:
                k = int(flags[0].split(":")[1])
                expected = list(plain)
                expected[0], expected[k - 1] = expected[k - 1], expected[0]
                assert ids == expected and [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
                swapped += 1
            else:
                assert ids == plain
    assert 8 <= swapped <= 32  # about half, and never the explicit-variant search
    logged = rows(db, "SELECT flags FROM queries WHERE flags LIKE '%swap:%'")
    assert len(logged) == swapped


def test_filtered_search_returns_matching_documents_with_their_metadata(built, tmp_path: Path) -> None:
    app, _ = make_app(built, tmp_path, ab={}, interleave=[], shadows=[])
    with TestClient(app) as client:
        for variant in ("dense", "bm25"):
            body = client.post("/search", json={"query": "volcano eruptions, bread and plants", "k": 10, "variant": variant,
                                                "filter": {"topic": {"in": ["food", "bio"]}, "year": {"lt": 2005}}}).json()
            assert body["hits"] and {h["id"] for h in body["hits"]} <= {"d1", "d2", "d5"}
            assert all(h["metadata"]["topic"] in ("food", "bio") and h["metadata"]["year"] < 2005 for h in body["hits"])
        assert len(client.post("/search", json={"query": "volcano", "k": 5, "filter": {"topic": "geo"}}).json()["hits"]) == 2
        for bad, message in [({"lang": "en"}, "unknown field 'lang'"), ({"year": {"near": 1}}, "unknown operator 'near'"),
                             ({"year": "2001"}, "holds integer values"), ({}, "non-empty object")]:
            response = client.post("/search", json={"query": "volcano", "filter": bad})
            assert response.status_code == 422 and message in response.json()["detail"], response.json()


def test_ui_shows_each_hits_metadata(built, tmp_path: Path) -> None:
    app, _ = make_app(built, tmp_path, ab={}, interleave=[], shadows=[])
    with TestClient(app) as client:
        page = client.get("/ui", params={"q": "why do volcanoes erupt", "k": 3}).text
    assert '<div class="meta">topic: geo · year: 2002</div>' in page  # d3, the top hit
