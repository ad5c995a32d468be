"""The synthetic catalogue: categories (with sibling groups and accessory links), brands with
price tiers, attributes, and the feature phrases that Q&A and knowledge queries use.

Plain data; :mod:`taosr.data.synth` turns it into queries, products, labels and gold steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PRICE_TIERS = ("budget", "mid", "premium")
TIER_MULTIPLIER = {"budget": 0.55, "mid": 1.0, "premium": 1.9}


@dataclass(frozen=True)
class Feature:
    name: str                    # canonical value, e.g. "heat resistant"
    qa: tuple[str, ...]          # "what glue <qa>"
    knowledge: tuple[str, ...]   # needs world knowledge to map to the category


@dataclass(frozen=True)
class Category:
    name: str
    group: str                   # siblings share a group
    base_price: float
    colors: tuple[str, ...] = ()
    materials: tuple[str, ...] = ()
    genders: tuple[str, ...] = ()
    features: tuple[Feature, ...] = ()
    accessories: tuple[str, ...] = ()   # informative only: accessory links are group-level (ACCESSORY_GROUPS)
    short: str = ""                     # word used in Q&A queries ("what glue ...")


F = Feature
_SHOE_COLORS = ("black", "white", "red", "blue", "grey")
_CLOTH_COLORS = ("black", "navy", "green", "beige", "red")
_G = ("men", "women", "kids")

CATEGORIES: tuple[Category, ...] = (
    # footwear
    Category("running shoes", "footwear", 90, _SHOE_COLORS, ("mesh", "knit"), _G,
             (F("cushioned", ("absorb impact on pavement",), ("knee pain when jogging", "sore joints after runs")),
              F("waterproof", ("keep feet dry in rain",), ("jogging in wet weather",))),
             ("insoles", "shoe laces"), "shoes"),
    Category("trail shoes", "footwear", 110, _SHOE_COLORS, ("mesh", "leather"), _G,
             (F("high grip", ("grip on muddy paths",), ("slipping on rocky trails",)),), ("insoles", "shoe laces"), "shoes"),
    Category("hiking boots", "footwear", 140, ("brown", "black", "grey"), ("leather", "suede"), _G,
             (F("waterproof", ("stay dry in streams",), ("crossing wet mountain trails",)),), ("insoles", "shoe laces"), "boots"),
    Category("sandals", "footwear", 40, ("brown", "black", "white"), ("leather", "rubber"), _G,
             (F("arch support", ("support flat feet",), ("heel pain in summer",)),), ("insoles",), "sandals"),
    Category("dress shoes", "footwear", 120, ("black", "brown"), ("leather", "suede"), ("men", "women"),
             (), ("shoe polish", "shoe laces", "insoles"), "shoes"),
    Category("insoles", "shoe care", 20, (), ("foam", "gel"), (),
             (F("arch support", ("support flat feet",), ("plantar fasciitis relief",)),), ("running shoes", "hiking boots"), "insoles"),
    Category("shoe laces", "shoe care", 6, ("black", "white", "red"), ("cotton", "nylon"), (), (), ("running shoes", "dress shoes"), "laces"),
    Category("shoe polish", "shoe care", 9, ("black", "brown"), (), (), (), ("dress shoes",), "polish"),
    # bags
    Category("backpack", "bags", 60, _CLOTH_COLORS, ("nylon", "canvas", "leather"), (),
             (F("laptop compartment", ("fit a 15 inch laptop",), ("carrying a computer to class",)),), ("laptop sleeve",), "backpack"),
    Category("handbag", "bags", 150, ("black", "red", "beige", "brown"), ("leather", "canvas", "vegan leather"), ("women",),
             (), ("wallet",), "bag"),
    Category("wallet", "bags", 45, ("black", "brown"), ("leather", "canvas"), ("men", "women"),
             (F("rfid blocking", ("stop card skimming",), ("protecting contactless cards from theft",)),), ("handbag",), "wallet"),
    Category("suitcase", "bags", 180, ("black", "silver", "blue"), ("polycarbonate", "nylon"), (),
             (F("carry on size", ("fit in the overhead bin",), ("flying without checking a bag",)),), ("luggage tag",), "suitcase"),
    Category("luggage tag", "travel accessories", 10, ("black", "red"), ("leather", "silicone"), (), (), ("suitcase",), "tag"),
    # kitchen
    Category("coffee maker", "kitchen appliances", 80, ("black", "silver"), ("plastic", "stainless steel"), (),
             (F("programmable", ("start brewing on a timer",), ("waking up to ready coffee",)),), ("coffee filters",), "coffee maker"),
    Category("espresso machine", "kitchen appliances", 300, ("silver", "black"), ("stainless steel",), (),
             (F("milk frother", ("froth milk for lattes",), ("making cappuccino at home",)),), ("coffee beans",), "machine"),
    Category("blender", "kitchen appliances", 70, ("black", "red", "silver"), ("plastic", "glass"), (),
             (F("ice crushing", ("crush ice for smoothies",), ("frozen drinks at parties",)),), (), "blender"),
    Category("kettle", "kitchen appliances", 35, ("silver", "white", "black"), ("glass", "stainless steel"), (),
             (F("temperature control", ("heat water to 80 degrees",), ("brewing green tea properly",)),), (), "kettle"),
    Category("coffee filters", "kitchen supplies", 5, (), ("paper",), (), (), ("coffee maker",), "filters"),
    Category("coffee beans", "kitchen supplies", 15, (), (), (),
             (F("decaf", ("have no caffeine",), ("coffee at night without losing sleep",)),), ("espresso machine",), "beans"),
    # cleaning
    Category("vacuum cleaner", "floor cleaning", 250, ("grey", "purple", "red"), (), (),
             (F("pet hair", ("pick up dog hair",), ("shedding golden retriever at home",)),
              F("cordless", ("run without a plug",), ("cleaning stairs without an outlet",))), ("vacuum bags",), "vacuum"),
    Category("robot vacuum", "floor cleaning", 300, ("black", "white"), (), (),
             (F("self emptying", ("empty its own bin",), ("hands free floor cleaning for weeks",)),), ("vacuum bags",), "vacuum"),
    Category("mop", "floor cleaning", 30, ("blue", "grey"), ("microfiber", "cotton"), (), (), (), "mop"),
    Category("vacuum bags", "cleaning supplies", 12, (), ("paper", "synthetic"), (), (), ("vacuum cleaner", "robot vacuum"), "bags"),
    # electronics
    Category("headphones", "audio", 120, ("black", "white", "blue"), (), (),
             (F("noise cancelling", ("block out plane noise",), ("blocking a noisy open office",)),), ("headphone stand",), "headphones"),
    Category("earbuds", "audio", 90, ("black", "white"), (), (),
             (F("sweat resistant", ("survive a sweaty workout",), ("music during gym sessions",)),), (), "earbuds"),
    Category("bluetooth speaker", "audio", 70, ("black", "blue", "red"), (), (),
             (F("waterproof", ("work by the pool",), ("music at the beach",)),), (), "speaker"),
    Category("headphone stand", "audio accessories", 25, ("black", "silver"), ("wood", "aluminum"), (), (), ("headphones",), "stand"),
    Category("laptop", "computers", 900, ("silver", "grey", "black"), ("aluminum", "plastic"), (),
             (F("long battery", ("last a full workday unplugged",), ("working on long flights",)),), ("laptop sleeve",), "laptop"),
    Category("laptop sleeve", "computer accessories", 25, ("black", "grey", "blue"), ("neoprene", "leather"), (), (), ("laptop", "backpack"), "sleeve"),
    # personal care
    Category("shampoo", "hair care", 12, (), (), (),
             (F("anti hair loss", ("reduce hair fall",), ("thinning hair", "receding hairline")),
              F("anti dandruff", ("stop flaky scalp",), ("itchy flaky scalp",))), ("conditioner",), "shampoo"),
    Category("conditioner", "hair care", 12, (), (), (),
             (F("moisturizing", ("fix dry frizzy hair",), ("hair damaged by bleaching",)),), ("shampoo",), "conditioner"),
    Category("hair dryer", "hair tools", 60, ("black", "pink", "white"), (), (),
             (F("ionic", ("reduce frizz while drying",), ("frizz after showering",)),), (), "dryer"),
    # adhesives and tools
    Category("super glue", "adhesives", 7, (), (), (),
             (F("heat resistant", ("hold at high temperature",), ("fixing a car engine part",)),
              F("waterproof", ("work under water",), ("repairing a leaking aquarium",))), (), "super glue"),
    Category("epoxy", "adhesives", 14, (), (), (),
             (F("heat resistant", ("hold at high temperature",), ("bonding metal on an exhaust pipe",)),), (), "epoxy"),
    Category("wood glue", "adhesives", 8, (), (), (),
             (F("waterproof", ("hold outdoors in rain",), ("building garden furniture",)),), (), "wood glue"),
    Category("cordless drill", "power tools", 120, ("yellow", "black", "red"), (), (),
             (F("brushless", ("run longer per charge",), ("drilling all day on a job site",)),), ("drill bits",), "drill"),
    Category("drill bits", "tool accessories", 20, (), ("titanium", "cobalt"), (), (), ("cordless drill",), "bits"),
    # apparel
    Category("rain jacket", "outerwear", 90, _CLOTH_COLORS, ("nylon", "polyester"), _G,
             (F("waterproof", ("stay dry in heavy rain",), ("hiking in a downpour",)),), (), "jacket"),
    Category("winter coat", "outerwear", 160, _CLOTH_COLORS, ("wool", "down"), _G,
             (F("insulated", ("stay warm below freezing",), ("surviving a chicago winter",)),), (), "coat"),
    Category("t-shirt", "tops", 20, _CLOTH_COLORS, ("cotton", "polyester"), _G, (), (), "shirt"),
    Category("jeans", "bottoms", 60, ("blue", "black", "grey"), ("denim",), _G, (), (), "jeans"),
    # pets
    Category("dog food", "pet food", 45, (), (), (),
             (F("grain free", ("avoid wheat and corn",), ("a dog with grain allergies",)),), ("dog bowl",), "food"),
    Category("cat food", "pet food", 30, (), (), (),
             (F("hairball control", ("reduce hairballs",), ("a cat that coughs up fur",)),), (), "food"),
    Category("dog bowl", "pet accessories", 15, ("blue", "red", "grey"), ("stainless steel", "ceramic"), (), (), ("dog food",), "bowl"),
)

# Brands per group, each with a price tier. Accessory groups reuse their parents' brands.
BRANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "footwear": (("nike", "premium"), ("adidas", "premium"), ("asics", "mid"), ("brooks", "mid"), ("skechers", "budget"), ("avia", "budget")),
    "shoe care": (("kiwi", "mid"), ("dr scholls", "mid"), ("sof sole", "budget")),
    "bags": (("samsonite", "premium"), ("coach", "premium"), ("herschel", "mid"), ("jansport", "mid"), ("amazon basics", "budget")),
    "travel accessories": (("samsonite", "premium"), ("amazon basics", "budget")),
    "kitchen appliances": (("breville", "premium"), ("delonghi", "premium"), ("cuisinart", "mid"), ("ninja", "mid"), ("hamilton beach", "budget"), ("mr coffee", "budget")),
    "kitchen supplies": (("melitta", "mid"), ("lavazza", "premium"), ("great value", "budget")),
    "floor cleaning": (("dyson", "premium"), ("irobot", "premium"), ("shark", "mid"), ("bissell", "mid"), ("eureka", "budget")),
    "cleaning supplies": (("hoover", "mid"), ("eureka", "budget")),
    "audio": (("bose", "premium"), ("sony", "premium"), ("jbl", "mid"), ("anker", "budget"), ("tozo", "budget")),
    "audio accessories": (("satechi", "mid"), ("amazon basics", "budget")),
    "computers": (("apple", "premium"), ("dell", "mid"), ("lenovo", "mid"), ("acer", "budget")),
    "computer accessories": (("incase", "mid"), ("amazon basics", "budget")),
    "hair care": (("kerastase", "premium"), ("head and shoulders", "mid"), ("pantene", "mid"), ("suave", "budget")),
    "hair tools": (("dyson", "premium"), ("revlon", "mid"), ("conair", "budget")),
    "adhesives": (("loctite", "premium"), ("gorilla", "mid"), ("elmers", "budget")),
    "power tools": (("dewalt", "premium"), ("makita", "premium"), ("ryobi", "mid"), ("black and decker", "budget")),
    "tool accessories": (("dewalt", "premium"), ("bosch", "mid")),
    "outerwear": (("the north face", "premium"), ("patagonia", "premium"), ("columbia", "mid"), ("old navy", "budget")),
    "tops": (("ralph lauren", "premium"), ("hanes", "budget"), ("gap", "mid")),
    "bottoms": (("levis", "mid"), ("wrangler", "budget"), ("diesel", "premium")),
    "pet food": (("blue buffalo", "premium"), ("purina", "mid"), ("ol roy", "budget")),
    "pet accessories": (("kong", "mid"), ("amazon basics", "budget")),
}

BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}


def brand_tier(group: str, brand: str) -> str:
    for b, t in BRANDS[group]:
        if b == brand:
            return t
    raise KeyError(f"brand {brand!r} not in group {group!r}")


# Accessory / complement links between groups (symmetric): a shoe-care product is an accessory
# for any footwear query and vice versa. Group-level links keep the rule stateable in one step
# of reasoning ("running shoes (footwear)" vs "insoles (shoe care)").
ACCESSORY_GROUPS: tuple[tuple[str, str], ...] = (
    ("footwear", "shoe care"), ("bags", "travel accessories"), ("kitchen appliances", "kitchen supplies"),
    ("floor cleaning", "cleaning supplies"), ("audio", "audio accessories"), ("computers", "computer accessories"),
    ("power tools", "tool accessories"), ("pet food", "pet accessories"), ("hair care", "hair tools"),
)
_ACC = {frozenset(p) for p in ACCESSORY_GROUPS}


def group_of(category: str) -> str:
    return BY_NAME[category].group


def relation(query_cat: str, item_cat: str) -> str:
    """How the item's category relates to the query's: exact, sibling (same group), accessory
    (linked groups, see ACCESSORY_GROUPS) or different."""
    if query_cat == item_cat:
        return "exact"
    q, i = BY_NAME[query_cat], BY_NAME[item_cat]
    if frozenset((q.group, i.group)) in _ACC:
        return "accessory"
    if q.group == i.group:
        return "sibling"
    return "different"
