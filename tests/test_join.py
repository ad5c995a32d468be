"""Pairs joined with a products file and a queries file (data.reader.items / queries), item
descriptions (shown last, cut first by the length budget) and raw grades kept through JSONL."""
import json

import pandas as pd
import pytest

from taosr.data.budget import MIN_FIELD_CHARS, fit_example
from taosr.data.join import parse_packed
from taosr.data.readers import ReaderSpec, read_examples
from taosr.errors import ConfigError, DataError
from taosr.prompts import item_block, policy_prompt_text
from taosr.schema import Example, Item, load_jsonl, validate_row, write_jsonl

WANDS_LABELS = {"Exact": 4, "Partial": 3, "Irrelevant": 1}
WANDS_ITEMS = {"item.title": "product_name", "item.category": "category hierarchy",
               "item.description": "product_description", "item.attributes": "product_features"}


def tsv(path, header, rows):
    """A tab-separated file named .csv, as WANDS ships them."""
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return str(path)


def wands(tmp_path):
    labels = tsv(tmp_path / "label.csv", ["id", "query_id", "product_id", "label"],
                 [[0, 0, 25434, "Exact"], [1, 0, 12088, "Irrelevant"], [2, 1, 42931, "Partial"], [3, 1, 99999, "Exact"]])
    queries = tsv(tmp_path / "query.csv", ["query_id", "query", "query_class"],
                  [[0, "salon chair", "Massage Chairs"], [1, "smart coffee table", "Coffee & Cocktail Tables"]])
    products = tsv(tmp_path / "product.csv",
                   ["product_id", "product_name", "product_class", "category hierarchy", "product_description",
                    "product_features", "rating_count"],
                   [[25434, "falkner salon chair", "Massage Chairs", "Furniture / Salon Chairs",
                     "a sturdy salon chair with a hydraulic pump", "overallwidth-sidetoside:24|color:black|material:", 15],
                    [12088, "bedside table", "Nightstands", "Furniture / Bedroom", "", "color:white", ""],
                    [42931, "lift top coffee table", "Coffee Tables", "Furniture / Living Room", "lift top with storage",
                     "dsprimaryproductstyle:modern|tabletopmaterial:wood", 3],
                    [77777, "unused lamp", "Lamps", "Lighting", "", "", ""]])
    return labels, products, queries


def wands_spec(labels, products, queries, **kw):
    return ReaderSpec(path=labels, label_map=WANDS_LABELS, items=products, item_key="product_id",
                      items_column_map=WANDS_ITEMS, queries=queries, query_key="query_id", **kw)


# ----------------------------------------------------------------------------- the three-file read
def test_wands_shaped_three_files_read_with_options_only(tmp_path):
    labels, products, queries = wands(tmp_path)
    with pytest.raises(DataError) as e:  # the pair whose product is not in product.csv and has no title
        read_examples(wands_spec(labels, products, queries))
    assert "label.csv:line 5" in str(e.value) and "'99999'" in str(e.value) and "product.csv" in str(e.value)
    res = read_examples(wands_spec(labels, products, queries, on_error="skip"))
    a, b, c = res.examples
    assert (a.id, a.query, a.item.title, a.item.category, a.label) == \
        ("0", "salon chair", "falkner salon chair", "Furniture / Salon Chairs", 4)
    assert a.item.description == "a sturdy salon chair with a hydraulic pump"
    assert a.item.attributes == {"overallwidth-sidetoside": "24", "color": "black"}  # empty value dropped
    assert b.item.description is None and b.label == 1 and c.query == "smart coffee table" and c.label == 3
    assert all(x.query_type == "other" and x.grade is None for x in res.examples)  # query_class is not a query type
    assert len(res.skipped) == 1 and "'99999'" in res.skipped[0]
    assert res.notes == [
        f"3 of 4 pairs joined a row of {products} by product_id; 1 of 4 product rows joined no pair",
        f"1 of 4 pairs have no row in {products} (first: key '99999' at {labels}:line 5)",
        f"4 of 4 pairs joined a row of {queries} by query_id; 0 of 2 query rows joined no pair",
        f"2 columns of {products} are not read: product_class, rating_count (map one with --items-column-map "
        "FIELD=COLUMN, e.g. item.attributes.NAME=COLUMN)",
        f"1 column of {queries} is not read: query_class (map one with --queries-column-map FIELD=COLUMN, "
        "e.g. query_type=COLUMN)",
    ]


def test_a_products_file_is_parsed_once_per_process_while_unchanged(tmp_path, monkeypatch):
    """Splits share the parse of one products file; each read keeps its own join counts; an edited
    file is read again."""
    import os

    import taosr.data.readers as readers

    labels, products, queries = wands(tmp_path)
    reads = []
    real = readers.iter_records
    monkeypatch.setattr(readers, "iter_records", lambda path, *a, **k: (reads.append(path), real(path, *a, **k))[1])
    spec = wands_spec(labels, products, queries, on_error="skip")
    first, second = read_examples(spec), read_examples(spec)
    assert reads.count(products) == 1 and reads.count(queries) == 1 and reads.count(labels) == 2
    assert first.notes == second.notes and "1 of 4 product rows joined no pair" in first.notes[0]
    with open(products, "a") as fh:
        fh.write("88888\tanother lamp\tLamps\tLighting\t\t\t\n")
    os.utime(products, ns=(os.stat(products).st_atime_ns, os.stat(products).st_mtime_ns + 10**9))
    third = read_examples(spec)
    assert reads.count(products) == 2 and "2 of 5 product rows joined no pair" in third.notes[0]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl", "csv-fallback"])
def test_lookup_tables_keep_only_the_columns_a_join_reads(tmp_path, fmt, monkeypatch):
    """A products row keeps its key, the mapped columns and the default names of unmapped fields,
    nothing else (ESCI's bullet points would double the memory); the examples equal a full read's."""
    import taosr.data.readers as readers

    labels, products, queries = wands(tmp_path)
    df = pd.read_csv(products, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    df["brand"] = ["acme", None, "zeta", None]  # an unmapped field, read by its default name
    df["bullets"] = ["x" * 50] * 4
    if fmt == "parquet":
        products = str(tmp_path / "product.parquet")
        df.to_parquet(products)
    elif fmt == "jsonl":
        products = str(tmp_path / "product.jsonl")
        write_jsonl(products, [{k: v for k, v in r.items() if isinstance(v, str)} for r in df.to_dict("records")])
    else:
        df.to_csv(products, sep="\t", index=False)
        if fmt == "csv-fallback":  # one over-long row: pandas refuses the file, it is read row by row
            with open(products, "a") as fh:
                fh.write("\t".join(["55555"] + ["x"] * 9) + "\n")
    spec = wands_spec(labels, products, queries, on_error="skip")
    res = read_examples(spec)
    assert [e.item.brand for e in res.examples] == ["acme", None, "zeta"]
    if fmt == "csv-fallback":  # the over-long row is named and counted, not read with its fields shifted
        assert any(n.startswith("ignored 1 bad product rows") and "10 fields where the header has 9" in n
                   for n in res.notes), res.notes
    assert res.examples[0].item.description == "a sturdy salon chair with a hydraulic pump"
    table = readers.read_table(products, "product_id", WANDS_ITEMS, on_error="skip", defaults=readers.ITEM_DEFAULT_COLUMNS)
    kept = set().union(*(set(rec) for _, rec in table.rows.values()))
    assert kept == {"product_id", "product_name", "category hierarchy", "product_description", "product_features",
                    "brand"}
    if fmt != "jsonl":  # a JSONL file has no header
        assert table.columns[-2:] == ["brand", "bullets"]
    full = readers.read_table
    monkeypatch.setattr(readers, "read_table", lambda *a, **k: full(*a[:5], **{**k, "defaults": None}))
    readers._parsed_table.cache_clear()
    assert read_examples(spec).examples == res.examples  # every column kept: the same examples
    assert "bullets" in next(iter(full(products, "product_id", WANDS_ITEMS, on_error="skip").rows.values()))[1]


def test_pair_fields_win_and_a_pair_with_its_own_title_is_kept(tmp_path):
    """The pairs file's own title / attribute win; the products file fills the empty fields; a
    pair whose key has no product row keeps its own title and is counted."""
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"q": ["red shoes", "red shoes", "bag"], "pid": ["P1", "P2", "P404"],
                  "name": ["Pair Title", "", "Own Bag"], "colour": ["crimson", "", ""],
                  "lab": ["4", "2", "1"]}).to_csv(pairs, index=False)
    products = tmp_path / "products.jsonl"
    products.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "P1", "title": "Product Title", "brand": "Nike", "color": "red", "size": "42", "price": "19.5"},
        {"id": "P2", "title": "Laces", "brand": None, "color": "white", "size": "", "price": 3}]))
    spec = ReaderSpec(path=str(pairs), column_map={"query": "q", "item.title": "name", "item.attributes.color": "colour",
                                                   "label": "lab"},
                      items=str(products), item_key="pid",
                      items_column_map={"key": "id", "item.attributes.color": "color", "item.attributes.size": "size"})
    a, b, c = read_examples(spec).examples
    assert (a.item.title, a.item.brand, a.item.price, a.item.attributes) == \
        ("Pair Title", "Nike", 19.5, {"color": "crimson", "size": "42"})  # unmapped title/brand/price: same-named columns
    assert (b.item.title, b.item.brand, b.item.price, b.item.attributes) == ("Laces", None, 3.0, {"color": "white"})
    assert (c.item.title, c.item.attributes) == ("Own Bag", {})
    notes = read_examples(spec).notes
    assert f"1 of 3 pairs have no row in {products} (first: key 'P404' at {pairs}:line 4)" in notes


def test_parquet_products_with_integer_keys_join_csv_string_keys(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("query,product_uid,relevance\nangle bracket,100001,3.0\nl bracket,100002,2.33\n")
    desc = tmp_path / "descriptions.parquet"
    pd.DataFrame({"product_uid": [100001, 100002, 100003], "product_title": ["Simpson Angle", "L Bracket", "Other"],
                  "product_description": ["Angles make joints stronger. " * 100, None, "x"]}).to_parquet(desc)
    res = read_examples(ReaderSpec(path=str(pairs), column_map={"label": "relevance"}, label_thresholds=[1.5, 2.25, 2.75],
                                   items=str(desc), item_key="product_uid",
                                   items_column_map={"item.title": "product_title",
                                                     "item.description": "product_description"}))
    a, b = res.examples
    assert (a.item.title, a.label, a.grade) == ("Simpson Angle", 4, 3.0) and len(a.item.description) > 2000
    assert (b.item.title, b.item.description, b.label, b.grade) == ("L Bracket", None, 3, 2.33)
    assert res.notes == [f"2 of 2 pairs joined a row of {desc} by product_uid; 1 of 3 product rows joined no pair"]


# ----------------------------------------------------------------------------- bad products files
def _pairs(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text("query,pid,label\nshoes,P1,4\nlaces,P2,2\n")
    return str(p)


def test_duplicate_product_keys_name_both_rows_or_keep_the_first(tmp_path):
    products = tmp_path / "products.csv"
    products.write_text("pid,title\nP1,First Shoes\nP2,Laces\nP1,Second Shoes\n")
    spec = dict(path=_pairs(tmp_path), items=str(products), item_key="pid")
    with pytest.raises(DataError) as e:
        read_examples(ReaderSpec(**spec))
    msg = str(e.value)
    assert f"{products}:line 4" in msg and "duplicate key 'P1'" in msg and f"first at {products}:line 2" in msg
    assert "\n" not in msg
    res = read_examples(ReaderSpec(**spec, on_error="skip"))
    assert [x.item.title for x in res.examples] == ["First Shoes", "Laces"] and not res.skipped
    assert any(n.startswith(f"ignored 1 product rows of {products} with a duplicate pid") and "line 4" in n
               for n in res.notes), res.notes


def test_keyless_product_rows_and_missing_columns(tmp_path):
    products = tmp_path / "products.csv"
    products.write_text("pid,title\nP1,Shoes\n,Orphan\nP2,Laces\n")
    with pytest.raises(DataError, match=r"products.csv:line 3: field 'pid': is missing \(the join key"):
        read_examples(ReaderSpec(path=_pairs(tmp_path), items=str(products), item_key="pid"))
    res = read_examples(ReaderSpec(path=_pairs(tmp_path), items=str(products), item_key="pid", on_error="skip"))
    assert len(res.examples) == 2 and any(n.startswith("ignored 1 product rows") for n in res.notes)
    with pytest.raises(DataError) as e:  # the products file lacks a mapped column
        read_examples(ReaderSpec(path=_pairs(tmp_path), items=str(products), item_key="pid",
                                 items_column_map={"item.brand": "maker"}))
    assert str(products) in str(e.value) and "'maker'" in str(e.value) and "columns: pid, title" in str(e.value)
    with pytest.raises(DataError, match=r"'sku'.*columns: pid, title"):  # the key column (key=) is missing
        read_examples(ReaderSpec(path=_pairs(tmp_path), items=str(products), item_key="pid", items_column_map={"key": "sku"}))
    with pytest.raises(DataError, match=r"pairs.csv: field 'product_id'"):  # the pairs file lacks item_key
        read_examples(ReaderSpec(path=_pairs(tmp_path), items=str(products), item_key="product_id",
                                 items_column_map={"key": "pid"}))
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_examples(ReaderSpec(path=_pairs(tmp_path), items=str(tmp_path / "nope.csv"), item_key="pid"))


def test_a_bad_product_row_names_the_product_row(tmp_path):
    products = tmp_path / "products.csv"
    products.write_text("pid,title,price\nP1,Shoes,cheap\nP2,Laces,2\n")
    with pytest.raises(DataError, match=r"products.csv:line 2: field 'price': price 'cheap' is not a number"):
        read_examples(ReaderSpec(path=_pairs(tmp_path), items=str(products), item_key="pid"))
    res = read_examples(ReaderSpec(path=_pairs(tmp_path), items=str(products), item_key="pid", on_error="skip"))
    assert [x.item.title for x in res.examples] == ["Laces"] and "cheap" in res.skipped[0]


def test_a_pair_without_its_query_row_and_without_query_text_is_a_row_error(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("qid,title,label\n1,Shoes,4\n7,Bag,1\n")
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"qid": 1, "text": "running shoes", "type": "negation"}) + "\n")
    spec = dict(path=str(pairs), column_map={"item.title": "title"}, queries=str(queries), query_key="qid",
                queries_column_map={"query": "text", "query_type": "type"})
    with pytest.raises(DataError, match=r"pairs.csv:line 3: field 'qid': key '7' has no row in .*queries.jsonl"):
        read_examples(ReaderSpec(**spec))
    res = read_examples(ReaderSpec(**spec, on_error="skip"))
    assert [(x.query, x.query_type) for x in res.examples] == [("running shoes", "negation")]
    assert f"1 of 2 pairs have no row in {queries} (first: key '7' at {pairs}:line 3)" in res.notes


# ----------------------------------------------------------------------------- long-format attributes
def home_depot(tmp_path):
    """Home Depot's shape: pairs with title and search term, descriptions, attributes in long format."""
    train = tmp_path / "train.csv"
    train.write_text("id,product_uid,product_title,search_term,relevance\n"
                     "2,100001,Simpson Strong-Tie 12-Gauge Angle,angle bracket,3.0\n"
                     "3,100001,Simpson Strong-Tie 12-Gauge Angle,l bracket,2.5\n"
                     "9,100002,BEHR Premium Textured DeckOver,deck over,3.0\n"
                     "16,100005,Delta Vero 1-Handle Shower Faucet,rain shower head,2.33\n")
    desc = tmp_path / "product_descriptions.csv"
    desc.write_text("product_uid,product_description\n100001,Not only do angles make joints stronger\n"
                    "100002,BEHR Premium Textured DeckOver is an innovative solid color coating\n"
                    "100005,Update your bathroom with the Delta Vero\n")
    attrs = tmp_path / "attributes.csv"
    attrs.write_text("product_uid,name,value\n"
                     "100001.0,Bullet01,Versatile connector for various 90 connections\n"
                     "100001.0,Material,Galvanized Steel\n"
                     "100001.0,MFG Brand Name,Simpson Strong-Tie\n"
                     "100002.0,Color Family,Brown\n"
                     "100002.0,Color Family,Gray\n"
                     "100002.0,Color Family,Brown\n"
                     "100002.0,Coverage Area (sq. ft.),75\n"
                     "100002.0,Finish,\n"
                     "100003.0,Material,Plastic\n")
    return str(train), str(desc), str(attrs)


HOME_DEPOT = dict(column_map={"id": "id", "query": "search_term", "item.title": "product_title", "label": "relevance"},
                  label_thresholds=[1.5, 2.25, 2.75], item_key="product_uid",
                  items_column_map={"item.description": "product_description"})


def test_home_depot_shaped_files_with_long_attributes(tmp_path):
    train, desc, attrs = home_depot(tmp_path)
    res = read_examples(ReaderSpec(path=train, items=desc, attributes=attrs, **HOME_DEPOT))
    a, b, c, d = res.examples
    assert (a.query, a.item.title, a.label, a.grade) == ("angle bracket", "Simpson Strong-Tie 12-Gauge Angle", 4, 3.0)
    assert a.item.description == "Not only do angles make joints stronger"
    assert a.item.attributes == {"Bullet01": "Versatile connector for various 90 connections",
                                 "Material": "Galvanized Steel", "MFG Brand Name": "Simpson Strong-Tie"}
    assert b.item.attributes == a.item.attributes and b.label == 3
    # a name given twice keeps both values, each once; "75" stays an integer; an empty value adds nothing
    assert c.item.attributes == {"Color Family": "Brown; Gray", "Coverage Area (sq. ft.)": "75"}
    assert d.item.attributes == {} and d.item.description.startswith("Update")  # no attributes: counted, kept
    assert f"3 of 4 pairs joined a row of {attrs} by product_uid; 1 of 3 product rows joined no pair" in res.notes
    assert f"1 of 4 pairs have no row in {attrs} (first: key '100005' at {train}:line 5)" in res.notes


def test_convert_joins_long_attributes_from_the_flags(tmp_path):
    from taosr.cli import main

    train, desc, attrs = home_depot(tmp_path)
    out = tmp_path / "train.jsonl"
    assert main(["data", "convert", train, "--column-map", "id=id", "query=search_term", "item.title=product_title",
                 "label=relevance", "--label-thresholds", "1.5", "2.25", "2.75", "--items", desc, "--item-key",
                 "product_uid", "--items-column-map", "item.description=product_description", "--attributes", attrs,
                 "--out", str(out)]) == 0
    rows = load_jsonl(str(out))
    assert [r.item.attributes.get("Material") for r in rows] == ["Galvanized Steel", "Galvanized Steel", None, None]
    assert rows[2].item.attributes["Color Family"] == "Brown; Gray" and rows[0].grade == 3.0


def test_long_attributes_fill_in_and_bad_rows_are_named(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("pid,q,title,color,label\nP1,shoes,Shoes,red,4\n")
    attrs = tmp_path / "attrs.jsonl"
    attrs.write_text("\n".join(json.dumps(r) for r in [{"sku": "P1", "attr": "color", "val": "blue"},
                                                       {"sku": "P1", "attr": "size", "val": 42}]) + "\n")
    spec = dict(path=str(pairs), column_map={"query": "q", "item.title": "title", "item.attributes.color": "color"},
                attributes=str(attrs), attributes_key="pid", attributes_column_map={"key": "sku", "name": "attr", "value": "val"})
    (ex,) = read_examples(ReaderSpec(**spec)).examples
    assert ex.item.attributes == {"color": "red", "size": "42"}  # the pair's own value wins
    attrs.write_text(attrs.read_text() + json.dumps({"sku": "P1", "val": "x"}) + "\n")
    with pytest.raises(DataError, match=r"attrs.jsonl:3: field 'attr': is missing \(the attribute name"):
        read_examples(ReaderSpec(**spec))
    res = read_examples(ReaderSpec(**spec, on_error="skip"))
    assert res.examples[0].item.attributes == {"color": "red", "size": "42"}
    assert any("ignored 1 bad product rows of" in n for n in res.notes)
    with pytest.raises(DataError, match=r"attrs.jsonl: .*value"):  # a mapped column the file lacks
        read_examples(ReaderSpec(**{**spec, "attributes_column_map": {"key": "sku", "name": "attr", "value": "v"}}))


# ----------------------------------------------------------------------------- packed attributes
def test_packed_attributes():
    assert parse_packed("color:black|width: 24 in |material:", "f:1", "features") == {"color": "black", "width": "24 in"}
    assert parse_packed("ratio:16:9||", "f:1", "features") == {"ratio": "16:9"}
    assert parse_packed('{"color": "red", "size": 42, "gone": null}', "f:1", "features") == {"color": "red", "size": "42"}
    with pytest.raises(DataError, match=r"f:2: field 'features': packed attribute 'just words' is not NAME:VALUE"):
        parse_packed("color:red|just words", "f:2", "features")
    # name=value; name=value (a catalogue export's), and a lone attribute whose value holds a `;`
    assert parse_packed("color=black; size=L;", "f:1", "features") == {"color": "black", "size": "L"}
    assert parse_packed("material: cotton; polyester", "f:1", "features") == {"material": "cotton; polyester"}
    assert parse_packed("size:a=b|fit:slim", "f:1", "features") == {"size": "a=b", "fit": "slim"}
    with pytest.raises(DataError, match="look like JSON but are not"):
        parse_packed('{"color": ', "f:3", "features")
    with pytest.raises(DataError, match="must be a string or number"):
        parse_packed('{"color": ["red"]}', "f:4", "features")


def test_named_attribute_wins_over_packed(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("query,title,feats,col,label\nshoes,Shoes,color:red|size:42,blue,4\n")
    (ex,) = read_examples(ReaderSpec(path=str(p), column_map={"item.title": "title", "item.attributes": "feats",
                                                              "item.attributes.color": "col"})).examples
    assert ex.item.attributes == {"color": "blue", "size": "42"}


# ----------------------------------------------------------------------------- options refused up front
@pytest.mark.parametrize("kw,needle", [
    ({"items": "p.csv"}, "data.reader.item_key: required with data.reader.items"),
    ({"item_key": "pid"}, "data.reader.item_key: set only with data.reader.items"),
    ({"items_column_map": {"item.title": "name"}}, "data.reader.items_column_map: set only with data.reader.items"),
    ({"items": "p.csv", "item_key": "pid", "items_column_map": {"item.titel": "name"}},
     "data.reader.items_column_map: 'item.titel' is not a field"),
    ({"items": "p.csv", "item_key": "pid", "items_column_map": {"query": "q"}}, "data.reader.items_column_map: 'query'"),
    ({"items": "p.csv", "item_key": "pid", "items_column_map": {"item.title": " "}}, "'item.title' maps to no column"),
    ({"items": "p.csv", "item_key": "pid", "items_column_map": {"key": ""}},
     "'key' maps to no column (only item.brand, item.category, item.description, item.price, item.attributes may be "
     "left out, with FIELD= and no column)"),
    ({"column_map": {"label": ""}}, "'label' maps to no column (only item.brand"),
    ({"items": "p.csv", "item_key": "pid", "items_column_map": {"item.attributes.color": ""}},
     "'item.attributes.color' maps to no column"),
    ({"attributes": "a.csv", "attributes_key": "pid", "attributes_column_map": {"value": ""}},
     "data.reader.attributes_column_map: 'value' maps to no column"),
    ({"items": "", "item_key": "pid"}, "data.reader.items: must be a file path"),
    ({"queries": "q.csv"}, "data.reader.query_key: required with data.reader.queries"),
    ({"queries": "q.csv", "query_key": "qid", "queries_column_map": {"item.title": "t"}},
     "data.reader.queries_column_map: 'item.title' is not a field; expected one of key, query, query_type"),
    ({"column_map": {"key": "pid"}}, "data.reader.column_map: 'key' is not a field"),
    ({"attributes": "a.csv"}, "data.reader.attributes_key: required with data.reader.attributes (or data.reader.item_key)"),
    ({"attributes_key": "pid"}, "data.reader.attributes_key: set only with data.reader.attributes"),
    ({"attributes": "a.csv", "attributes_key": "pid", "attributes_column_map": {"item.title": "t"}},
     "data.reader.attributes_column_map: 'item.title' is not a field; expected one of key, name, value"),
])
def test_bad_join_options_are_refused_before_reading(kw, needle):
    with pytest.raises(ConfigError) as e:
        ReaderSpec(**kw).validate(lambda name: f"data.reader.{name}")
    assert needle in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- descriptions
def _ex(title="Falkner Salon Chair", **item):
    return Example(query="salon chair", item=Item(title=title, brand="Wayfair", **item), label=4)


def test_description_is_shown_last_and_only_when_present():
    plain = _ex(attributes={"color": "black"}, price=99.0)
    assert item_block(plain) == "Product: Falkner Salon Chair\nBrand: Wayfair\nAttributes: color=black\nPrice: 99.00"
    assert item_block(_ex(attributes={"color": "black"}, price=99.0, description="Sturdy.")) == \
        item_block(plain) + "\nDescription: Sturdy."
    d = plain.to_dict()
    assert "description" not in d["item"] and "grade" not in d  # rows without them are written as before
    with pytest.raises(DataError, match=r"f:1: field 'item.description': must be a string"):
        validate_row({"query": "q", "item": {"title": "T", "description": ["x"]}, "label": 4}, "f:1")


def test_budget_cuts_the_description_first():
    long = "word " * 800
    ex = _ex(attributes={"color": "black"}, description=long)
    n_chars = lambda e: len(policy_prompt_text(e))  # noqa: E731  (a character budget: tokens are a monotone stand-in)
    budget = len(policy_prompt_text(_ex(attributes={"color": "black"}))) + 200
    short, cut = fit_example(ex, n_chars, budget)
    assert cut and n_chars(short) <= budget and n_chars(short) > budget - 20  # the largest description that fits
    assert (short.item.title, short.item.brand, short.item.attributes) == (ex.item.title, ex.item.brand, ex.item.attributes)
    assert short.item.description.endswith("...") and short.query == ex.query
    # too tight even for the description's minimum: it stays at MIN_FIELD_CHARS, then the other fields shrink
    title = "Falkner Salon Chair with Hydraulic Pump and Footrest"
    ex2 = _ex(title=title, attributes={"color": "black"}, description=long)
    tight = len(policy_prompt_text(_ex(title=title, attributes={"color": "black"}, description="d" * MIN_FIELD_CHARS))) - 10
    short2, _ = fit_example(ex2, n_chars, tight)
    assert len(short2.item.description) == MIN_FIELD_CHARS + 3 and short2.item.title.endswith("...")
    assert tight - 10 < n_chars(short2) <= tight
    # a row without a description is cut as before: its item fields, by the largest cap C
    no_desc = _ex(attributes={"color": "black " * 40})
    short3, cut3 = fit_example(no_desc, n_chars, n_chars(no_desc) - 100)
    assert cut3 and short3.item.description is None and short3.item.attributes["color"].endswith("...")


# ----------------------------------------------------------------------------- grades
def test_grade_is_the_raw_number_and_survives_jsonl(tmp_path):
    p = tmp_path / "g.parquet"
    pd.DataFrame({"query": ["a", "b", "c"], "title": ["A", "B", "C"], "score": [0.5, 2.67, 3.0]}).to_parquet(p)
    res = read_examples(ReaderSpec(path=str(p), column_map={"item.title": "title", "label": "score"},
                                   label_thresholds=[1.0, 2.0, 3.0]))
    assert [(e.label, e.grade) for e in res.examples] == [(1, 0.5), (3, 2.67), (4, 3.0)]
    out = tmp_path / "g.jsonl"
    write_jsonl(str(out), res.examples)
    back = load_jsonl(str(out))
    assert [e.grade for e in back] == [0.5, 2.67, 3.0] and [e.to_dict() for e in back] == [e.to_dict() for e in res.examples]
    # numeric labels without a map keep their number; labels through a label map have no grade
    c = tmp_path / "n.csv"
    c.write_text("query,title,label\na,A,4\nb,B,2\n")
    assert [e.grade for e in read_examples(ReaderSpec(path=str(c), column_map={"item.title": "title"})).examples] == [4.0, 2.0]
    assert [e.grade for e in read_examples(ReaderSpec(path=str(c), column_map={"item.title": "title"},
                                                      label_map={"4": 4, "2": 2})).examples] == [None, None]


@pytest.mark.parametrize("grade", ["2.5", float("nan"), True, [1]])
def test_bad_grade_in_jsonl_is_refused(grade):
    with pytest.raises(DataError, match=r"f:3: field 'grade': must be a finite number"):
        validate_row({"query": "q", "item": {"title": "T"}, "label": 4, "grade": grade}, "f:3")


def test_a_products_files_attributes_column_is_read_and_its_other_columns_named(tmp_path):
    """A products file's `attributes` column was silently ignored (the short-name default covered the
    fields, not packed attributes; and a pairs file's `item.attributes` column was counted as read but
    never read): "150 examples OK" with no attributes and no note. Now both are read, and a lookup file's
    columns nothing reads are named, as the pairs file's are."""
    products = tmp_path / "products.csv"
    products.write_text("pid,title,attributes,product_description,stock\n"
                        "P1,Shoes,color=red; size=42,long text,3\nP2,Laces,,,0\n")
    spec = ReaderSpec(path=_pairs(tmp_path), items=str(products), item_key="pid")
    res = read_examples(spec)
    assert [ex.item.attributes for ex in res.examples] == [{"color": "red", "size": "42"}, {}]
    assert (f"2 columns of {products} are not read: product_description, stock (map one with --items-column-map "
            "FIELD=COLUMN, e.g. item.description=product_description)") in res.notes
    pairs = tmp_path / "flat.csv"
    pairs.write_text("query,title,item.attributes,label\nshoes,Shoes,color:red|size:42,4\n")
    (ex,) = read_examples(ReaderSpec(path=str(pairs))).examples
    assert ex.item.attributes == {"color": "red", "size": "42"}


def test_prices_with_a_currency_sign_or_thousands_commas_are_read():
    """A real catalogue's `$12.99` or `1,299.00 USD` made the whole pair a bad row; `N/A` still is one,
    with the way out named."""
    from taosr.data.join import item_fields, parse_price

    assert [parse_price(v) for v in ("12.5", "$12.99", "1,299.00 USD", "€ 5", 3)] == [12.5, 12.99, 1299.0, 5.0, 3.0]
    assert [parse_price(v) for v in ("N/A", "12,99", "")] == [None] * 3
    assert item_fields({"title": "T", "price": "$1,050"}, {}, "f:2", default=lambda t: t[5:])["price"] == 1050.0
    with pytest.raises(DataError, match=r"price 'N/A' is not a number \(an empty cell is no price"):
        item_fields({"title": "T", "price": "N/A"}, {}, "f:2", default=lambda t: t[5:])


def test_an_empty_column_leaves_a_field_out_of_every_file(tmp_path):
    """`FIELD=` (no column) leaves an optional field out, not even read from the column of its default
    name: a products file's `description` column (the tiny model reads descriptions badly) could only be
    renamed or dropped before. The other columns are read as before, and a left-out column is not named
    among those not read (it is accounted for); a field mapped elsewhere is not suggested for its short
    column."""
    products = tmp_path / "products.csv"
    products.write_text("pid,title,brand,description,price,attributes\n"
                        "P1,Shoes,Acme,long text,9.5,color=red\nP2,Laces,Acme,more text,1,\n")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("query,pid,query_type,label\nshoes,P1,brand,4\nlaces,P2,brand,3\n")
    spec = dict(path=str(pairs), items=str(products), item_key="pid")
    full = read_examples(ReaderSpec(**spec).validate())
    assert [ex.item.description for ex in full.examples] == ["long text", "more text"]
    left = read_examples(ReaderSpec(**spec, column_map={"query_type": ""},
                                    items_column_map={"item.description": "", "item.attributes": " "}).validate())
    assert [ex.item.description for ex in left.examples] == [None, None]
    assert [ex.item.attributes for ex in left.examples] == [{}, {}]
    assert [ex.query_type for ex in left.examples] == ["other", "other"]  # the pairs file's query_type column left out
    assert [(ex.item.title, ex.item.brand, ex.item.price) for ex in left.examples] == \
        [(ex.item.title, ex.item.brand, ex.item.price) for ex in full.examples]
    assert not [n for n in left.notes if "not read" in n]
    flat = tmp_path / "flat.csv"
    flat.write_text("query,title,brand,maker,label\nshoes,Shoes,Acme,Acme Inc,4\n")
    res = read_examples(ReaderSpec(path=str(flat), column_map={"item.brand": "maker"}).validate())
    assert res.examples[0].item.brand == "Acme Inc"
    assert f"1 column of {flat} is not read: brand (map one with --column-map FIELD=COLUMN, " \
           "e.g. item.attributes.NAME=COLUMN)" in res.notes
    queries = tmp_path / "queries.csv"
    queries.write_text("qid,query,query_type\nq1,shoes,brand\n")
    qpairs = tmp_path / "qpairs.csv"
    qpairs.write_text("qid,title,label\nq1,Shoes,4\n")
    (ex,) = read_examples(ReaderSpec(path=str(qpairs), queries=str(queries), query_key="qid",
                                     queries_column_map={"query_type": ""}).validate()).examples
    assert (ex.query, ex.query_type) == ("shoes", "other")


def test_an_empty_column_from_the_flags(tmp_path):
    """`--items-column-map item.description=` on the command line: the same leave-out as in a config."""
    from taosr.cli import main
    products = tmp_path / "products.csv"
    products.write_text("pid,title,description\nP1,Shoes,long text\n")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("query,pid,label\nshoes,P1,4\n")
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(pairs), "--out", str(out), "--items", str(products), "--item-key", "pid",
                 "--items-column-map", "item.description="]) in (0, None)
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["item"]["title"] == "Shoes" and "description" not in row["item"]
