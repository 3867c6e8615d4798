import json

import pytest

from rtsql import catalog
from rtsql.errors import BadEventFile
from rtsql.ingest import ColumnMapping

from conftest import count


def test_csv_catalog_upsert_tags_attributes_embedding(con, write):
    path = write("items.csv", 'item_id,title,category,tags,price,embedding\n'
                              'i1,Shoe,shoes,red| sport,3.5,"[1,0,2]"\n'
                              ',NoId,x,,1,\n'
                              'i2,Hat,hats,,2,\n')
    counts = catalog.load_items(con, path)
    assert counts == {"upserted": 2, "new_items": 2, "rejected": 1}
    row = con.execute("select title, category, tags, attributes, embedding from item_catalog "
                      "join items using (item_key) where item_id = 'i1'").fetchall()[0]
    assert row[:3] == ("Shoe", "shoes", ["red", "sport"])
    assert json.loads(row[3]) == {"price": "3.5"}
    assert row[4] == [1.0, 0.0, 2.0]
    assert con.execute("select line, reason from rejects").fetchall() == [
        (3, "catalog row without item_id")]
    # upsert: a second file changes i1 and adds nothing twice
    catalog.load_items(con, write("items2.csv", "item_id,title\ni1,Better Shoe\n"))
    assert count(con, "select count(*) from item_catalog") == 2
    assert count(con, "select title from item_catalog join items using (item_key) "
                      "where item_id = 'i1'") == "Better Shoe"


def test_jsonl_catalog_with_list_tags_and_mapping(con, write):
    path = write("m.jsonl", '{"movieId": 1, "name": "Heat", "genres": ["Crime", "Drama"]}\n')
    catalog.load_items(con, path, mapping=ColumnMapping({"item_id": "movieId", "title": "name",
                                                         "tags": "genres"}))
    assert con.execute("select item_id, title, tags from item_catalog join items using (item_key)"
                       ).fetchall() == [("1", "Heat", ["Crime", "Drama"])]


def test_catalog_without_item_column(con, write):
    with pytest.raises(BadEventFile, match="--map item_id=COLUMN"):
        catalog.load_items(con, write("x.csv", "sku,title\n1,a\n"))
