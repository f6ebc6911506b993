"""Check (and render as Markdown) a regression file of published runs and their expected scores.

``python -m eval.regression [--data DIR] [--docs FILE]`` exits 1 if any measure drifts by more
than half a unit in the 4th decimal, so a change to the readers or the metrics cannot slip by.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from retrieval.artifacts import data_home, write_text_atomic
from retrieval.data import Dataset, read_run
from retrieval.measures import MetricSuite

HERE = Path(__file__).resolve().parent
DEFAULT_FILE = HERE / "regressions" / "msmarco-dl19.toml"
TOLERANCE = 5e-5


@dataclass
class RegressionCheck:
    """One regression file checked against a data folder: measured values and mismatches."""

    spec: dict
    measured: list[dict[str, float]]

    @classmethod
    def run(cls, path: Path = DEFAULT_FILE, data_root: Path | None = None) -> RegressionCheck:
        data_root = data_root if data_root is not None else data_home()
        spec = tomllib.loads(Path(path).read_text())
        dataset = Dataset.load(Path(data_root) / spec["dataset"], qrels=spec["qrels"], with_corpus=False)
        suite = MetricSuite(dataset.qrels)
        runs = Path(data_root) / spec["dataset"] / "runs"
        measured = [suite.evaluate(read_run(runs / entry["file"], ties=entry["ties"])) for entry in spec["run"]]
        return cls(spec, measured)

    def mismatches(self) -> list[str]:
        out = []
        for entry, got in zip(self.spec["run"], self.measured):
            expected = dict(entry["measures"])
            if "published" in entry:
                expected["nDCG@10 (published)"] = entry["published"]
            for name, value in expected.items():
                actual = got[name.split(" ")[0]]
                if abs(actual - value) > TOLERANCE:
                    out.append(f"{entry['file']} (ties={entry['ties']}) {name}: expected {value:.4f}, got {actual:.4f}")
        return out

    def markdown(self) -> str:
        names = list(self.measured[0])
        lines = [f"# Regressions: {self.spec['dataset']} ({self.spec['qrels']})", "",
                 "Published first-stage runs scored by `siftrank eval --score-run` (reproduce: `make regressions`).",
                 "", "| run | ties | published nDCG@10 | " + " | ".join(names) + " |", "|---|---|---:|" + "---:|" * len(names)]
        for entry, got in zip(self.spec["run"], self.measured):
            published = f"{entry['published']:.4f}" if "published" in entry else ""
            lines.append(f"| {entry['file']} | {entry['ties']} | {published} | " + " | ".join(f"{got[n]:.4f}" for n in names) + " |")
        return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--data", type=Path, default=None, help="data folder (default: $SIFTRANK_DATA, else ../shared/data)")
    parser.add_argument("--docs", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args()
    check = RegressionCheck.run(args.file, args.data)
    print(check.markdown())
    if args.docs:
        write_text_atomic(args.docs, check.markdown())
    problems = check.mismatches()
    for line in problems:
        print("REGRESSION:", line, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
