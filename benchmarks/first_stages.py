"""First stages side by side: dense, BM25 and the hybrid (dense + BM25 by RRF or score interpolation),
each built from a pipeline config through the stage registry, on DL19 and SciFact test.

Nothing is tuned: RRF k = 60 (Cormack et al.) and interpolation weight 0.5 are the literature's
defaults. Paired differences to dense over queries, with t-test and randomisation p-values.
Writes docs/benchmarks/first_stages.{md,json,png}.
"""

from __future__ import annotations

import time

from common import ROOT, arguments, machine, save

from eval.report import markdown_table
from retrieval.config import PipelineConfig
from retrieval.data import Dataset
from retrieval.measures import MetricSuite, paired_test
from retrieval.pipeline import Pipeline

CONFIGS = {
    "dense": {},
    "bm25": {"first_stage": {"kind": "bm25"}},
    "hybrid-rrf": {"first_stage": {"kind": "hybrid", "fusion": "rrf"}},
    "hybrid-interpolate": {"first_stage": {"kind": "hybrid", "fusion": "interpolate", "weight": 0.5}},
}


COLUMNS = ["nDCG@10", "R@100", "R@1000", "ms/query", "Δ nDCG@10 vs dense", "t-test p", "randomisation p"]


def main() -> None:
    args = arguments(__doc__ or "", depth=(int, 1000, "first-stage depth"))
    datasets = {"DL19": Dataset.load(args.data / "msmarco-dl19", qrels="qrels.test.in_corpus.tsv"),
                "SciFact test": Dataset.load(args.data / "scifact", split="test")}
    rows, payload = {}, {"machine": machine(), "depth": args.depth, "results": {}}
    for name, data in datasets.items():
        suite = MetricSuite(data.qrels)
        per_query = {}
        for label, raw in CONFIGS.items():
            pipeline = Pipeline.from_config(PipelineConfig.model_validate(raw), data)
            start = time.perf_counter()
            hits = pipeline.run(data.queries, depth=args.depth).hits
            seconds = time.perf_counter() - start
            run = {q: {h.id: h.score for h in ranked} for q, ranked in hits.items()}
            scores = suite.evaluate(run)
            per_query[label] = suite.per_query(run)["nDCG@10"]
            row = {"nDCG@10": scores["nDCG@10"], "R@100": scores[suite.names[2]], "R@1000": scores[suite.names[3]],
                   "ms/query": 1000 * seconds / len(data.queries)}
            if label != "dense":
                test = paired_test(per_query["dense"], per_query[label])
                row |= {"Δ nDCG@10 vs dense": test["delta"], "t-test p": test["t_test_p"], "randomisation p": test["randomisation_p"]}
            rows[f"{name} / {label}"] = row
            payload["results"][f"{name}/{label}"] = row
            print(f"{name} {label}: {row}", flush=True)
    cpu = payload["machine"]["cpu"]
    markdown = (f"# First stages: dense, BM25, hybrid\n\nMeasured on {cpu}; depth {args.depth}; "
                "ms/query includes encoding the queries (batches of 128).\n"
                "Reproduce: `make bench-first-stages`.\n\n" + markdown_table(rows, "dataset / first stage", columns=COLUMNS)
                + "\n![first stages](first_stages.png)\n")
    save(args.out, "first_stages", payload, markdown)
    plot(args.out / "first_stages.png", rows)


def plot(path, rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(k.split(" / ")[0] for k in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.4))
    for ax, name in zip(axes, sets):
        labels = [k.split(" / ")[1] for k in rows if k.startswith(name)]
        values = [rows[f"{name} / {label}"]["nDCG@10"] for label in labels]
        bars = ax.bar(labels, values, color=["#888888", "#b07a2a", "#2a6fb0", "#2a9fb0"])
        ax.bar_label(bars, fmt="%.3f")
        ax.set_title(name)
        ax.set_ylabel("nDCG@10")
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    main()
    print(f"wrote {ROOT / 'docs' / 'benchmarks'}/first_stages.md")
