"""Speed choices by measurement: the fastest candidate wins, once per CPU model and key."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from retrieval.errors import SiftrankError
from retrieval.probe import SpeedProbe, cpu_model


def test_the_fastest_candidate_is_chosen_and_the_choice_is_cached(tmp_path: Path) -> None:
    calls = {"slow": 0, "fast": 0}

    def work(name: str, seconds: float):
        def run() -> None:
            calls[name] += 1
            time.sleep(seconds)
        return run

    probe = SpeedProbe("demo", folder=tmp_path)
    candidates = {"slow": work("slow", 0.03), "fast": work("fast", 0.0)}
    choice, seconds = probe.fastest("model-x", candidates)
    assert choice == "fast" and seconds["slow"] > seconds["fast"]
    assert calls == {"slow": 3, "fast": 3}  # a warm-up and two timed runs each
    assert SpeedProbe("demo", folder=tmp_path).fastest("model-x", candidates)[0] == "fast"
    assert calls == {"slow": 3, "fast": 3}  # read from the cache: nothing ran again
    stored = json.loads((tmp_path / "demo.json").read_text())
    assert f"{cpu_model()} | model-x" in stored
    probe.fastest("model-y", candidates)  # another key is measured on its own
    assert calls["fast"] == 6


def test_a_damaged_cache_is_measured_again(tmp_path: Path) -> None:
    (tmp_path / "demo.json").write_text("{not json")
    assert SpeedProbe("demo", folder=tmp_path).fastest("k", {"only": lambda: None})[0] == "only"
    with pytest.raises(SiftrankError, match="at least one candidate"):
        SpeedProbe("demo", folder=tmp_path).fastest("k2", {})
