"""Writing the served corpus through the API: upserts and deletes searchable at once in every variant, durable
across restarts (log replay, snapshots), and bad writes refused with nothing written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from retrieval.doclog import DocumentLog
from serving.app import API_KEY_ENV, create_app
from serving.experiment import ExperimentConfig
from tests.conftest import add_metadata, write_dataset

EXPERIMENT = """
[service]
data = "tiny"
event_log = "events.db"
documents_log = "live/documents.db"
shadow_process = false
compact_after = 1000

[variants.dense]
[variants.hybrid]
pipeline = "hybrid.toml"

[experiment]
name = "live"
primary = "dense"
shadows = [{ variant = "hybrid", sample_rate = 1.0 }]
"""
KEY = {"X-API-Key": "secret"}
PENGUIN = {"id": "n1", "title": "Penguins", "text": "Penguins live in Antarctica and cannot fly.",
           "metadata": {"topic": "bio", "year": 2022, "tags": ["birds"]}}


@pytest.fixture
def experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(API_KEY_ENV, "secret")
    add_metadata(write_dataset(tmp_path / "tiny"))
    (tmp_path / "hybrid.toml").write_text('[first_stage]\nkind = "hybrid"\n')
    path = tmp_path / "experiment.toml"
    path.write_text(EXPERIMENT)
    return path


def _client(path: Path) -> TestClient:
    return TestClient(create_app(ExperimentConfig.load(path), path))


def _ready(client: TestClient) -> dict:
    """/readyz once loading ended (ready, or failed with its error)."""
    import time

    for _ in range(600):
        body = client.get("/readyz").json()
        if body["ready"] or body.get("error"):
            return body
        time.sleep(0.1)
    raise AssertionError("the service never got ready")


def _ids(client: TestClient, query: str, variant: str, **extra) -> list[str]:
    body = client.post("/search", json={"query": query, "k": 5, "variant": variant, **extra})
    assert body.status_code == 200, body.text
    return [h["id"] for h in body.json()["hits"]]


def test_writes_are_searchable_in_every_variant_and_survive_a_restart(experiment: Path) -> None:
    with _client(experiment) as client:
        assert _ready(client)["ready"]
        answer = client.post("/documents", headers=KEY, json={"documents": [PENGUIN]})
        assert answer.status_code == 200 and answer.json() == {"version": 1, "upserted": 1, "deleted": 0}
        for variant in ("dense", "hybrid"):
            assert _ids(client, "penguins in antarctica", variant)[0] == "n1"
            assert _ids(client, "penguins", variant, filter={"tags": "birds"}) == ["n1"]
        got = client.get("/documents/n1").json()
        assert got["text"] == PENGUIN["text"] and got["metadata"] == PENGUIN["metadata"] and got["version"] == 1
        assert client.delete("/documents/d3", headers=KEY).json()["version"] == 2
        for variant in ("dense", "hybrid"):
            assert "d3" not in _ids(client, "why do volcanoes erupt, magma", variant)
        assert client.get("/documents/d3").status_code == 404
        assert client.delete("/documents/d3", headers=KEY).status_code == 404
    db = experiment.parent / "events.db"
    with sqlite3.connect(db) as conn:
        assert {v for (v,) in conn.execute("SELECT corpus_version FROM queries")} == {1, 2}
    with _client(experiment) as client:  # a restart replays the log: nothing acknowledged is lost
        assert _ready(client)["ready"]
        assert _ids(client, "penguins in antarctica", "hybrid")[0] == "n1"
        assert "d3" not in _ids(client, "why do volcanoes erupt, magma", "dense")
        compacted = client.post("/admin/compact", headers=KEY).json()
        assert compacted["version"] == 2 and compacted["operations_dropped"] == 2
        client.post("/documents", headers=KEY, json={"documents": [{**PENGUIN, "id": "n2", "text": "Emperor penguins huddle."}]})
    assert (experiment.parent / "live" / "documents.db.snapshots" / "dense" / "docs.parquet").is_file()
    assert [v for v, _, _ in DocumentLog(experiment.parent / "live" / "documents.db").since(2)] == [3]
    with _client(experiment) as client:  # the snapshot, then the log after it
        assert _ready(client)["ready"]
        assert set(_ids(client, "penguins", "dense")[:2]) == {"n1", "n2"}
        assert "d3" not in _ids(client, "why do volcanoes erupt, magma", "hybrid")


BAD_WRITES = [
    ({"documents": []}, 422, "at least 1 item"),
    ({"documents": [PENGUIN, PENGUIN]}, 422, "duplicate id 'n1' in the batch"),
    ({"documents": [{**PENGUIN, "colour": "red"}]}, 422, "Extra inputs are not permitted"),
    ({"documents": [{"id": "x"}]}, 422, "Field required"),
    ({"documents": [{"id": "x", "text": "   "}]}, 422, "the text is empty"),
    ({"documents": [{**PENGUIN, "metadata": {"year": "2022"}}]}, 422, "metadata 'year' is string, but the corpus holds integer"),
    ({"documents": [{**PENGUIN, "metadata": {"nested": {"a": 1}}}]}, 422, "metadata"),
    ({"documents": [{"id": "big", "text": "x" * 10_000_000}]}, 413, "request body over"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_WRITES)
def test_bad_writes_are_refused_and_nothing_is_written(body: dict, status: int, message: str, experiment: Path) -> None:
    with _client(experiment) as client:
        assert _ready(client)["ready"]
        answer = client.post("/documents", headers=KEY, json=body)
        assert answer.status_code == status and message in answer.text, answer.text
        assert client.get("/documents/n1").status_code == 404 and client.get("/documents/big").status_code == 404
    assert DocumentLog(experiment.parent / "live" / "documents.db").version == 0


def test_writes_need_the_admin_key_and_a_live_corpus(experiment: Path, tmp_path: Path, monkeypatch) -> None:
    with _client(experiment) as client:
        assert _ready(client)["ready"]
        assert client.post("/documents", json={"documents": [PENGUIN]}).status_code == 401
        assert client.delete("/documents/d1", headers={"X-API-Key": "wrong"}).status_code == 401
    experiment.write_text(EXPERIMENT.replace('documents_log = "live/documents.db"\n', ""))
    with _client(experiment) as client:
        assert _ready(client)["ready"]
        answer = client.post("/documents", headers=KEY, json={"documents": [PENGUIN]})
        assert answer.status_code == 409 and "documents_log" in answer.text
    experiment.write_text(EXPERIMENT.replace("shadow_process = false", "shadow_process = true"))
    with _client(experiment) as client:
        assert "shadow_process = false" in _ready(client)["error"]
