"""Regression files: published runs whose scores siftrank must keep reproducing."""
