"""Offline evaluation: run a pipeline stage by stage over a dataset and score it with ir_measures."""
