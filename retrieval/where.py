"""Metadata filters on search: ``{"source": "pubmed", "lang": {"in": ["en", "de"]}, "year": {"gte": 2020}}``.

A filter is checked against the documents table's metadata columns when it is parsed (an unknown field, an
unknown operator or a value of the wrong type is a :class:`~retrieval.errors.SiftrankError`, a 422 in the
API), then evaluated once per table as a boolean row mask (polars), which the first stages apply *while*
searching: FAISS ID selectors for the dense index, a weight mask for BM25, both for hybrid. Conditions on
several fields, and several operators on one field, must all hold. On a list-of-strings column, equality
means "contains" and ``in`` means "contains any".
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from retrieval.corpus import RESERVED, dtype_kind, value_type
from retrieval.errors import SiftrankError

RANGE = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}
OPERATORS = ("eq", "in", *RANGE)


class Where:
    """A validated metadata filter: one polars expression over the documents table."""

    def __init__(self, spec: Mapping[str, Any], schema: Mapping[str, pl.DataType]) -> None:
        """Check ``spec`` against ``schema`` (the documents table's columns); errors name the field and why."""
        if not isinstance(spec, Mapping) or not spec:
            raise SiftrankError("filter: expected a non-empty object of field conditions")
        fields = {name: dtype_kind(dtype) for name, dtype in schema.items() if name not in RESERVED}
        self.spec = {str(k): v for k, v in spec.items()}
        self.key = json.dumps(self.spec, sort_keys=True, default=str)
        conditions = []
        for name, condition in self.spec.items():
            if name not in fields:
                known = ", ".join(sorted(fields)) or "none: this corpus has no metadata"
                raise SiftrankError(f"filter: unknown field '{name}' (fields: {known})")
            ops = condition if isinstance(condition, Mapping) else {"eq": condition}
            if not ops:
                raise SiftrankError(f"filter: field '{name}' has no condition")
            conditions += [self._condition(name, fields[name], op, value) for op, value in ops.items()]
        self.expression: pl.Expr = functools.reduce(lambda a, b: a & b, conditions)
        self.types = {name: schema[name] for name in self.spec}

    @staticmethod
    def _condition(name: str, kind: str, op: str, value: Any) -> pl.Expr:
        column = pl.col(name)
        listed = kind == "list of strings"
        element = "string" if listed else kind

        def check(v: Any) -> None:
            try:
                given = value_type(v)
            except ValueError:
                given = type(v).__name__
            numeric = {given, element} <= {"integer", "float"}
            if given != element and not numeric:
                raise SiftrankError(f"filter: field '{name}' holds {kind} values, not {given or 'null'} ({v!r})")

        if op == "eq":
            check(value)
            return (column.list.contains(value) if listed else column == value).fill_null(False)
        if op == "in":
            if not isinstance(value, list) or not value:
                raise SiftrankError(f"filter: '{name}': 'in' takes a non-empty list of values")
            for v in value:
                check(v)
            if listed:
                return column.list.eval(pl.element().is_in(value)).list.any().fill_null(False)
            return column.is_in(value).fill_null(False)
        if op in RANGE:
            if kind not in ("integer", "float", "string"):
                raise SiftrankError(f"filter: '{name}' holds {kind} values: no range operator '{op}'")
            check(value)
            return getattr(column, RANGE[op])(value).fill_null(False)
        raise SiftrankError(f"filter: unknown operator '{op}' on '{name}' (operators: {', '.join(OPERATORS)})")

    def mask(self, docs: pl.DataFrame) -> np.ndarray:
        """Which rows of ``docs`` match (a boolean array in table order); a field the table lacks (a live corpus's
        base, before documents with the field were written) is missing in every row."""
        missing = [pl.lit(None, dtype).alias(name) for name, dtype in self.types.items() if name not in docs.columns]
        if missing:
            docs = docs.with_columns(missing)
        return docs.select(self.expression.alias("match"))["match"].to_numpy().astype(bool, copy=False)

    def __repr__(self) -> str:
        return f"Where({self.key})"


class Masks:
    """The rows of one documents table each recent filter matches (a search index's cache)."""

    def __init__(self, size: int = 32) -> None:
        self.size, self._masks = size, dict[str, np.ndarray]()

    def get(self, where: Where, docs: pl.DataFrame) -> np.ndarray:
        if where.key not in self._masks:
            if len(self._masks) >= self.size:
                self._masks.pop(next(iter(self._masks)))
            self._masks[where.key] = where.mask(docs)
        return self._masks[where.key]
