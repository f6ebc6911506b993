"""Two uvicorn workers share one event log: a click that reaches the other worker than its search is
still credited to the right interleaving team (the teams are read back from the log)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.serving.conftest import write_experiment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_credit_every_click_to_the_right_team(tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, share=1.0)  # every user gets an interleaved list
    port = free_port()
    env = {**os.environ, "SIFTRANK_CACHE": str(tmp_path / "cache")}
    server = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", "--experiment", str(experiment),
                               "--workers", "2", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        ready: set[str] = set()
        deadline = time.monotonic() + 240
        while len(ready) < 2 and time.monotonic() < deadline:  # both workers loaded their variants
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            try:
                reply = httpx.get(f"{base}/readyz", headers={"Connection": "close"}, timeout=5)
                if reply.status_code == 200:
                    ready.add(reply.headers["x-siftrank-worker"])
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert len(ready) == 2, "two workers never both answered /readyz"
        crossed = 0
        for user in range(40):
            search = httpx.post(f"{base}/search", json={"query": "why do volcanoes erupt", "k": 4, "user_id": f"u{user}"},
                                headers={"Connection": "close"}, timeout=30)
            body = search.json()
            assert body["mode"] == "interleave", body
            clicked = body["hits"][user % len(body["hits"])]
            feedback = httpx.post(f"{base}/feedback", headers={"Connection": "close"}, timeout=30, json={
                "query_id": body["query_id"], "user_id": f"u{user}",
                "events": [{"doc_id": clicked["id"], "position": clicked["rank"], "event": "click"}]})
            credited = feedback.json()["credited"]
            assert credited[clicked["variant"]] == 1 and sum(credited.values()) == 1, (body, credited)
            crossed += search.headers["x-siftrank-worker"] != feedback.headers["x-siftrank-worker"]
        assert crossed > 0, "no click reached the other worker: the test did not exercise the shared log"
    finally:
        server.terminate()
        server.wait(timeout=30)
