"""Result tables: every measure of every row is shown."""

from __future__ import annotations

from eval.report import markdown_table


def test_a_measure_missing_from_the_first_row_is_still_a_column() -> None:
    table = markdown_table({"baseline": {"passages/s": 50.0}, "int8": {"passages/s": 180.0, "nDCG@10": 0.6344}}, "encoder")
    header, _, first, second = table.strip().splitlines()
    assert header == "| encoder | passages/s | nDCG@10 |"
    assert first == "| baseline | 50.0000 | – |" and second == "| int8 | 180.0000 | 0.6344 |"
    assert markdown_table({"a": {"x": 1.0, "y": 2.0}}, columns=["y"]).splitlines()[0] == "| run | y |"
