"""Training: produces artifacts (pruned encoder, adapters, calibrator, ranker LoRA) that retrieval loads."""
