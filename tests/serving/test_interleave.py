from __future__ import annotations

import random

from serving.interleave import TeamDraft


def test_team_draft_properties() -> None:
    rng = random.Random(0)
    for trial in range(200):
        pool = [f"d{i}" for i in range(12)]
        a, b = rng.sample(pool, 8), rng.sample(pool, 8)
        draft = TeamDraft.merge(("A", a), ("B", b), 10, seed=str(trial))
        assert len(draft.docs) == len(set(draft.docs)) == min(10, len(set(a) | set(b)))
        # Each team contributes its documents in its own order, and the picks stay balanced.
        for name, ranking in (("A", a), ("B", b)):
            picked = [d for d, t in zip(draft.docs, draft.teams) if t == name]
            assert [ranking.index(d) for d in picked] == sorted(ranking.index(d) for d in picked)
        assert abs(draft.teams.count("A") - draft.teams.count("B")) <= 1 or set(a) <= set(draft.docs) or set(b) <= set(draft.docs)
    # The coin is seeded: the same query id gives the same list.
    assert TeamDraft.merge(("A", a), ("B", b), 10, "x") == TeamDraft.merge(("A", a), ("B", b), 10, "x")


def test_identical_rankings_interleave_to_the_same_list_and_credit() -> None:
    ranking = ["d1", "d2", "d3", "d4"]
    draft = TeamDraft.merge(("A", ranking), ("B", ranking), 4, "seed")
    assert draft.docs == ranking
    assert draft.credit(["d1", "d2", "unknown"]) == {t: draft.teams[:2].count(t) for t in dict.fromkeys(draft.teams)}
    short = TeamDraft.merge(("A", ["d1"]), ("B", []), 5, "s")
    assert short.docs == ["d1"] and short.teams == ["A"]
