"""An A/B + shadow + interleaving session on DL19: serve an experiment, replay traffic, report.

Starts `siftrank serve --experiment` (dense primary; BM25 as A/B arm, interleaving partner and shadow),
replays the DL19 queries for simulated users with clicks drawn from the qrels (`siftrank replay`), stops
the server (which flushes the event log) and runs `siftrank ab-report` with the DL19 qrels.
Results: docs/serving/report.{md,json,png}. Reproduce: `make ab-session` (~2 minutes).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, arguments
from load import free_port, start


def main() -> None:
    args = arguments(__doc__, users=(int, 40, "simulated users (each issues every query)"))
    args.out = args.out.parent / "serving" if args.out.name == "benchmarks" else args.out
    args.data = args.data.resolve()  # written into a config file in another folder
    work = Path(tempfile.mkdtemp(prefix="siftrank-ab-"))
    siftrank = str(Path(sys.executable).with_name("siftrank"))
    experiment = work / "experiment.toml"
    text = (ROOT / "configs" / "dl19-experiment.toml").read_text()
    experiment.write_text(text.replace('"data:msmarco-dl19"', f'"{args.data / "msmarco-dl19"}"')
                          .replace('"../out/dl19-experiment.db"', f'"{work / "events.db"}"'))
    port = free_port()
    server = start([siftrank, "serve", "--experiment", str(experiment), "--port", str(port)], port, work / "server.log")
    try:
        subprocess.run([siftrank, "replay", "--dataset", str(args.data / "msmarco-dl19"), "--qrels",
                        "qrels.test.in_corpus.tsv", "--url", f"http://127.0.0.1:{port}", "--users", str(args.users)],
                       check=True)
    finally:
        server.terminate()
        server.wait(60)
    subprocess.run([siftrank, "ab-report", "--event-log", str(work / "events.db"), "--dataset", str(args.data / "msmarco-dl19"),
                    "--qrels", "qrels.test.in_corpus.tsv", "--out", str(args.out)], check=True)


if __name__ == "__main__":
    main()
