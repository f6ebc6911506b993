"""The product face: the ``siftrank`` CLI (and, later, the FastAPI service). Sits on top of all layers."""
