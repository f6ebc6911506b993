"""What a figure was measured on: the CPU model (every benchmark and metrics.json prints it)."""

from retrieval.probe import cpu_model

__all__ = ["cpu_model"]
