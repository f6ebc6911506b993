"""Replay a test collection against a running service, with clicks simulated from its qrels.

Every simulated user issues every query (in a shuffled order) with a stable user id, so A/B assignment
and interleaving are exercised as live traffic would. Clicks follow the position-based model
(``eval.clickmodel``): examination falls with the shown rank, attractiveness grows with the grade.
Impressions are sent for every hit shown; the service acknowledges feedback once it is committed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

from tqdm.auto import tqdm

from eval.clickmodel import ClickModel
from retrieval.errors import SiftrankError


class Replayer:
    """Drive ``client`` (an httpx.Client or FastAPI TestClient pointed at the service) with a collection."""

    def __init__(self, client, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], k: int = 10,
                 click_model: ClickModel | None = None, seed: int = 0) -> None:
        if not queries:
            raise SiftrankError("no queries to replay")
        self.client, self.queries, self.qrels = client, queries, qrels
        self.k, self.model, self.rng = k, click_model or ClickModel(), random.Random(seed)
        self.top_grade = max((g for judged in qrels.values() for g in judged.values()), default=1)

    def clicks(self, qid: str, docs: list[str]) -> list[int]:
        """Positions (1-based) one simulated user clicks."""
        return self.model.clicks(docs, self.qrels.get(qid, {}), self.top_grade, self.rng)

    def run(self, users: int = 10, progress: bool = True) -> Counter[str]:
        """Searches and feedback for ``users`` simulated users; returns counts of searches by served variant
        (``served:NAME``), ``searches`` and ``clicks``."""
        counts: Counter[str] = Counter()
        jobs = [(f"user-{u}", qid) for u in range(users) for qid in self.queries]
        self.rng.shuffle(jobs)
        for user, qid in tqdm(jobs, desc="replay", unit="query", disable=not progress):
            response = self.client.post("/search", json={"query": self.queries[qid], "k": self.k, "user_id": user})
            if response.status_code != 200:
                raise SiftrankError(f"/search answered {response.status_code}: {response.text}")
            body = response.json()
            counts[f"served:{body['variant']}"] += 1
            counts["searches"] += 1
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
