"""Replay a test collection against a running service, with clicks simulated from its qrels.

Every simulated user issues every query (in a shuffled order) with a stable user id, so A/B assignment
and interleaving are exercised as live traffic would. Clicks follow a cascade model: the user scans the
list top-down, clicks a hit with a probability that grows with its relevance grade, and stops after a
click with probability ``stop``. Impressions are sent for every hit shown.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

from tqdm.auto import tqdm

from retrieval.errors import SiftrankError

CLICK_BY_GRADE = {0: 0.05, 1: 0.3, 2: 0.7, 3: 0.9}


class Replayer:
    """Drive ``client`` (an httpx.Client or FastAPI TestClient pointed at the service) with a collection."""

    def __init__(self, client, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], k: int = 10,
                 stop: float = 0.5, seed: int = 0) -> None:
        if not queries:
            raise SiftrankError("no queries to replay")
        self.client, self.queries, self.qrels = client, queries, qrels
        self.k, self.stop, self.rng = k, stop, random.Random(seed)

    def clicks(self, qid: str, docs: list[str]) -> list[int]:
        """Positions (1-based) clicked under the cascade model."""
        out = []
        for position, doc in enumerate(docs, 1):
            grade = max(0, min(3, self.qrels.get(qid, {}).get(doc, 0)))
            if self.rng.random() < CLICK_BY_GRADE[grade]:
                out.append(position)
                if self.rng.random() < self.stop:
                    break
        return out

    def run(self, users: int = 10, progress: bool = True) -> Counter[str]:
        """Searches and feedback for ``users`` simulated users; returns counts by served variant and events."""
        counts: Counter[str] = Counter()
        jobs = [(f"user-{u}", qid) for u in range(users) for qid in self.queries]
        self.rng.shuffle(jobs)
        for user, qid in tqdm(jobs, desc="replay", unit="query", disable=not progress):
            response = self.client.post("/search", json={"query": self.queries[qid], "k": self.k, "user_id": user})
            if response.status_code != 200:
                raise SiftrankError(f"/search answered {response.status_code}: {response.text}")
            body = response.json()
            counts[f"served:{body['variant']}"] += 1
            docs = [h["id"] for h in body["hits"]]
            clicked = set(self.clicks(qid, docs))
            events = [{"doc_id": d, "position": p, "event": "impression"} for p, d in enumerate(docs, 1)]
            events += [{"doc_id": docs[p - 1], "position": p, "event": "click"} for p in sorted(clicked)]
            if events:
                feedback = self.client.post("/feedback", json={"query_id": body["query_id"], "user_id": user,
                                                               "events": events})
                if feedback.status_code != 200:
                    raise SiftrankError(f"/feedback answered {feedback.status_code}: {feedback.text}")
                counts["clicks"] += len(clicked)
        return counts
