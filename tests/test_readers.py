"""Readers with column and label maps, ESCI adapter, and one-line errors naming file, row and field."""
import json

import pandas as pd
import pytest

from taosr.data.esci import read_esci
from taosr.data.readers import ReaderSpec, read_examples
from taosr.errors import DataError

ESCI = {"E": 4, "S": 3, "C": 2, "I": 1}


def test_csv_with_column_and_label_map(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame({"q": ["red shoes", "blue bag"], "name": ["Nike Red Shoes", "Coach Blue Bag"],
                  "brand": ["nike", ""], "colour": ["red", "blue"], "esci": ["E", "I"],
                  "price": ["10.5", ""]}).to_csv(p, index=False)
    res = read_examples(ReaderSpec(path=str(p), column_map={"query": "q", "item.title": "name", "item.brand": "brand",
                                                            "item.attributes.color": "colour", "label": "esci",
                                                            "item.price": "price"}, label_map=ESCI))
    a, b = res.examples
    assert (a.query, a.item.title, a.item.brand, a.item.attributes, a.label, a.item.price) == \
        ("red shoes", "Nike Red Shoes", "nike", {"color": "red"}, 4, 10.5)
    assert b.item.brand is None and b.label == 1 and b.item.price is None and b.query_type == "other"


def test_graded_thresholds_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    pd.DataFrame({"query": ["a", "b", "c", "d"], "title": ["A", "B", "C", "D"], "score": [0.1, 1.5, 2.2, 3.0]}).to_parquet(p)
    res = read_examples(ReaderSpec(path=str(p), column_map={"item.title": "title", "label": "score"},
                                   label_thresholds=[1.0, 2.0, 3.0], query_type="other"))
    assert [e.label for e in res.examples] == [1, 2, 3, 4]


def test_unknown_label_names_file_line_field(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame({"query": ["a", "b"], "title": ["A", "B"], "esci": ["E", "X"]}).to_csv(p, index=False)
    with pytest.raises(DataError) as e:
        read_examples(ReaderSpec(path=str(p), column_map={"item.title": "title", "label": "esci"}, label_map=ESCI))
    msg = str(e.value)
    assert "d.csv:line 3" in msg and "esci" in msg and "'X'" in msg and "\n" not in msg


def test_parquet_rows_and_skip_counts(tmp_path):
    p = tmp_path / "d.parquet"
    pd.DataFrame({"query": ["a", "", "c"], "title": ["A", "B", "C"], "label": [4, 3, 9]}).to_parquet(p)
    spec = ReaderSpec(path=str(p), column_map={"item.title": "title"}, on_error="skip")
    res = read_examples(spec)
    assert len(res.examples) == 1 and len(res.skipped) == 2
    assert "row 2" in res.skipped[0] and "query" in res.skipped[0]
    assert "row 3" in res.skipped[1] and "label" in res.skipped[1]
    with pytest.raises(DataError, match="row 2"):
        read_examples(ReaderSpec(path=str(p), column_map={"item.title": "title"}))


def test_missing_column_and_file(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame({"query": ["a"], "title": ["A"], "label": [4]}).to_csv(p, index=False)
    with pytest.raises(DataError, match="'product_title'.*columns: query, title, label"):
        read_examples(ReaderSpec(path=str(p), column_map={"item.title": "product_title"}))
    with pytest.raises(DataError, match="file not found"):
        read_examples(ReaderSpec(path=str(tmp_path / "nope.jsonl")))
    xls = tmp_path / "d.xls"
    xls.write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        read_examples(ReaderSpec(path=str(xls)))


def test_jsonl_native_and_bad_fields(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"query": "q", "item": {"title": "T", "price": 3}, "label": 2, "query_type": "negation",
             "annotations": {"category": "exact"}},
            {"query": "q", "item": {"title": "T"}, "label": 2, "query_type": "weird"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'query_type'"):
        read_examples(ReaderSpec(path=str(p)))
    res = read_examples(ReaderSpec(path=str(p), on_error="skip"))
    assert len(res.examples) == 1 and res.examples[0].annotations == {"category": "exact"} and len(res.skipped) == 1


def test_a_flat_jsonl_row_is_read_by_column_name_without_a_map(tmp_path):
    """The README reads JSONL without a nested item by column name; without any reader flag such a
    row was validated as a taosr row: "field 'title': unknown field"."""
    p = tmp_path / "flat.jsonl"
    rows = [{"query": "red shoes", "title": "Red Shoe", "item.brand": "Acme", "label": "Excellent"},
            {"query": "bag", "item": {"title": "Tote"}, "label": 2}]  # a taosr row in the same file
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = read_examples(ReaderSpec(path=str(p)))
    assert [(e.query, e.item.title, e.item.brand, e.label) for e in res.examples] == [
        ("red shoes", "Red Shoe", "Acme", 4), ("bag", "Tote", None, 2)]


def _esci_files(tmp_path):
    ex = pd.DataFrame({"example_id": [1, 2, 3, 4], "query": ["shoes", "shoes", "zapatos", "bag"],
                       "query_id": [1, 1, 2, 3], "product_id": ["P1", "P2", "P1", "P9"],
                       "product_locale": ["us", "us", "es", "us"], "esci_label": ["E", "C", "S", "I"],
                       "small_version": [1, 1, 1, 1], "large_version": [1, 1, 1, 1],
                       "split": ["train", "train", "train", "train"]})
    pr = pd.DataFrame({"product_id": ["P1", "P2", "P1"], "product_title": ["Running Shoes", "Shoe Laces", "Zapatillas"],
                       "product_description": [None] * 3, "product_bullet_point": [None] * 3,
                       "product_brand": ["Nike", None, "Nike"], "product_color": ["Red", None, None],
                       "product_locale": ["us", "us", "es"]})
    ex.to_parquet(tmp_path / "examples.parquet")
    pr.to_parquet(tmp_path / "products.parquet")
    return str(tmp_path / "examples.parquet"), str(tmp_path / "products.parquet")


def test_esci_adapter(tmp_path):
    e, p = _esci_files(tmp_path)
    with pytest.raises(DataError, match="row 4.*P9"):
        read_esci(e, p)
    res = read_esci(e, p, on_error="skip")
    assert [(x.query, x.item.title, x.label) for x in res.examples] == [("shoes", "Running Shoes", 4), ("shoes", "Shoe Laces", 2)]
    assert res.examples[0].item.brand == "Nike" and res.examples[0].item.attributes == {"color": "Red"}
    assert len(res.skipped) == 1
    es = read_esci(e, p, locale="es")
    assert [x.item.title for x in es.examples] == ["Zapatillas"] and es.examples[0].label == 3
    ex = pd.read_parquet(e)
    ex.loc[1, "small_version"] = 0  # the large version's pair: left out unless small_version=False
    ex.to_parquet(e)
    assert [x.item.title for x in read_esci(e, p, on_error="skip").examples] == ["Running Shoes"]
    assert len(read_esci(e, p, on_error="skip", small_version=False).examples) == 2
    pd.read_parquet(p).drop(columns=["product_brand"]).to_parquet(p)  # only the used columns are read ...
    with pytest.raises(DataError, match=r"field 'product_brand': column missing; columns: product_id, product_title, "
                                        r"product_description, product_bullet_point, product_color"):
        read_esci(e, p)  # ... and a missing one is named with the file's whole header


def test_tier_names_are_labels_and_other_labels_point_to_the_label_map(tmp_path):
    """taosr's own tier names read as tiers in any case; other text labels say how to map them."""
    p = tmp_path / "d.csv"
    pd.DataFrame({"query": list("abcde"), "item.title": list("ABCDE"),
                  "label": ["Excellent", "related", " MISMATCH ", "irrelevant", "4.0"]}).to_csv(p, index=False)
    assert [e.label for e in read_examples(ReaderSpec(path=str(p))).examples] == [4, 3, 2, 1, 4]
    pd.DataFrame({"query": ["a", "b"], "item.title": ["A", "B"], "label": ["E", "I"]}).to_csv(p, index=False)
    with pytest.raises(DataError, match=r"d.csv:line 2: field 'label': unknown label 'E'.*--label-map E=4"):
        read_examples(ReaderSpec(path=str(p)))


def test_a_missing_default_column_is_one_header_error(tmp_path):
    """A file without a label / query / title column (and none mapped) is refused once for the
    file, naming its columns and the flag, not as a bad row (which --skip-invalid would drop, all of them)."""
    p = tmp_path / "d.csv"
    pd.DataFrame({"search_query": ["a"], "product_title": ["A"], "rating": [4]}).to_csv(p, index=False)
    for cmap, missing in (({}, "label"), ({"label": "rating"}, "query"),
                          ({"label": "rating", "query": "search_query"}, "item.title")):
        with pytest.raises(DataError, match=rf"d.csv: no column '[\w.]+'( or 'title')? for {missing} \(columns: search_query, "
                                            rf"product_title, rating\); name yours with --column-map {missing}="):
            read_examples(ReaderSpec(path=str(p), column_map=cmap, on_error="skip"))
    full = {"label": "rating", "query": "search_query", "item.title": "product_title"}
    assert read_examples(ReaderSpec(path=str(p), column_map=full)).examples[0].item.title == "A"
    # the title is read from `item.title` or `title`, other item fields by their dotted name only (a `price`
    # column of another format must not fail every row); columns nothing reads are noted
    pd.DataFrame({"query": ["a"], "title": ["A"], "item.brand": ["acme"], "price": ["$12.99"], "label": [4],
                  "seller": ["x"]}).to_csv(p, index=False)
    res = read_examples(ReaderSpec(path=str(p)))
    item = res.examples[0].item
    assert (item.title, item.brand, item.price) == ("A", "acme", None)
    assert any("2 columns of" in n and ": price, seller (" in n for n in res.notes)
    # JSONL rows may each leave keys out: no header check against the first row
    j = tmp_path / "flat.jsonl"
    j.write_text('{"t": "A", "l": "E"}\n{"query": "b", "t": "B", "l": "I"}\n')  # the first row lacks its query
    res = read_examples(ReaderSpec(path=str(j), column_map={"item.title": "t", "label": "l"},
                                   label_map={"E": 4, "I": 1}, on_error="skip"))
    assert [e.query for e in res.examples] == ["b"] and len(res.skipped) == 1


def test_a_products_file_without_a_title_column_is_named(tmp_path):
    """With the title in neither the pairs file nor the products file the error names the
    products file and --items-column-map, not a row of the pairs file."""
    pairs, products = tmp_path / "pairs.csv", tmp_path / "products.csv"
    pd.DataFrame({"query": ["a"], "pid": ["P1"], "label": [4]}).to_csv(pairs, index=False)
    pd.DataFrame({"pid": ["P1"], "name": ["Red shoe"], "bullets": ["- red"]}).to_csv(products, index=False)
    spec = dict(path=str(pairs), items=str(products), item_key="pid")
    # the file's whole header, though a row keeps only the columns a join reads
    with pytest.raises(DataError, match=r"products.csv: no column 'title' for item.title in the products file "
                                        r"\(columns: pid, name, bullets\) nor in .*pairs.csv; name it with --items-column-map"):
        read_examples(ReaderSpec(**spec, on_error="skip"))
    ok = read_examples(ReaderSpec(**spec, items_column_map={"item.title": "name"}))
    assert ok.examples[0].item.title == "Red shoe"


def test_repeated_pairs_are_counted_with_their_conflicts(tmp_path):
    """The same query and title twice is kept (raters disagree in real data) but counted, and a
    different label on the repeat is named with both lines."""
    p = tmp_path / "d.csv"
    pd.DataFrame({"query": ["a", "b", "A", "b"], "title": ["T", "U", "t", "U"], "label": [4, 2, 1, 2]}).to_csv(p, index=False)
    res = read_examples(ReaderSpec(path=str(p)))
    assert len(res.examples) == 4
    assert ["2 rows repeat an earlier row's query and item title, 1 of them with another label "
            f"(first: {p}:line 4 says 1, {p}:line 2 said 4)"] == [n for n in res.notes if "repeat" in n]


def test_encodings_that_would_garble_text_are_refused_and_latin1_is_noted(tmp_path):
    """A UTF-8 file with one latin-1 byte was read as latin-1 whole (every other accent garbled), and
    UTF-16 without a byte-order mark as latin-1 with a NUL between letters; pure latin-1 is read and noted."""
    rows = "query,item.title,label\nt\u2122-shirt,Caf\u00e9 mug,4\n"
    mixed = tmp_path / "mixed.csv"
    mixed.write_bytes(rows.encode("utf-8") + "b,Cr\u00e8me,3\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"mixed.csv:line 3: bytes that are not UTF-8 in a file that is UTF-8 elsewhere"):
        read_examples(ReaderSpec(path=str(mixed)))
    assert read_examples(ReaderSpec(path=str(mixed), encoding="latin-1")).examples[1].item.title == "Cr\u00e8me"
    u16 = tmp_path / "u16.csv"
    u16.write_bytes(rows.encode("utf-16-le"))
    with pytest.raises(DataError, match="looks like UTF-16 without a byte-order mark"):
        read_examples(ReaderSpec(path=str(u16)))
    assert read_examples(ReaderSpec(path=str(u16), encoding="utf-16-le")).examples[0].query == "t\u2122-shirt"
    latin = tmp_path / "latin.csv"
    latin.write_bytes("query,item.title,label\nb,Cr\u00e8me br\u00fbl\u00e9e,3\n".encode("latin-1"))
    res = read_examples(ReaderSpec(path=str(latin)))
    assert res.examples[0].item.title == "Cr\u00e8me br\u00fbl\u00e9e" and any("read as latin-1" in n for n in res.notes)
    # plain latin-1 / cp1252 whose byte pairs look like UTF-8 characters (\u00d7\u00a0, \u00c9\u201d) is not "mixed"
    latin.write_bytes("query,item.title,label\nrug,Tapis 160\u00a0\u00d7\u00a0230 cm,4\n".encode("latin-1"))
    assert read_examples(ReaderSpec(path=str(latin))).examples[0].item.title == "Tapis 160\u00a0\u00d7\u00a0230 cm"
    latin.write_bytes("query,item.title,label\ncoffee,\u201cCAF\u00c9\u201d NOIR,4\n".encode("cp1252"))
    assert len(read_examples(ReaderSpec(path=str(latin))).examples) == 1


def test_a_row_with_extra_fields_is_a_bad_row_with_its_own_line(tmp_path):
    """pandas refuses the whole file for one row with more fields than the header; it is now a bad
    row like any other (named by its line, skipped and counted with on_error skip), and the rows
    after it keep their line numbers. An unclosed quote makes the rest unreadable: always an error."""
    p = tmp_path / "d.csv"
    p.write_text('query,item.title,label\na,A,4\nb,B,3,extra\nc,"C, big",2\nd,D,x\n')
    with pytest.raises(DataError, match=r"d.csv:line 3: 4 fields where the header has 3"):
        read_examples(ReaderSpec(path=str(p)))
    res = read_examples(ReaderSpec(path=str(p), on_error="skip"))
    assert [e.query for e in res.examples] == ["a", "c"] and res.examples[1].item.title == "C, big"
    assert [s.split(":")[1].split(" field")[0] for s in res.skipped] == ["line 3", "line 5"]
    p.write_text('query,item.title,label\na,A,4\nb,"B,3\nc,C,2\n')
    with pytest.raises(DataError, match=r"d.csv:line 3: not valid CSV.*never closed"):
        read_examples(ReaderSpec(path=str(p), on_error="skip"))
    # a quoted field over two lines before the bad row: rows are named by the line they start on
    p.write_text('query,item.title,label\na,"A\nmulti",4\nb,B,3,extra\nc,"7"" TV" stand,2\n')
    res = read_examples(ReaderSpec(path=str(p), on_error="skip"))
    assert [e.item.title for e in res.examples] == ["A\nmulti", '7" TV stand'] and "d.csv:line 4: 4 fields" in res.skipped[0]


def test_a_first_row_one_field_too_long_shifts_no_column(tmp_path):
    """pandas took a first data row with one field more than the header as an index column and read
    every row shifted by one (id 'shoes', query 'Nike Air', title '4'): "2 examples OK". Every row is
    now read against the header; a trailing separator (empty extra fields) is no data."""
    p = tmp_path / "d.csv"
    p.write_text("id,query,title,label\nm1,shoes,Nike Air,4,3\nm2,boots,Puma Boot,3,2\n")
    with pytest.raises(DataError, match=r"d.csv:line 2: 5 fields where the header has 4"):
        read_examples(ReaderSpec(path=str(p)))
    p.write_text("id,query,title,label\nm1,shoes,Nike Air,4,\nm2,boots,Puma Boot,3, \n")  # a trailing comma each
    ex = read_examples(ReaderSpec(path=str(p))).examples
    assert [(e.id, e.query, e.item.title, e.label) for e in ex] == [("m1", "shoes", "Nike Air", 4),
                                                                     ("m2", "boots", "Puma Boot", 3)]


def test_csv_rows_are_named_by_the_line_they_start_on_after_blank_lines_and_multi_line_fields(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("id,query,title,label\nc1,shoes,Puma,4\n\n\nc2,shoes,Nike,9\n")
    with pytest.raises(DataError, match=r"d.csv:line 5: field 'label': unknown label '9'"):
        read_examples(ReaderSpec(path=str(p)))
    p.write_text('id,query,title,label\nc1,shoes,"Multi\nline\ntitle",4\nc2,shoes,Nike,9\n')
    with pytest.raises(DataError, match=r"d.csv:line 5: field 'label': unknown label '9'"):
        read_examples(ReaderSpec(path=str(p)))


def test_csv_headers_with_a_repeated_or_empty_name_and_a_field_over_128_kib(tmp_path):
    p = tmp_path / "d.csv"
    title = "x" * 200_000
    p.write_text(f"query,title,label,label,\nshoes,{title},4,3,\n")
    res = read_examples(ReaderSpec(path=str(p)))
    assert res.examples[0].item.title == title and res.examples[0].label == 4
    assert any("not read: label.1, Unnamed: 4" in n for n in res.notes), res.notes


def test_the_unread_keys_of_a_flat_jsonl_file_are_named_as_a_csv_files_columns_are(tmp_path):
    """A flat JSONL row's keys nothing reads (`color`; `brand`, which only `item.brand` names) were
    dropped without a word, where a CSV file's columns are named."""
    p = tmp_path / "k.jsonl"
    p.write_text('{"id":"k2","query":"red shoes","title":"Nike Air","brand":"nike","label":4,"color":"red"}\n'
                 '{"id":"k3","query":"boots","title":"Puma","label":3,"size":"9"}\n')
    res = read_examples(ReaderSpec(path=str(p)))
    assert len(res.examples) == 2 and res.examples[0].item.brand is None
    assert any("3 columns of" in n and "not read: brand, color, size" in n and "item.brand=brand" in n
               for n in res.notes), res.notes
    nested = tmp_path / "n.jsonl"
    nested.write_text('{"id":"n1","query":"q","item":{"title":"T"},"label":4}\n')
    assert read_examples(ReaderSpec(path=str(nested))).notes == []
