"""halo.utils.tables: markdown tables and CSV files."""

from __future__ import annotations

import csv

import pytest

from halo.utils.tables import format_cell, markdown_table, write_csv


def test_cells():
    assert format_cell(True) == "yes" and format_cell(False) == "no"
    assert format_cell(1.23456) == "1.235" and format_cell(2.0, digits=1) == "2.0"
    assert format_cell(float("nan")) == "nan" and format_cell(float("inf")) == "nan"
    assert format_cell(7) == "7" and format_cell("mug") == "mug"


def test_markdown_table_layout():
    rows = [{"object": "mug", "volume": 1.5, "ok": True}, {"object": "apple", "ok": False, "extra": 1}]
    assert markdown_table(rows, ["object", "volume", "ok"], align="lrl") == (
        "| object | volume | ok |\n| --- | ---: | --- |\n| mug | 1.500 | yes |\n| apple |  | no |\n"
    )
    table = markdown_table(rows[:1], ["object"], headers=["Object name"], fmt=str.upper)
    assert table == "| Object name |\n| --- |\n| MUG |\n"
    with pytest.raises(ValueError, match="2 headers for 1 columns"):
        markdown_table(rows, ["object"], headers=["a", "b"])


def test_write_csv_columns_and_order(tmp_path):
    rows = [{"b": 2, "a": 1.25, "skip": "x"}, {"a": 3}]
    path = write_csv(rows, tmp_path / "out" / "t.csv", columns=["a", "b"])
    with open(path, newline="") as f:
        back = list(csv.reader(f))
    assert back == [["a", "b"], ["1.25", "2"], ["3", ""]]
    # Default columns: the first row's keys, in order.
    path = write_csv(rows[:1], tmp_path / "u.csv")
    assert path.read_text().splitlines()[0] == "b,a,skip"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["t.csv"]
