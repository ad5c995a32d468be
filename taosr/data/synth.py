"""Deterministic synthetic e-commerce relevance data: the embedded default.

For each generated query (of a sampled query type) a few products are built, each aimed at a
sampled target tier; the label is then computed by :func:`guideline_label` from the relevance
guideline (README, DESIGN §1) and an item is kept only if the rules give the target. Every example
carries the gold text of the five reasoning steps and their gold conclusions (``annotations``),
which play the role of the paper's human-annotated offline verification.

Splits are query-disjoint: a query's split is a function of its text (md5), so the same query
text never lands in two splits.

Query types are a :class:`~taosr.registry.Registry` (``QUERY_MAKERS``): each maker draws one query
of its type; ``query_type_weights`` names them.

Annotation regimes (``annotation_regime``) say which gold reasoning of the training split exists:

- ``shared`` (default): every training example keeps its gold steps (SFT and the GRM learn from
  all of them); each step's annotation is kept with probability ``train_annotation_share``, so the
  verifier judges those steps and the GRM the rest -- of examples whose steps it was trained on.
- ``heldout``: the training queries are split (by a hash of the query text, so all items of one
  query fall on one side) into an annotated share (``train_annotation_share``: full gold steps and
  annotations, used by SFT, the GRM and as RL prompts) and an unannotated rest (no gold steps, no
  annotations: RL prompts only). The steps the verifier cannot see are then absent from SFT and
  GRM training too, so the GRM's judgement of them is tested, not recalled.

Item fields: every item has a title, a brand and a price, and some of its stated attributes as
fields (``attributes_field_share``); ``price_share``, ``category_share`` and ``description_share`` set
how many show a price, a catalogue category and a free-text description, as real catalogues vary
(none changes a label, a gold step or an annotation: the defaults, every price, no category and no
description, are the quick start's data).

Annotations are bare conclusions (``exact``) unless ``annotate_evidence`` is set: then the decision
steps are annotated with their whole gold text, evidence first, and the verifier checks both.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field, replace

from taosr.errors import ConfigError
from taosr.registry import Registry
from taosr.schema import Example, Item
from taosr.data.taxonomy import BRANDS, BY_NAME, CATEGORIES, PRICE_TIERS, TIER_MULTIPLIER, Category, brand_tier, relation
from taosr.labels import TIER_NAMES

# Bump when the generator's output changes: cached synthetic splits are keyed by it.
SYNTH_VERSION = 4
DECISION_STEPS = ("category", "attribute", "judgment")  # steps that state evidence, then "=>"

DEFAULT_TYPE_WEIGHTS = {"category": 0.12, "brand": 0.14, "attribute": 0.14, "negation": 0.15,
                        "alternative": 0.15, "qa": 0.15, "knowledge": 0.15}
DEFAULT_TIER_WEIGHTS = {4: 0.25, 3: 0.25, 2: 0.25, 1: 0.25}
ATTR_KINDS = ("color", "material", "gender")
ANNOTATION_REGIMES = ("shared", "heldout")


class SynthError(ConfigError, ValueError):
    """A bad synthetic-data setting (a ConfigError for the CLI; a ValueError for older callers)."""


@dataclass
class SynthConfig:
    """Sizes, seed and mix of the synthetic data (all used by ``taosr data synth`` and the
    DataModule's embedded default)."""
    n_train: int = 3000
    n_val: int = 200
    n_test: int = 400
    seed: int = 0
    items_per_query: int = 3
    query_type_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    tier_weights: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_TIER_WEIGHTS))
    attributes_field_share: float = 0.5   # share of stated attributes also given as structured fields
    # Share of training steps with a gold annotation (each step of each training example kept with
    # this probability), like a partly human-annotated pool: the offline verifier judges those, the
    # GRM the rest. Validation and test keep every annotation (step accuracy is measured on them).
    # In the "heldout" regime: the share of training queries that are annotated (module docstring).
    train_annotation_share: float = 0.5
    annotation_regime: str = "shared"  # shared | heldout (module docstring)
    # Annotate the decision steps (category, attribute, judgment) with their whole gold text,
    # evidence first (``a vs b; x vs y => exact``) instead of the bare conclusion: the offline
    # verifier then checks a step's evidence too (taosr.reasoning.verifier), in every split.
    annotate_evidence: bool = False
    # Share of items, in every split, shown with their price; the rest carry none, as in the many
    # catalogues without one. No gold step or label reads the price, so only the prompts change: a
    # policy trained at 1.0 (every item priced) learns "Price:" as part of the prompt and writes
    # malformed reasoning for an item without it (README: Catalogue fields).
    price_share: float = 1.0
    # Share of items, in every split, shown with their category as a catalogue path ("footwear >
    # running shoes"); the gold item step names it anyway, so only the prompts change.
    category_share: float = 0.0
    # Share of items, in every split, shown with a free-text description: catalogue copy of 1 to 17
    # sentences (about 20 to 650 characters, 280 on average) that restates what the title shows
    # (brand, color, material, gender, feature) among shipping, returns and service lines; it never
    # states a fact the title leaves out, so labels and gold steps stay as they are. The quick
    # start's export, never shown one, broke down on the your-data fixture's descriptions (README:
    # "Your own data, end to end").
    description_share: float = 0.0


# The item-field shares above, each with what it shows (flag help): every command that makes
# synthetic data takes them from here (flags, checks, the quick start, the cache key).
FIELD_SHARES = {"price_share": "a price, the rest with none", "category_share": "a category path",
                "description_share": "a description"}


@dataclass(frozen=True)
class Constraint:
    kind: str   # brand, not_brand, color, material, not_material, gender, cheaper_than, feature
    value: str

    def render(self) -> str:
        return {
            "brand": f"brand {self.value}", "not_brand": f"brand not {self.value}",
            "color": f"color {self.value}", "material": f"material {self.value}",
            "not_material": f"material not {self.value}", "gender": f"gender {self.value}",
            "cheaper_than": f"cheaper than {self.value}", "feature": f"feature {self.value}",
        }[self.kind]


@dataclass
class QuerySpec:
    text: str
    query_type: str
    category: str
    constraints: tuple[Constraint, ...] = ()


@dataclass
class ItemSpec:
    category: str
    brand: str
    color: str | None = None
    material: str | None = None
    gender: str | None = None
    feature: str | None = None
    price: float = 0.0
    title: str = ""

    @property
    def tier(self) -> str:
        return brand_tier(BY_NAME[self.category].group, self.brand)


# ----------------------------------------------------------------------------- guideline rules
_TIER_RANK = {t: i for i, t in enumerate(PRICE_TIERS)}


def constraint_status(c: Constraint, item: ItemSpec) -> str:
    """satisfied / unstated / violated for one query constraint on one item."""
    if c.kind == "brand":
        return "satisfied" if item.brand == c.value else "violated"
    if c.kind == "not_brand":
        return "violated" if item.brand == c.value else "satisfied"
    if c.kind == "cheaper_than":
        if item.brand == c.value:
            return "violated"
        ref = _brand_tier_anywhere(c.value)
        return "satisfied" if _TIER_RANK[item.tier] < _TIER_RANK[ref] else "violated"
    if c.kind == "not_material":
        if item.material is None:
            return "unstated"
        return "violated" if item.material == c.value else "satisfied"
    have = getattr(item, c.kind)
    if have is None:
        return "unstated"
    return "satisfied" if have == c.value else "violated"


def _brand_tier_anywhere(brand: str) -> str:
    for group, brands in BRANDS.items():
        for b, t in brands:
            if b == brand:
                return t
    raise KeyError(brand)


def attribute_status(q: QuerySpec, item: ItemSpec) -> str:
    if relation(q.category, item.category) == "different":
        return "n/a"
    st = [constraint_status(c, item) for c in q.constraints]
    if "violated" in st:
        return "violated"
    if "unstated" in st:
        return "unstated"
    return "satisfied"


def guideline_label(q: QuerySpec, item: ItemSpec) -> int:
    """The relevance guideline as rules (README "Relevance guideline")."""
    rel, att = relation(q.category, item.category), attribute_status(q, item)
    if rel == "different":
        return 1
    if rel == "accessory" or att == "violated":
        return 2
    if rel == "exact" and att == "satisfied":
        return 4
    return 3  # exact with an unstated constraint, or a sibling that violates nothing


# ----------------------------------------------------------------------------- queries
def _pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))]


def _cats_with(pred) -> list[Category]:
    return [c for c in CATEGORIES if pred(c)]


QUERY_MAKERS: Registry = Registry("synthetic query type", "data.synth.query_type_weights")


@QUERY_MAKERS.register("category")
def _category_query(rng: random.Random) -> QuerySpec:
    c = _pick(rng, CATEGORIES)
    t = _pick(rng, ("{c}", "buy {c}", "best {c}", "{c} sale", "{c} online"))
    return QuerySpec(t.format(c=c.name), "category", c.name)


@QUERY_MAKERS.register("brand")
def _brand_query(rng: random.Random) -> QuerySpec:
    c = _pick(rng, CATEGORIES)
    b = _pick(rng, BRANDS[c.group])[0]
    t = _pick(rng, ("{b} {c}", "{c} by {b}", "{b} {c} new"))
    return QuerySpec(t.format(b=b, c=c.name), "brand", c.name, (Constraint("brand", b),))


@QUERY_MAKERS.register("attribute")
def _attribute_query(rng: random.Random) -> QuerySpec:
    c = _pick(rng, _cats_with(lambda c: c.colors or c.materials or c.genders))
    kinds = [k for k in ATTR_KINDS if getattr(c, k + "s")]
    chosen = rng.sample(kinds, k=min(len(kinds), 1 + (rng.random() < 0.35)))
    cons = tuple(Constraint(k, _pick(rng, getattr(c, k + "s"))) for k in ATTR_KINDS if k in chosen)
    words = {x.kind: x.value for x in cons}
    pre = " ".join(words[k] for k in ("gender", "color", "material") if k in words and k != "gender")
    text = f"{pre} {c.name}".strip()
    if "gender" in words:
        text = _pick(rng, ("{t} for {g}", "{g} {t}")).format(t=text, g=words["gender"])
    return QuerySpec(text, "attribute", c.name, cons)


@QUERY_MAKERS.register("negation")
def _negation_query(rng: random.Random) -> QuerySpec:
    c = _pick(rng, CATEGORIES)
    if len(c.materials) >= 2 and rng.random() < 0.4:
        m = _pick(rng, c.materials)
        t = _pick(rng, ("{c} not {m}", "{c} without {m}", "non {m} {c}"))
        return QuerySpec(t.format(c=c.name, m=m), "negation", c.name, (Constraint("not_material", m),))
    b = _pick(rng, BRANDS[c.group])[0]
    t = _pick(rng, ("{c} not {b}", "{c} no {b}", "{c} except {b}", "non {b} {c}"))
    return QuerySpec(t.format(c=c.name, b=b), "negation", c.name, (Constraint("not_brand", b),))


@QUERY_MAKERS.register("alternative")
def _alternative_query(rng: random.Random) -> QuerySpec:
    c = _pick(rng, _cats_with(lambda c: any(t != "budget" for _, t in BRANDS[c.group])
                               and any(t == "budget" for _, t in BRANDS[c.group])))
    b = _pick(rng, [b for b, t in BRANDS[c.group] if t != "budget"])
    t = _pick(rng, ("cheaper alternative to {b} {c}", "{b} {c} dupe", "affordable {c} like {b}",
                    "budget {c} similar to {b}"))
    return QuerySpec(t.format(b=b, c=c.name), "alternative", c.name, (Constraint("cheaper_than", b),))


@QUERY_MAKERS.register("qa")
def _qa_query(rng: random.Random) -> QuerySpec:
    c = _pick(rng, _cats_with(lambda c: c.features))
    f = _pick(rng, c.features)
    t = _pick(rng, ("what {s} can {q}", "which {s} will {q}", "{s} that can {q}", "does any {s} {q}"))
    return QuerySpec(t.format(s=c.short, q=_pick(rng, f.qa)), "qa", c.name, (Constraint("feature", f.name),))


@QUERY_MAKERS.register("knowledge")
def _knowledge_query(rng: random.Random) -> QuerySpec:
    c = _pick(rng, _cats_with(lambda c: c.features))
    f = _pick(rng, c.features)
    t = _pick(rng, ("something for {k}", "what to buy for {k}", "best product for {k}", "help with {k}",
                    "{k} solution"))
    return QuerySpec(t.format(k=_pick(rng, f.knowledge)), "knowledge", c.name, (Constraint("feature", f.name),))


def make_query(rng: random.Random, qtype: str) -> QuerySpec:
    """One query of type ``qtype`` (a name in :data:`QUERY_MAKERS`)."""
    return QUERY_MAKERS.get(qtype)(rng)


# ----------------------------------------------------------------------------- items
_MODEL_SYL = ("ultra", "pro", "air", "max", "flex", "core", "nova", "zen", "aero", "edge")


def random_item(rng: random.Random, cat: Category) -> ItemSpec:
    brand = _pick(rng, BRANDS[cat.group])[0]
    return ItemSpec(
        category=cat.name, brand=brand,
        color=_pick(rng, cat.colors) if cat.colors and rng.random() < 0.8 else None,
        material=_pick(rng, cat.materials) if cat.materials and rng.random() < 0.7 else None,
        gender=_pick(rng, cat.genders) if cat.genders and rng.random() < 0.8 else None,
        feature=_pick(rng, cat.features).name if cat.features and rng.random() < 0.5 else None,
    )


def _force(rng: random.Random, item: ItemSpec, c: Constraint, want: str) -> bool:
    """Change ``item`` so that constraint ``c`` has status ``want``; False if impossible."""
    cat = BY_NAME[item.category]
    brands = [b for b, _ in BRANDS[cat.group]]
    if c.kind in ("brand", "not_brand"):
        hit = (want == "satisfied") == (c.kind == "brand")
        if want == "unstated":
            return False
        pool = [c.value] if hit else [b for b in brands if b != c.value]
        pool = [b for b in pool if b in brands]
    elif c.kind == "cheaper_than":
        if want == "unstated":
            return False
        ref = _TIER_RANK[_brand_tier_anywhere(c.value)]
        pool = [b for b, t in BRANDS[cat.group] if (_TIER_RANK[t] < ref and b != c.value) == (want == "satisfied")]
    else:
        attr = "material" if c.kind == "not_material" else c.kind
        values = [f.name for f in cat.features] if attr == "feature" else list(getattr(cat, attr + "s"))
        if want == "unstated":
            setattr(item, attr, None)
            return True
        hit = (want == "satisfied") == (c.kind != "not_material")
        pool = [v for v in values if (v == c.value) == hit]
        if not pool:
            return False
        setattr(item, attr, _pick(rng, pool))
        return True
    if not pool:
        return False
    item.brand = _pick(rng, pool)
    return True


def _item_category(rng: random.Random, q: QuerySpec, rel: str) -> Category | None:
    pool = [c for c in CATEGORIES if relation(q.category, c.name) == rel]
    return _pick(rng, pool) if pool else None


def make_item_for_tier(rng: random.Random, q: QuerySpec, tier: int) -> ItemSpec | None:
    """Try to build an item whose guideline label is ``tier``; None if this query cannot have one."""
    cons = list(q.constraints)
    for _ in range(8):
        if tier == 1:
            cat = _item_category(rng, q, "different")
            item = random_item(rng, cat)
        elif tier == 2:
            options = ["accessory"] * 1 + (["violate"] * 2 if cons else [])
            how = _pick(rng, options)
            cat = _item_category(rng, q, "accessory") if how == "accessory" else BY_NAME[q.category]
            if how == "violate" and rng.random() < 0.25:
                cat = _item_category(rng, q, "sibling") or cat
            if cat is None:
                continue
            item = random_item(rng, cat)
            if how == "violate":
                victim = _pick(rng, cons)
                if not _force(rng, item, victim, "violated"):
                    continue
        elif tier == 3:
            unstatable = [c for c in cons if c.kind not in ("brand", "not_brand", "cheaper_than")]
            how = _pick(rng, ["sibling"] + (["unstated"] if unstatable else []))
            cat = _item_category(rng, q, "sibling") if how == "sibling" else BY_NAME[q.category]
            if cat is None:
                continue
            item = random_item(rng, cat)
            if how == "unstated":
                _force(rng, item, _pick(rng, unstatable), "unstated")
            for c in cons:
                if constraint_status(c, item) == "violated":
                    if not (_force(rng, item, c, "satisfied") or _force(rng, item, c, "unstated")):
                        break
        else:
            item = random_item(rng, BY_NAME[q.category])
            for c in cons:
                _force(rng, item, c, "satisfied")
        if guideline_label(q, item) == tier:
            return item
    return None


def _title(rng: random.Random, item: ItemSpec) -> str:
    model = _pick(rng, _MODEL_SYL).title() + " " + str(rng.randrange(2, 900))
    parts = [item.brand.title(), model]
    if item.gender:
        parts.append({"men": "Men's", "women": "Women's", "kids": "Kids'"}[item.gender])
    if item.feature:
        parts.append(item.feature.title())
    if item.material:
        parts.append(item.material.title())
    parts.append(item.category.title())
    title = " ".join(parts)
    if item.color:
        title += _pick(rng, (", {}", " - {}", " ({})")).format(item.color.title())
    return title


def _price(rng: random.Random, item: ItemSpec) -> float:
    base = BY_NAME[item.category].base_price * TIER_MULTIPLIER[item.tier] * rng.uniform(0.85, 1.15)
    return round(max(1.0, round(base)) - 0.01, 2)


# Catalogue copy for descriptions: openers name the product, fact lines restate a field the title
# already shows, filler lines use no word a query or a relevance rule reads (tests/test_synth.py
# checks both against the taxonomy). None is a sentence of the your-data fixture's descriptions
# (tests/data/your_data/make_fixture.py), so a fixture measurement is not a test of seen templates.
_DESC_OPENERS = ("Meet the {title}.", "{title}.", "Introducing the {title} from {brand}.", "The {title}, from {brand}.",
                 "Shop the {title}.")
_DESC_FACTS = {
    "color": ("Finished in {v}.", "Comes in {v}.", "Shown in {v}."),
    "material": ("Made of {v}.", "Crafted from {v}.", "Built with {v}."),
    "gender": ("Designed for {v}.", "Styled for {v}."),
    "feature": ("Key feature: {v}.", "Standout feature: {v}."),
}
_DESC_FILLER = ("Returns accepted within 30 days.", "Usually ships within two business days.", "Packaging may vary.",
                "Imported.", "Customers rate it highly.", "Makes a thoughtful gift.", "Gift wrapping available at checkout.",
                "Actual product may look slightly different from the photos.",
                "Satisfaction guaranteed or your money back.", "Straightforward setup.",
                "Includes a one-year guarantee.", "Read the included guide before first use.",
                "Quality checked before it leaves our warehouse.", "Track your parcel from dispatch to delivery.",
                "Sold by a verified seller.", "Product photos are for illustration.",
                "Our team answers questions seven days a week.")


def _description(rng: random.Random, item: ItemSpec, title: str) -> str:
    """Catalogue copy for one item: an opener, the title's facts in a shuffled order (each with
    probability 0.7), then 0-12 filler lines mixed in."""
    lines = [_pick(rng, _DESC_OPENERS).format(title=title, brand=item.brand.title())]
    facts = [_pick(rng, forms).format(v=getattr(item, key)) for key, forms in _DESC_FACTS.items()
             if getattr(item, key) and rng.random() < 0.7]
    body = facts + rng.sample(_DESC_FILLER, rng.randrange(0, 13))
    rng.shuffle(body)
    return " ".join(lines + body)


# ----------------------------------------------------------------------------- gold steps
def gold_steps(q: QuerySpec, item: ItemSpec) -> tuple[dict[str, str], dict[str, str]]:
    """(step texts, step conclusions) for one (query, item) pair."""
    rel, att, label = relation(q.category, item.category), attribute_status(q, item), guideline_label(q, item)
    def fact(c: Constraint) -> str:
        return f"{c.render()} ({_brand_tier_anywhere(c.value)})" if c.kind == "cheaper_than" else c.render()

    q_concl = "; ".join([f"{q.category} ({BY_NAME[q.category].group})"] + [fact(c) for c in q.constraints])
    facts: list[str] = []
    for c in q.constraints:
        if c.kind in ("brand", "not_brand"):
            facts.append(f"brand {item.brand}")
        elif c.kind == "cheaper_than":
            facts += [f"brand {item.brand}", f"tier {item.tier}"]
        else:
            attr = "material" if c.kind == "not_material" else c.kind
            facts.append(f"{attr} {getattr(item, attr) or ('none' if attr == 'feature' else 'unknown')}")
    i_concl = "; ".join([f"{item.category} ({BY_NAME[item.category].group})"] + list(dict.fromkeys(facts)))
    concl = {"query": q_concl, "item": i_concl, "category": rel, "attribute": att, "judgment": TIER_NAMES[label]}
    # Each decision step writes its evidence first ("A vs B => conclusion"), so the decision
    # follows from adjacent text rather than from facts many tokens back.
    q_grp, i_grp = BY_NAME[q.category].group, BY_NAME[item.category].group
    if rel == "different":
        att_evidence = "different kind of product"
    elif q.constraints:
        pairs = []
        for c in q.constraints:
            have = {"brand": f"brand {item.brand}", "not_brand": f"brand {item.brand}",
                    "cheaper_than": f"tier {item.tier}"}.get(c.kind)
            if have is None:
                attr = "material" if c.kind == "not_material" else c.kind
                have = f"{attr} {getattr(item, attr) or ('none' if attr == 'feature' else 'unknown')}"
            pairs.append(f"{fact(c)} vs {have}")
        att_evidence = "; ".join(pairs)
    else:
        att_evidence = "no constraints"
    steps = {
        "query": concl["query"],
        "item": concl["item"],
        "category": f"{q.category} vs {item.category}; {q_grp} vs {i_grp} => {rel}",
        "attribute": f"{att_evidence} => {att}",
        "judgment": f"{rel} + {att} => {concl['judgment']}",
    }
    return steps, concl


# ----------------------------------------------------------------------------- driver
def _split_of(text: str, weights: list[tuple[str, int]]) -> str:
    h = stable_unit(text)
    total, acc = sum(w for _, w in weights), 0.0
    for name, w in weights:
        acc += w / total
        if h <= acc:
            return name
    return weights[-1][0]


def _weighted(rng: random.Random, weights: dict) -> object:
    keys = sorted(weights, key=str)
    return rng.choices(keys, weights=[float(weights[k]) for k in keys])[0]


def to_example(q: QuerySpec, item: ItemSpec, rng: random.Random, attr_share: float, ex_id: str) -> Example:
    steps, concl = gold_steps(q, item)
    attrs = {k: getattr(item, k) for k in ("color", "material", "gender")
             if getattr(item, k) and rng.random() < attr_share}
    return Example(
        query=q.text, item=Item(title=item.title, brand=item.brand, attributes=attrs, price=item.price),
        label=guideline_label(q, item), query_type=q.query_type, id=ex_id, steps=steps, annotations=concl,
    )


def _check_weights(weights: dict, key: str) -> None:
    for k, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise SynthError(f"{key}.{k}: a weight must be a finite non-negative number, got {w!r}")
    if not weights or sum(weights.values()) <= 0:
        raise SynthError(f"{key}: the weights must not all be zero")


def check_config(cfg: SynthConfig) -> dict[int, float]:
    """Refuse bad settings before any work, naming the ``data.synth`` key; the tier weights by int tier."""
    for name in ("n_train", "n_val", "n_test"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SynthError(f"data.synth.{name}: must be a whole number >= 0, got {v!r}")
    if cfg.n_train + cfg.n_val + cfg.n_test < 1:
        raise SynthError("data.synth: n_train, n_val and n_test are all 0")
    if cfg.items_per_query < 1:
        raise SynthError(f"data.synth.items_per_query: must be at least 1, got {cfg.items_per_query}")
    for k in cfg.query_type_weights:
        if k not in QUERY_MAKERS:
            raise SynthError(f"data.synth.query_type_weights: unknown query type {k!r}; "
                             f"expected one of {', '.join(QUERY_MAKERS.names())}")
    _check_weights(cfg.query_type_weights, "data.synth.query_type_weights")
    try:
        tier_w = {int(k): v for k, v in cfg.tier_weights.items()}
    except (TypeError, ValueError):
        raise SynthError(f"data.synth.tier_weights: keys must be tiers 1-4, got {sorted(map(str, cfg.tier_weights))}") from None
    if set(tier_w) - {1, 2, 3, 4}:
        raise SynthError(f"data.synth.tier_weights: keys must be tiers 1-4, got {sorted(tier_w)}")
    _check_weights(tier_w, "data.synth.tier_weights")
    share = cfg.train_annotation_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise SynthError(f"data.synth.train_annotation_share must be in [0, 1], got {share}")
    for key in FIELD_SHARES:
        share = getattr(cfg, key)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise SynthError(f"data.synth.{key} must be in [0, 1], got {share!r}")
    if cfg.annotation_regime not in ANNOTATION_REGIMES:
        raise SynthError(f"data.synth.annotation_regime: {cfg.annotation_regime!r} is unknown; "
                         f"expected one of {', '.join(ANNOTATION_REGIMES)}")
    return tier_w


def annotated_query(query: str, cfg: SynthConfig) -> bool:
    """Heldout regime: whether a training query is on the annotated side (a hash of its text and
    the seed, so all items of a query fall on one side and the examples themselves do not change)."""
    return stable_unit(f"annotated-{cfg.seed}:{query}") < cfg.train_annotation_share


def stable_unit(text: str) -> float:
    """A number in [0, 1] fixed by ``text`` (md5, so the same in every process and Python version):
    for splits by a hash of the query text."""
    return int(hashlib.md5(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def generate(cfg: SynthConfig | None = None) -> dict[str, list[Example]]:
    """Generate ``{"train": [...], "val": [...], "test": [...]}`` deterministically from ``cfg.seed``."""
    cfg = cfg or SynthConfig()
    tier_w = check_config(cfg)
    rng = random.Random(cfg.seed)
    want = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    split_w = [(k, v) for k, v in want.items() if v > 0]
    out: dict[str, list[Example]] = {k: [] for k in want}
    specs: dict[str, list[ItemSpec]] = {k: [] for k in want}  # each example's item, for the field shares
    guard = 0
    while any(len(out[k]) < want[k] for k in want):
        guard += 1
        if guard > 200 * (sum(want.values()) + 10):
            raise SynthError("data.synth: could not fill the splits; check the query type and tier weights")
        q = make_query(rng, _weighted(rng, cfg.query_type_weights))
        split = _split_of(q.text, split_w)
        tiers_done: set[int] = set()
        for _ in range(cfg.items_per_query):
            if len(out[split]) >= want[split]:
                break
            tier = int(_weighted(rng, tier_w))
            if tier in tiers_done and len(tiers_done) < 4 and rng.random() < 0.7:
                continue
            item = make_item_for_tier(rng, q, tier)
            if item is None:
                continue
            item.title = _title(rng, item)
            item.price = _price(rng, item)
            tiers_done.add(tier)
            out[split].append(to_example(q, item, rng, cfg.attributes_field_share, f"{split}-{len(out[split])}"))
            specs[split].append(item)
    if cfg.price_share < 1.0:
        priced = random.Random(f"price-{cfg.seed}")  # own stream: the examples do not change
        for ex in (e for split in ("train", "val", "test") for e in out[split]):
            if priced.random() >= cfg.price_share:
                ex.item.price = None
    if cfg.category_share > 0.0:
        shown = random.Random(f"category-{cfg.seed}")  # likewise
        for split in ("train", "val", "test"):
            for ex, spec in zip(out[split], specs[split]):
                if shown.random() < cfg.category_share:
                    ex.item.category = f"{BY_NAME[spec.category].group} > {spec.category}"
    if cfg.description_share > 0.0:
        described = random.Random(f"description-{cfg.seed}")  # likewise; one draw an item, so a larger
        for split in ("train", "val", "test"):                # share describes a superset, each item's
            for ex, spec in zip(out[split], specs[split]):    # copy from its own stream
                if described.random() < cfg.description_share:
                    ex.item.description = _description(random.Random(f"description-{cfg.seed}-{ex.id}"), spec,
                                                       ex.item.title)
    if cfg.annotate_evidence:
        for ex in (e for rows in out.values() for e in rows):
            ex.annotations = {k: (ex.steps[k] if k in DECISION_STEPS else v) for k, v in ex.annotations.items()}
    if cfg.annotation_regime == "heldout":
        for ex in out["train"]:
            if not annotated_query(ex.query, cfg):
                ex.steps, ex.annotations = None, None
    elif cfg.train_annotation_share < 1.0:
        keep = random.Random(f"annotations-{cfg.seed}")  # own stream: the examples do not change
        for ex in out["train"]:
            ex.annotations = {k: v for k, v in (ex.annotations or {}).items()
                              if keep.random() < cfg.train_annotation_share} or None
    return out


def heldout(n: int, seed: int = 1, base: SynthConfig | None = None) -> list[Example]:
    """``n`` extra fully-annotated examples whose queries occur in no split of ``base`` (the
    default data): a larger evaluation set than the default test split, for comparisons whose
    differences are below that split's noise. Drawn from synthetic seeds ``seed``, ``seed + 1``, ...
    (each must differ from ``base.seed``); the query-type mix leans to the types with the most
    distinct queries (negation, alternative, brand), so report per-type figures next to overall."""
    base = base or SynthConfig()
    if n < 1:
        raise SynthError(f"heldout: n must be at least 1, got {n}")
    seen = {ex.query for rows in generate(base).values() for ex in rows}
    out: list[Example] = []
    s = seed
    while len(out) < n:
        if s == base.seed:
            s += 1
            continue
        if s > seed + 50:
            raise SynthError(f"heldout: only {len(out)} examples with unseen queries after 50 seeds")
        cfg = replace(base, seed=s, n_train=2 * n, n_val=0, n_test=0, train_annotation_share=1.0,
                      annotation_regime="shared")
        for ex in generate(cfg)["train"]:
            if ex.query not in seen and len(out) < n:
                ex.id = f"heldout-{len(out)}"
                out.append(ex)
        s += 1
    return out
