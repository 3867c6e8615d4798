import datetime as dt

import pytest

from rtsql.output import render

COLS = ["rank", "item_id", "score"]
ROWS = [(1, "sku-1", 0.5), (2, "sku,2", None)]


def test_table():
    assert render(COLS, ROWS, "table") == (
        "rank  item_id   score\n"
        "----  -------  ------\n"
        "   1  sku-1    0.5000\n"
        "   2  sku,2\n")


def test_json():
    assert render(COLS, ROWS, "json") == (
        '[\n  {\n    "rank": 1,\n    "item_id": "sku-1",\n    "score": 0.5\n  },\n'
        '  {\n    "rank": 2,\n    "item_id": "sku,2",\n    "score": null\n  }\n]\n')


def test_jsonl_and_dates():
    rows = [(1, dt.datetime(2024, 1, 1), float("nan"))]
    assert render(["a", "b", "c"], rows, "jsonl") == '{"a": 1, "b": "2024-01-01T00:00:00", "c": null}\n'


def test_csv():
    assert render(COLS, ROWS, "csv") == 'rank,item_id,score\n1,sku-1,0.5\n2,"sku,2",\n'


def test_unknown_format():
    with pytest.raises(ValueError):
        render(COLS, ROWS, "xml")
