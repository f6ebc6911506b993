from __future__ import annotations

from pathlib import Path

import pytest

from eval.regression import DEFAULT_FILE, RegressionCheck
from tests.conftest import SHARED_DATA

needs_data = pytest.mark.skipif(not (SHARED_DATA / "msmarco-dl19").is_dir(), reason="../shared/data not present")


@needs_data
def test_published_dl19_runs_reproduce_to_4_decimals() -> None:
    check = RegressionCheck.run(DEFAULT_FILE, SHARED_DATA)
    assert check.mismatches() == []
    assert len(check.measured) == 7


@needs_data
def test_a_drifted_value_is_reported(tmp_path: Path) -> None:
    tampered = tmp_path / "r.toml"
    tampered.write_text(DEFAULT_FILE.read_text().replace('published = 0.5058', 'published = 0.5158'))
    problems = RegressionCheck.run(tampered, SHARED_DATA).mismatches()
    assert problems == ["run.BM25.trec (ties=trec_eval) nDCG@10 (published): expected 0.5158, got 0.5058"]
