"""Choose the distillation recipe (loss, learning rate, neuron scoring) on unlabeled held-out text, never on DL19's queries.

Each ``--grid`` entry (``loss:learning-rate[:scoring]``, scoring magnitude unless named) distils the FFN −``--sparsity`` MiniLM for ``--steps`` steps on
shuffled DL19 corpus passages and their openings, then scores the student on passages it did not train on (and
their openings): mean cosine to the full model's vectors, and top-10 agreement (with the openings as queries over
the held-out passages, the share of the full model's top 10 the student also ranks top 10), which picks the recipe:
a ranking metric judges the result. No query and no qrel is read, so the recipe the larger run uses
(benchmarks/encode_prune.py) is picked without looking at the figure it is judged by.
Results: docs/benchmarks/distil_select.{json,md,png}. `make distil-select`.
"""

from __future__ import annotations

import random
import time

from common import arguments, bar_chart, dl19, machine, save

from retrieval.encoder import resolve_model_path
from training.distil import Distiller, opening_words

FULL = "bundled:all-MiniLM-L6-v2"


def held_out(corpus: list[str], train: int, n: int, seed: int = 1) -> tuple[list[str], list[str]]:
    """``train`` shuffled passages to distil on and ``n`` others, plus the openings of half of those, to score."""
    rng = random.Random(seed)
    shuffled = list(corpus)
    rng.shuffle(shuffled)
    scored = shuffled[train:train + n]
    return shuffled[:train], scored + opening_words(scored[: n // 2], rng)


def top_agreement(student, teacher, passages: int, k: int = 10) -> float:
    """Mean share of the teacher's top ``k`` held-out passages (the first ``passages`` rows) that the student also
    ranks in its top ``k``, over the held-out openings (the rows after them) as queries: ranking fidelity, no labels."""
    import numpy as np

    def top(vectors):
        scores = vectors[passages:] @ vectors[:passages].T
        return np.argsort(-scores, axis=1)[:, :k]

    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top(student), top(teacher))]))


def main() -> None:
    args = arguments(__doc__, grid=(str, "cosine:1e-4,layers:1e-4,cosine:4e-4,layers:4e-4,layers:1e-3,layers:2e-3,layers:1e-3:activation",
                                    "loss:learning-rate[:scoring] entries, comma-separated"),
                     sparsity=(float, 0.5, "share of FFN neurons removed"), steps=(int, 120, "distillation steps per entry"),
                     held=(int, 800, "held-out passages to score on"))
    corpus = dl19(args.data).doc_texts()
    train, scored = held_out(corpus, 12000, args.held)
    from sentence_transformers import SentenceTransformer

    full = SentenceTransformer(str(resolve_model_path(FULL)), device="cpu")  # the same weights every Distiller starts from
    teacher = full.encode(scored, batch_size=64, normalize_embeddings=True)
    del full
    rows: dict[str, dict] = {}
    for entry in args.grid.split(","):
        loss, lr, *scoring = entry.split(":")
        distiller = Distiller(FULL, args.sparsity, learning_rate=float(lr), loss=loss, scoring=(scoring or ["magnitude"])[0])
        start = time.perf_counter()
        manifest = distiller.run(train, limit=args.steps * distiller.batch_size * 2 // 3, progress=False)
        student = distiller.pruner.model.encode(scored, batch_size=64, normalize_embeddings=True)
        cosine = (student * teacher).sum(axis=1)
        rows[entry] = {"steps": manifest["metrics"]["steps"], "held-out cosine": float(cosine.mean()),
                       "cosine p05": float(sorted(cosine)[len(cosine) // 20]),
                       "top-10 agreement": top_agreement(student, teacher, args.held), "seconds": time.perf_counter() - start}
        print(entry, {k: round(v, 4) for k, v in rows[entry].items()}, flush=True)
    best = max(rows, key=lambda k: rows[k]["top-10 agreement"])
    cpu = str(machine()["cpu"])
    save(args.out, "distil_select", {"sparsity": args.sparsity, "steps": args.steps, "held_out_texts": len(scored),
                                     "machine": machine(), "rows": rows, "best": best}, report(rows, best, len(scored), args, cpu))
    bar_chart(args.out / "distil_select.png", list(rows), [v["top-10 agreement"] for v in rows.values()],
              "top-10 agreement with the full model (held out)", f"Distillation recipe, FFN −{args.sparsity:.0%}\n{cpu}")


def report(rows: dict[str, dict], best: str, texts: int, args, cpu: str) -> str:
    from eval.report import markdown_table

    return "\n".join([f"# Distillation recipe, FFN −{args.sparsity:.0%} ({args.steps} steps each, {cpu})", "",
                      markdown_table(rows, "loss:learning rate[:scoring]"), "",
                      f"Highest held-out top-10 agreement: **{best}**. Scored on {texts} DL19 corpus texts the students did not "
                      "train on (passages and their openings); no query, no qrel.", "",
                      "Reproduce: `make distil-select`", ""])


if __name__ == "__main__":
    main()
