"""The synthetic generator follows the relevance guideline, is seeded and query-disjoint."""
import os
import random
import re

import pytest

from taosr.data.synth import (Constraint, ItemSpec, QuerySpec, SynthConfig, generate, gold_steps, guideline_label,
                              heldout, make_item_for_tier, make_query)
from taosr.data.taxonomy import BY_NAME, CATEGORIES, relation
from taosr.labels import QUERY_TYPES, STEP_KEYS, TIER_NAMES
from taosr.reasoning.format import conclusion


@pytest.fixture(scope="module")
def data():
    return generate(SynthConfig(n_train=600, n_val=100, n_test=150, seed=3))


def test_sizes_and_taxonomy():
    assert len(CATEGORIES) >= 30
    for c in CATEGORIES:
        for a in c.accessories:
            assert a in BY_NAME, f"{c.name} lists unknown accessory {a}"
    d = generate(SynthConfig(n_train=50, n_val=10, n_test=20))
    assert [len(d[s]) for s in ("train", "val", "test")] == [50, 10, 20]


def test_same_seed_same_data_other_seed_other_data():
    a = generate(SynthConfig(n_train=80, n_val=10, n_test=10, seed=7))
    b = generate(SynthConfig(n_train=80, n_val=10, n_test=10, seed=7))
    c = generate(SynthConfig(n_train=80, n_val=10, n_test=10, seed=8))
    assert [e.to_dict() for e in a["train"]] == [e.to_dict() for e in b["train"]]
    assert [e.to_dict() for e in a["train"]] != [e.to_dict() for e in c["train"]]


def test_splits_are_query_disjoint(data):
    q = {s: {e.query for e in data[s]} for s in data}
    assert not q["train"] & q["test"] and not q["train"] & q["val"] and not q["val"] & q["test"]


def test_every_query_type_and_tier_present(data):
    for split in ("train", "test"):
        assert {e.query_type for e in data[split]} == set(QUERY_TYPES)
        assert {e.label for e in data[split]} == {1, 2, 3, 4}


def test_annotations_agree_with_label_and_steps(data):
    for e in data["train"] + data["test"]:
        for k, v in (e.annotations or {}).items():
            assert conclusion(e.steps[k]) == v
        if e.annotations and "judgment" in e.annotations:
            assert e.annotations["judgment"] == TIER_NAMES[e.label]
    assert all(set(e.annotations) == set(STEP_KEYS) for e in data["test"] + data["val"])  # eval: all annotated


def test_train_annotation_share():
    """A share of training steps is annotated (the verifier's pool); the examples themselves do not change."""
    full = generate(SynthConfig(n_train=400, n_val=10, n_test=10, seed=3, train_annotation_share=1.0))
    part = generate(SynthConfig(n_train=400, n_val=10, n_test=10, seed=3, train_annotation_share=0.5))
    assert [(e.query, e.item.title, e.steps) for e in full["train"]] == [(e.query, e.item.title, e.steps) for e in part["train"]]
    assert all(set(e.annotations) == set(STEP_KEYS) for e in full["train"])
    covered = sum(len(e.annotations or {}) for e in part["train"]) / (5 * 400)
    assert 0.45 < covered < 0.55
    with pytest.raises(ValueError, match="train_annotation_share"):
        generate(SynthConfig(n_train=10, n_val=2, n_test=2, train_annotation_share=1.5))


def test_price_and_category_shares_change_the_item_fields_only():
    """Items without a price, or with a catalogue category, in every split; the rest of each example
    unchanged (neither is read by a gold step or a label), so a policy learns to read the items of
    catalogues with fewer or more fields than the default's."""
    from taosr.data.taxonomy import BY_NAME

    full = generate(SynthConfig(n_train=400, n_val=40, n_test=80, seed=3))
    part = generate(SynthConfig(n_train=400, n_val=40, n_test=80, seed=3, price_share=0.7, category_share=0.4))
    for split in ("train", "val", "test"):
        a, b = full[split], part[split]
        assert all(e.item.price is not None and e.item.category is None for e in a)
        assert [(e.query, e.item.title, e.item.attributes, e.label, e.steps, e.annotations) for e in a] == \
            [(e.query, e.item.title, e.item.attributes, e.label, e.steps, e.annotations) for e in b]
        assert all(y.item.price in (None, x.item.price) for x, y in zip(a, b))
        for e in b:
            if e.item.category is not None:  # "group > name", the name the gold item step gives
                group, name = e.item.category.split(" > ")
                assert BY_NAME[name].group == group and e.steps["item"].startswith(f"{name} ({group})")
    rows = [e for split in ("train", "val", "test") for e in part[split]]
    assert 0.25 < sum(e.item.price is None for e in rows) / len(rows) < 0.35
    assert 0.35 < sum(e.item.category is not None for e in rows) / len(rows) < 0.45
    assert any(e.item.price is None for e in part["test"]) and any(e.item.category for e in part["test"])
    assert all(e.item.price is None for e in generate(SynthConfig(n_train=40, n_val=4, n_test=4, price_share=0.0))["train"])
    for key in ("price_share", "category_share"):
        for bad in (1.5, -0.1, True):
            with pytest.raises(ValueError, match=rf"data.synth.{key} must be in \[0, 1\]"):
                generate(SynthConfig(n_train=10, n_val=2, n_test=2, **{key: bad}))


def test_descriptions_restate_the_title_and_change_nothing_else():
    """description_share: a share of items in every split gets catalogue copy that restates only what
    its title shows (so no label, gold step or annotation changes), of varied lengths; the default
    gives none, and the other fields are the same examples'."""
    import re

    from taosr.data.synth import _DESC_FACTS, _DESC_FILLER, _DESC_OPENERS

    base = dict(n_train=400, n_val=40, n_test=80, seed=5, price_share=0.8, category_share=0.3)
    plain, desc = generate(SynthConfig(**base)), generate(SynthConfig(**base, description_share=0.6))
    for split in ("train", "val", "test"):
        assert all(e.item.description is None for e in plain[split])
        a, b = plain[split], desc[split]
        # the other field shares draw the same items with and without descriptions
        assert [e.to_dict() for e in a] == [{**e.to_dict(), "item": {k: v for k, v in e.to_dict()["item"].items()
                                                                     if k != "description"}} for e in b]
    rows = [e for split in ("train", "val", "test") for e in desc[split]]
    shown = [e for e in rows if e.item.description]
    assert 0.5 < len(shown) / len(rows) < 0.7 and any(e.item.description for e in desc["test"])
    lengths = sorted(len(e.item.description) for e in shown)
    assert lengths[0] < 100 and lengths[-1] > 450  # short and long copy, as catalogues have
    facts = [(kind, re.escape(f).replace(r"\{v\}", "(.+)")) for kind, forms in _DESC_FACTS.items() for f in forms]
    worded = {"men": "men's", "women": "women's", "kids": "kids'"}
    for e in shown:
        cat = BY_NAME[re.match(r"(.+?) \(", e.steps["item"]).group(1)]
        first, *rest = [x if x.endswith(".") else x + "." for x in e.item.description.split(". ")]
        assert first in {o.format(title=e.item.title, brand=e.item.brand.title()) for o in _DESC_OPENERS}, first
        title = e.item.title.lower()
        for line in rest:
            if line in _DESC_FILLER:
                continue
            kind, m = next(((k, re.fullmatch(f, line)) for k, f in facts if re.fullmatch(f, line)), (None, None))
            assert m is not None, line  # every other line is a fact line: a value of its kind, shown in the title
            value = m.group(1)
            assert value in {"color": cat.colors, "material": cat.materials, "gender": cat.genders,
                             "feature": tuple(f.name for f in cat.features)}[kind], (line, cat.name)
            assert re.search(rf"(?<!\w){re.escape(worded.get(value, value))}(?!\w)", title), (line, title)
    # nested: a larger share describes a superset of the items, each with the same copy
    more = generate(SynthConfig(**base, description_share=0.9))
    for split in ("train", "val", "test"):
        for x, y in zip(desc[split], more[split]):
            assert x.item.description is None or x.item.description == y.item.description
    for bad in (1.5, -0.1, True):
        with pytest.raises(ValueError, match=r"data.synth.description_share must be in \[0, 1\]"):
            generate(SynthConfig(n_train=10, n_val=2, n_test=2, description_share=bad))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_description_copy_uses_no_word_a_rule_reads_and_no_fixture_sentence():
    """The copy around the facts (openers, filler, the fact lines' own words) names nothing a query
    or a relevance rule reads: no brand, category, group, colour, material, gender, feature, price
    tier, accessory or query-maker word. And no sentence of the your-data fixture's descriptions
    is a synthetic template, so a fixture measurement does not test templates the model trained on."""
    import csv
    import inspect

    import taosr.data.synth as synth
    from taosr.data.synth import _DESC_FACTS, _DESC_FILLER, _DESC_OPENERS
    from taosr.data.taxonomy import BRANDS, PRICE_TIERS

    read: set[str] = set(PRICE_TIERS) | _words(" ".join(BRANDS))
    for c in CATEGORIES:
        read |= _words(" ".join([c.name, c.group, c.short, *c.colors, *c.materials, *c.genders, *c.accessories]))
        for f in c.features:
            read |= _words(" ".join([f.name, *f.qa, *f.knowledge]))
    for group_brands in BRANDS.values():
        read |= _words(" ".join(str(b[0]) for b in group_brands))
    makers = (synth._category_query, synth._brand_query, synth._attribute_query, synth._negation_query,
              synth._alternative_query, synth._qa_query, synth._knowledge_query)
    read |= _words(" ".join(re.findall(r'"([^"{}]*)"', "\n".join(inspect.getsource(f) for f in makers))))
    assert {"without", "aluminum", "men", "waterproof", "budget"} <= read  # the scan sees what rules read
    plain = {"a", "at", "the", "to", "from", "for", "in", "with", "by", "and", "of", "it", "is", "or", "our", "your",
             "product", "feature"}  # words of the prompt's own lines or no content at all
    skeletons = [re.sub(r"\{\w+\}", " ", t) for t in (*_DESC_OPENERS, *_DESC_FILLER,
                                                       *(f for forms in _DESC_FACTS.values() for f in forms))]
    for t in skeletons:
        assert not (_words(t) & read) - plain, (t, (_words(t) & read) - plain)
    # the fixture's sentences, less their item's title and attribute values
    norm = lambda t: " ".join(sorted(_words(t)))  # noqa: E731
    ours = {norm(t) for t in skeletons} - {""}
    with open(os.path.join(os.path.dirname(__file__), "data", "your_data", "products.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    seen = 0
    for r in rows:
        values = [r["product_title"], *(kv.split(":", 1)[-1] for kv in r["attributes"].split(";") if kv)]
        for sentence in re.split(r"<br>|\.\s", r["product_description"]):
            for v in sorted(values, key=len, reverse=True):
                sentence = sentence.replace(v, " ")
            if norm(sentence):
                seen += 1
                assert norm(sentence) not in ours, sentence
    assert seen > len(rows)  # the fixture's descriptions were read


def _item(cat, brand, **kw):
    return ItemSpec(category=cat, brand=brand, **kw)


@pytest.mark.parametrize("query,item,tier", [
    # exact category, constraint holds -> Excellent
    (QuerySpec("nike running shoes", "brand", "running shoes", (Constraint("brand", "nike"),)), _item("running shoes", "nike"), 4),
    # exact category, wrong brand -> Mismatch
    (QuerySpec("nike running shoes", "brand", "running shoes", (Constraint("brand", "nike"),)), _item("running shoes", "asics"), 2),
    # negation: the excluded brand is present -> Mismatch; another brand -> Excellent
    (QuerySpec("running shoes not nike", "negation", "running shoes", (Constraint("not_brand", "nike"),)), _item("running shoes", "nike"), 2),
    (QuerySpec("running shoes not nike", "negation", "running shoes", (Constraint("not_brand", "nike"),)), _item("running shoes", "asics"), 4),
    # colour not stated on the item -> Related
    (QuerySpec("red running shoes", "attribute", "running shoes", (Constraint("color", "red"),)), _item("running shoes", "avia"), 3),
    # sibling category, nothing violated -> Related
    (QuerySpec("running shoes", "category", "running shoes"), _item("trail shoes", "avia"), 3),
    # accessory -> Mismatch; a different kind of product -> Irrelevant
    (QuerySpec("running shoes", "category", "running shoes"), _item("insoles", "kiwi"), 2),
    (QuerySpec("running shoes", "category", "running shoes"), _item("blender", "ninja"), 1),
    # affordable alternative: same premium brand or a pricier tier is not an alternative
    (QuerySpec("dyson vacuum dupe", "alternative", "vacuum cleaner", (Constraint("cheaper_than", "dyson"),)), _item("vacuum cleaner", "dyson"), 2),
    (QuerySpec("dyson vacuum dupe", "alternative", "vacuum cleaner", (Constraint("cheaper_than", "dyson"),)), _item("vacuum cleaner", "eureka"), 4),
    # Q&A / knowledge: the asked feature present, absent (unstated) or another one
    (QuerySpec("what super glue can hold at high temperature", "qa", "super glue", (Constraint("feature", "heat resistant"),)), _item("super glue", "loctite", feature="heat resistant"), 4),
    (QuerySpec("what super glue can hold at high temperature", "qa", "super glue", (Constraint("feature", "heat resistant"),)), _item("super glue", "loctite"), 3),
    (QuerySpec("what super glue can hold at high temperature", "qa", "super glue", (Constraint("feature", "heat resistant"),)), _item("super glue", "loctite", feature="waterproof"), 2),
])
def test_guideline_rules(query, item, tier):
    assert guideline_label(query, item) == tier


def test_generated_labels_follow_rules():
    rng = random.Random(0)
    for qt in QUERY_TYPES:
        for _ in range(30):
            q = make_query(rng, qt)
            for tier in (1, 2, 3, 4):
                it = make_item_for_tier(rng, q, tier)
                if it is not None:
                    assert guideline_label(q, it) == tier
                    steps, concl = gold_steps(q, it)
                    assert concl["category"] == relation(q.category, it.category)


def test_unknown_weights_rejected():
    with pytest.raises(ValueError, match="unknown query type"):
        generate(SynthConfig(n_train=5, n_val=0, n_test=0, query_type_weights={"bogus": 1.0}))


def test_heldout_queries_occur_in_no_default_split():
    base = SynthConfig(n_train=300, n_val=40, n_test=60, train_annotation_share=0.5)
    rows = heldout(250, seed=0, base=base)  # seed 0 is the base's: skipped, drawn from 1, 2, ...
    seen = {ex.query for split in generate(base).values() for ex in split}
    assert len(rows) == 250 and len({ex.id for ex in rows}) == 250
    assert not {ex.query for ex in rows} & seen
    assert all(ex.annotations and set(ex.annotations) == set(STEP_KEYS) for ex in rows)  # evaluation: fully annotated
    assert {ex.query_type for ex in rows} == set(QUERY_TYPES)
    assert [e.to_dict() for e in rows] == [e.to_dict() for e in heldout(250, seed=0, base=base)]
    with pytest.raises(ValueError, match="at least 1"):
        heldout(0)


def _digest(out: dict) -> str:
    import hashlib
    import json

    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        for ex in out[split]:
            h.update((split + json.dumps(ex.to_dict(), sort_keys=True, ensure_ascii=False) + "\n").encode())
    return h.hexdigest()


def test_default_data_is_unchanged():
    """The embedded default (and so every README figure) is byte-for-byte what it was before the
    query-type registry, the dead-code removal and the annotation regimes (hashes taken before)."""
    assert _digest(generate(SynthConfig())) == "215087e1aa415bf3a1d78faa873c701e4eccd81867f09c9b6e9bc56c140983cd"
    assert _digest(generate(SynthConfig(seed=7, n_train=300, n_val=30, n_test=30, train_annotation_share=0.3))) == \
        "56f4403d702b675e4d608b3bf0370585fe6a35d5f80b514ffd4b81fe6a75532c"


def test_query_types_are_a_registry():
    from taosr.data.synth import QUERY_MAKERS
    from taosr.errors import ConfigError

    assert set(QUERY_MAKERS.names()) == set(QUERY_TYPES)
    with pytest.raises(ValueError, match="already registered"):
        QUERY_MAKERS.register("qa", lambda rng: None)
    with pytest.raises(ConfigError, match="data.synth.query_type_weights: 'bogus' is unknown"):
        make_query(random.Random(0), "bogus")
    for qt in QUERY_TYPES:
        assert make_query(random.Random(1), qt).query_type == qt


def test_bad_settings_refused_naming_the_key():
    from taosr.errors import ConfigError

    for cfg, key in ((SynthConfig(n_train=-5), "data.synth.n_train"), (SynthConfig(items_per_query=0), "items_per_query"),
                     (SynthConfig(tier_weights={1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}), "tier_weights"),
                     (SynthConfig(query_type_weights={"qa": float("nan")}), "query_type_weights.qa"),
                     (SynthConfig(annotation_regime="hidden"), "annotation_regime"),
                     (SynthConfig(n_train=0, n_val=0, n_test=0), "all 0")):
        with pytest.raises(ConfigError, match=key):
            generate(cfg)


def test_heldout_annotation_regime():
    """Heldout regime: a query-disjoint part of the training split keeps full gold steps and
    annotations (SFT, GRM, verifier); the rest has neither (RL prompts only). Nothing else changes."""
    kw = dict(n_train=600, n_val=40, n_test=40, seed=3, train_annotation_share=0.5)
    shared, held = generate(SynthConfig(**kw)), generate(SynthConfig(**kw, annotation_regime="heldout"))
    assert [(e.query, e.item.title, e.label) for e in shared["train"]] == [(e.query, e.item.title, e.label) for e in held["train"]]
    assert [e.to_dict() for e in shared["test"]] == [e.to_dict() for e in held["test"]]
    annotated = [e for e in held["train"] if e.steps]
    hidden = [e for e in held["train"] if not e.steps]
    assert all(set(e.annotations) == set(STEP_KEYS) and set(e.steps) == set(STEP_KEYS) for e in annotated)
    assert all(e.annotations is None for e in hidden)
    assert 0.4 < len(annotated) / 600 < 0.6
    assert not {e.query for e in annotated} & {e.query for e in hidden}  # split by query
    none = generate(SynthConfig(**{**kw, "train_annotation_share": 0.0}, annotation_regime="heldout"))
    assert not any(e.steps or e.annotations for e in none["train"])
    full = generate(SynthConfig(**{**kw, "train_annotation_share": 1.0}, annotation_regime="heldout"))
    assert all(e.steps and len(e.annotations) == 5 for e in full["train"])
