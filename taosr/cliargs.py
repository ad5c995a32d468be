"""An ``argparse.ArgumentParser`` whose usage errors are one-line :class:`~taosr.errors.TaosrError`s,
so a bad flag of ``taosr data ...`` or ``taosr sample`` reads like every other user error
(``taosr: error: ...``, exit 2) instead of a usage block."""
from __future__ import annotations

import argparse

from taosr.data.synth import FIELD_SHARES, SynthConfig
from taosr.errors import TaosrError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise TaosrError(f"{self.prog}: {message} (see {self.prog} --help)")


def passed_on(extra: list[str]) -> list[str]:
    """The arguments ``taosr compare`` / ``sweep`` give every run, without a ``--`` before them (the
    separator ``taosr quickstart`` takes; kept, it reached every fit as an unknown argument)."""
    return [x for x in extra if x != "--"]


def key_values(items: list[str] | None, flag: str, value=str, key=str) -> dict | None:
    """``KEY=VALUE`` pairs of ``flag`` as a dict (None when none are given); a malformed pair or a
    value that ``value`` / ``key`` cannot convert is one line naming the flag."""
    if not items:
        return None
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise TaosrError(f"{flag}: expected KEY=VALUE, got {it!r}")
        try:
            out[key(k)] = value(v)
        except ValueError:
            bad = k if key is not str else v
            raise TaosrError(f"{flag}: {it!r}: {bad!r} is not a number") from None
    return out


def add_share_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--[PREFIX]price-share`` etc.: one flag per synthetic item-field share (``FIELD_SHARES``)."""
    for name, shows in FIELD_SHARES.items():
        p.add_argument(f"--{prefix}{name.replace('_', '-')}", type=float, default=getattr(SynthConfig, name),
                       help=f"share of items shown with {shows} (data.synth.{name})")


def share_settings(a: argparse.Namespace, prefix: str = "") -> dict[str, float]:
    """The shares of :func:`add_share_options` as ``SynthConfig`` keyword arguments, each out of
    [0, 1] refused in one line naming its flag."""
    out = {}
    for name in FIELD_SHARES:
        flag = f"--{prefix}{name.replace('_', '-')}"
        v = getattr(a, flag[2:].replace("-", "_"))
        if not 0.0 <= v <= 1.0:
            raise TaosrError(f"{flag}: must be in [0, 1], got {v}")
        out[name] = v
    return out


def add_reader_options(p: argparse.ArgumentParser) -> None:
    """The reader flags of ``taosr data check`` / ``convert``, ``taosr score``, ``taosr reason`` and
    ``taosr sample`` (one :class:`~taosr.data.readers.ReaderSpec` each)."""
    p.add_argument("--format", choices=("jsonl", "csv", "parquet"))
    p.add_argument("--encoding", default="auto", help="auto (BOM, else UTF-8, else latin-1), utf-8, utf-8-sig, latin-1, utf-16")
    p.add_argument("--column-map", nargs="*", metavar="FIELD=COLUMN", help="e.g. query=q item.title=name label=esci; FIELD= (no column) leaves an optional field "
                        "out, e.g. query_type=")
    p.add_argument("--label-map", nargs="*", metavar="RAW=TIER", help="e.g. E=4 S=3 C=2 I=1")
    p.add_argument("--label-thresholds", nargs=3, type=float, metavar=("T1", "T2", "T3"))
    p.add_argument("--query-type", default=None)
    p.add_argument("--skip-invalid", action="store_true", help="skip (and count) bad rows instead of failing")
    p.add_argument("--items", metavar="FILE", help="a products file joined to the pairs on --item-key")
    p.add_argument("--item-key", metavar="COLUMN", help="the pairs file's column holding the product key")
    p.add_argument("--items-column-map", nargs="*", metavar="FIELD=COLUMN",
                   help="the products file's columns, e.g. key=product_id item.title=product_name "
                        "item.attributes=product_features; FIELD= (no column) leaves an optional field out, "
                        "e.g. item.description=")
    p.add_argument("--queries", metavar="FILE", help="a queries file joined to the pairs on --query-key")
    p.add_argument("--query-key", metavar="COLUMN", help="the pairs file's column holding the query key")
    p.add_argument("--queries-column-map", nargs="*", metavar="FIELD=COLUMN",
                   help="e.g. key=query_id query=query; query_type= (no column) leaves it out")
    p.add_argument("--attributes", metavar="FILE",
                   help="a long-format attributes file (one row per product, name, value) joined on --attributes-key")
    p.add_argument("--attributes-key", metavar="COLUMN",
                   help="the pairs file's column holding the product key of --attributes (default: --item-key)")
    p.add_argument("--attributes-column-map", nargs="*", metavar="FIELD=COLUMN",
                   help="the attributes file's columns (default key=the key name, name=name, value=value)")


def reader_flags_given(a: argparse.Namespace) -> list[str]:
    """The reader flags set to something other than their default (``--items``, ``--column-map``, ...)."""
    ref = argparse.ArgumentParser(add_help=False)
    add_reader_options(ref)
    return ["--" + act.dest.replace("_", "-") for act in ref._actions
            if getattr(a, act.dest, act.default) != act.default]


def reader_spec(a: argparse.Namespace, path: str, **extra):
    """The validated ReaderSpec of the flags :func:`add_reader_options` added (``extra``: more fields)."""
    from taosr.data.readers import ReaderSpec

    spec = ReaderSpec(path=path, format=a.format, encoding=a.encoding,
                      column_map=key_values(a.column_map, "--column-map"), label_map=key_values(a.label_map, "--label-map"),
                      label_thresholds=a.label_thresholds, query_type=a.query_type,
                      on_error="skip" if a.skip_invalid else "raise",
                      items=a.items, item_key=a.item_key, items_column_map=key_values(a.items_column_map, "--items-column-map"),
                      queries=a.queries, query_key=a.query_key,
                      queries_column_map=key_values(a.queries_column_map, "--queries-column-map"),
                      attributes=a.attributes, attributes_key=a.attributes_key,
                      attributes_column_map=key_values(a.attributes_column_map, "--attributes-column-map"), **extra)
    return spec.validate(lambda name: "--" + name.replace("_", "-"))


def options_given(p: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option given on the command line ``argv`` (which ``p`` parses without an
    error), whatever its value (``--synth-seed 0`` counts although 0 is the default): to refuse a flag
    that the other flags make a no-op, even when the user repeated its default."""
    saved = [(act, act.default) for act in p._actions]
    parser_defaults = dict(p._defaults)
    try:
        for act, _ in saved:
            act.default = argparse.SUPPRESS  # an option not given then leaves no attribute
        p._defaults.clear()
        ns, _ = p.parse_known_args(argv)
    finally:
        for act, default in saved:
            act.default = default
        p._defaults.update(parser_defaults)
    return set(vars(ns))


def refuse_greedy_settings(given: set[str], temperature: float, n: int) -> None:
    """``--temperature 0`` is greedy decoding (:attr:`taosr.eval.generation.GenerationSpec.sampling`):
    ``--n`` samples of a prompt would all be the same text and ``--top-p`` would be unused."""
    if temperature != 0:
        return
    if n > 1:
        raise TaosrError(f"--n {n}: --temperature 0 is greedy, so every sample of a prompt would be the same text; "
                         "give --n 1 or a temperature above 0")
    if "top_p" in given:
        raise TaosrError("--top-p: unused with --temperature 0 (greedy decoding); give a temperature above 0 or "
                         "leave --top-p out")
