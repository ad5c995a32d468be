"""Write the "your own data" fixture: graded query-product pairs and a products file, shaped like
the public product-search relevance sets (Home Depot / WANDS / ESCI), none of which has reasoning.

    python tests/data/your_data/make_fixture.py     # rewrites train.csv, test.csv, products.csv here

The pairs come from the synthetic catalogue (seed 11, not the default data's seed 0), so a model can
learn them, but they are written the way real exports look:

- ``train.csv`` / ``test.csv``: ``id,product_uid,product_title,search_term,relevance``; query-disjoint;
  ``relevance`` is the mean of three raters' 1-3 grades as text ("2.33", "3"), read with
  ``label_thresholds: [1.5, 2.25, 2.75]``; search terms are lower-cased, some with typos or doubled spaces;
  about a quarter of the rows leave ``product_title`` empty (it comes from the products file).
- ``products.csv``: ``product_uid,product_title,brand,category,attributes,product_description,price``; titles
  with trademark signs, HTML entities, quotes and commas; ``attributes`` packed as ``Name:value|Name:value``;
  long descriptions with HTML line breaks (joined only when mapped: `item.description=product_description`);
  some products no pair uses.
- Missing keys: a few pairs name a ``product_uid`` the products file lacks (kept: they carry their
  own title), and two train rows have neither a known product nor a title (bad rows: the recipe
  reads with ``on_error: skip`` and reports them).
"""
from __future__ import annotations

import csv
import os
import random

from taosr.data.synth import SynthConfig, generate

HERE = os.path.dirname(os.path.abspath(__file__))
THRESHOLDS = (1.5, 2.25, 2.75)
# three raters' grades (1-3) per tier: mostly agreeing, sometimes not (as in real rater pools)
RATERS = {4: [(3, 3, 3), (3, 3, 3), (3, 3, 2)], 3: [(3, 2, 2), (3, 3, 2), (2, 3, 2)],
          2: [(2, 2, 1), (2, 2, 2), (1, 2, 2)], 1: [(1, 1, 1), (1, 1, 1), (2, 1, 1)]}


def grade(tier: int, rng: random.Random) -> str:
    votes = rng.choice(RATERS[tier])
    if rng.random() < 0.06:  # a rater who disagrees with the other two
        votes = tuple(min(3, max(1, v + rng.choice((-1, 1)))) if i == 0 else v for i, v in enumerate(votes))
    g = sum(votes) / 3
    return "3" if g == 3 else f"{g:.2f}"


def messy_query(q: str, rng: random.Random) -> str:
    q = q.lower()
    r = rng.random()
    if r < 0.06 and len(q) > 6:  # a typo: two neighbouring letters swapped
        i = rng.randrange(1, len(q) - 2)
        if q[i].isalpha() and q[i + 1].isalpha():
            q = q[:i] + q[i + 1] + q[i] + q[i + 2:]
    elif r < 0.12:
        q = q.replace(" ", "  ", 1) + " "
    return q


def messy_title(t: str, rng: random.Random) -> str:
    brand, rest = t.split(" ", 1) if " " in t else (t, "")
    r = rng.random()
    if r < 0.15:
        brand += "\u2122"
    elif r < 0.25:
        brand += "\u00ae"
    t = f"{brand} {rest}".replace(" - ", " &amp; ", 1) if rng.random() < 0.1 else f"{brand} {rest}"
    if rng.random() < 0.1:
        t += f' {rng.choice((12, 18, 24, 36))}"'
    if rng.random() < 0.05:
        t = t.replace("e", "\u00e9", 1)
    return t


def category_of(steps: dict) -> str:
    """'drill bits (tool accessories)' -> 'Tool Accessories > Drill Bits'."""
    item = steps["item"]
    name, _, group = item.partition(" (")
    return f"{group.rstrip(')').title()} > {name.title()}"


def description(ex, rng: random.Random) -> str:
    it = ex.item
    facts = [f"{k.title()}: {v}" for k, v in sorted(it.attributes.items())]
    lines = [f"The {it.title} is built for everyday use.", *facts,
             "Backed by the manufacturer's limited warranty.",
             "Dimensions and weight vary by size; see the specification sheet for details."]
    text = "<br>".join(lines)
    return text + (" " + "Care: wipe clean with a damp cloth. " * rng.randrange(1, 12))


def main() -> None:
    rng = random.Random(11)
    data = generate(SynthConfig(n_train=330, n_val=30, n_test=90, seed=11))
    products: dict[str, dict] = {}
    uid_of: dict[str, str] = {}
    rows = {"train": [], "test": []}
    for split in ("train", "test"):
        for n, ex in enumerate(data[split]):
            title = messy_title(ex.item.title, rng)
            if ex.item.title not in uid_of:
                uid = str(100001 + len(uid_of))
                uid_of[ex.item.title] = uid
                attrs = dict(ex.item.attributes)
                packed = "|".join(f"{k.title()}:{v}" for k, v in sorted(attrs.items()))
                products[uid] = {"product_uid": uid, "product_title": title, "brand": (ex.item.brand or "").title(),
                                 "category": category_of(ex.steps), "attributes": packed,
                                 "product_description": description(ex, rng), "price": f"{ex.item.price:.2f}"}
            uid = uid_of[ex.item.title]
            keep_title = rng.random() < 0.75
            row = {"id": f"{split}-{n}", "product_uid": uid, "product_title": title if keep_title else "",
                   "search_term": messy_query(ex.query, rng), "relevance": grade(ex.label, rng)}
            if rng.random() < 0.04:  # a product the catalogue export lost: the pair keeps its own title
                row["product_uid"], row["product_title"] = str(900001 + n), title
            rows[split].append(row)
    # two bad rows: a key the products file lacks and no title of their own
    for k in (7, 8):
        rows["train"][k]["product_uid"], rows["train"][k]["product_title"] = str(990000 + k), ""
    # products nobody searched for (real catalogue exports carry many)
    for k in range(12):
        uid = str(800001 + k)
        products[uid] = {"product_uid": uid, "product_title": f"Unlisted Item {k}", "brand": "", "category": "",
                         "attributes": "", "product_description": "", "price": ""}
    pair_cols = ["id", "product_uid", "product_title", "search_term", "relevance"]
    for split, rs in rows.items():
        with open(os.path.join(HERE, f"{split}.csv"), "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=pair_cols)
            w.writeheader()
            w.writerows(rs)
    with open(os.path.join(HERE, "products.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(next(iter(products.values()))))
        w.writeheader()
        w.writerows(products.values())
    print(f"train {len(rows['train'])} pairs, test {len(rows['test'])} pairs, {len(products)} products")


if __name__ == "__main__":
    main()
