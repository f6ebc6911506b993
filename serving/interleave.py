"""Team-draft interleaving (Radlinski, Kurup & Joachims, CIKM 2008).

Two rankings are merged the way captains pick teams: in each round a coin decides which team picks
first, and each team adds its highest-ranked document not yet shown. Every shown document remembers
its team; a click credits that team, and the team with more clicks wins the query.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class TeamDraft:
    """An interleaved list: ``docs`` in shown order and ``teams`` (the variant each one came from)."""

    docs: list[str]
    teams: list[str]

    @classmethod
    def merge(cls, a: tuple[str, list[str]], b: tuple[str, list[str]], k: int, seed: str) -> TeamDraft:
        """Interleave ranking ``a`` = (name, doc ids) with ``b`` up to ``k`` documents; ``seed`` fixes the coins."""
        rng = random.Random(seed)
        (name_a, list_a), (name_b, list_b) = a, b
        docs: list[str] = []
        teams: list[str] = []
        seen: set[str] = set()
        count = {name_a: 0, name_b: 0}
        pointers = {name_a: 0, name_b: 0}
        lists = {name_a: list_a, name_b: list_b}

        def pick(team: str) -> bool:
            ranking, i = lists[team], pointers[team]
            while i < len(ranking) and ranking[i] in seen:
                i += 1
            pointers[team] = i
            if i >= len(ranking):
                return False
            docs.append(ranking[i])
            teams.append(team)
            seen.add(ranking[i])
            count[team] += 1
            return True

        while len(docs) < k:
            # The team with fewer picks goes next; a tie is broken by a coin.
            if count[name_a] != count[name_b]:
                order = [name_a, name_b] if count[name_a] < count[name_b] else [name_b, name_a]
            else:
                order = [name_a, name_b] if rng.random() < 0.5 else [name_b, name_a]
            if not pick(order[0]) and not pick(order[1]):
                break
        return cls(docs, teams)

    def credit(self, clicked: list[str]) -> dict[str, int]:
        """Clicks per team for the clicked document ids (unknown ids are ignored)."""
        team_of = dict(zip(self.docs, self.teams))
        out = dict.fromkeys(dict.fromkeys(self.teams), 0)
        for doc in clicked:
            if doc in team_of:
                out[team_of[doc]] += 1
        return out
