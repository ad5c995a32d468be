"""The ``taosr`` command.

- ``taosr fit|validate|test|predict --config FILE [--config OVERLAY ...] [--section.key value ...]``:
  LightningCLI (OmegaConf interpolation) over any method module and the shared DataModule;
- ``taosr data synth|heldout|check|split|convert|esci``: data commands;
- ``taosr sample``: offline pass@N sampling from a policy export (see :mod:`taosr.sampling`);
- ``taosr score``: P(tier) and ranking scores per pair from a model export (see :mod:`taosr.scoring`);
- ``taosr reason``: a teacher writes the reasoning steps for labelled pairs (see :mod:`taosr.bootstrap`);
- ``taosr sweep FILE``: run a W&B sweep YAML locally (see :mod:`taosr.sweep`);
- ``taosr quickstart``: SFT -> DPO -> GRPO -> SRPO on the embedded default (see :mod:`taosr.pipeline`);
- ``taosr compare SPEC``: methods x seeds from one shared start, mean ± s.e. (see :mod:`taosr.compare`).

User errors (bad rows, missing files, bad config values) print one line and exit 2; add
``--verbose`` for the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from taosr.errors import Interrupted, TaosrError
from taosr.launcher import LIGHTNING_COMMANDS, run_lightning

HELP = """usage: taosr COMMAND [options]

Train step-by-step relevance models (SFT, DPO, GRPO, SRPO) for e-commerce search.

training (LightningCLI; `taosr fit --help` for every option):
  fit        train:     taosr fit --config configs/sft.yaml [--config overlay.yaml] [--model.init_args.lr 1e-3]
  validate   evaluate on the validation split
  test       evaluate on the test split (writes eval/test-metrics.json and predictions)
  predict    generate reasoning for the test split

data and pipeline:
  data       synthetic data and file checks: taosr data synth --out DIR | taosr data heldout --out FILE | taosr data check FILE | taosr data split FILE --out DIR | taosr data convert FILE --out F.jsonl | taosr data esci ...
  sample     offline pass@N sampling from a policy export (DPO pairs, rejection sampling)
  score      P(tier), expected tier and cumulative scores per pair: taosr score FILE --model EXPORT --out OUT.jsonl
  reason     a teacher writes the five steps for labelled pairs (STaR): taosr reason --model M --data FILE --out FILE.jsonl
  sweep      run a W&B sweep YAML locally with the open-source `sweeps` engine
  quickstart run SFT -> DPO -> GRPO -> SRPO [--model tiny|smollm2-135m|FOLDER|HF-ID] [--small] and print a comparison table
  compare    methods x seeds from one shared start: mean ± s.e. and paired differences (comparisons/*.yaml)
  delta      an export as a small low-rank delta against its base, and back: taosr delta pack|unpack ... --base B

add --verbose to any command to see tracebacks for user errors.
"""

def data_main(argv: list[str]) -> int:
    from taosr.cliargs import ArgumentParser, add_reader_options, add_share_options, key_values, reader_spec, share_settings

    p = ArgumentParser(prog="taosr data", description="Data commands.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write synthetic train/val/test JSONL")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--n", type=int, default=3000, help="training examples (default 3000)")
    s.add_argument("--n-val", type=int, default=None, help="validation examples (default n/15)")
    s.add_argument("--n-test", type=int, default=None, help="test examples (default n/7.5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--items-per-query", type=int, default=3)
    s.add_argument("--type-weight", nargs="*", metavar="TYPE=W", help="query type mix, e.g. negation=0.3")
    s.add_argument("--tier-weight", nargs="*", metavar="TIER=W", help="tier balance, e.g. 4=0.4 1=0.1")
    s.add_argument("--annotation-regime", default="shared", choices=("shared", "heldout"),
                   help="heldout: only the annotated share of training queries keeps gold steps (see data.synth)")
    add_share_options(s)
    h = sub.add_parser("heldout", help="write extra test examples whose queries occur in no default split")
    h.add_argument("--out", required=True, help="output JSONL file (use with: taosr test ... --data.test FILE)")
    h.add_argument("--n", type=int, default=2000, help="examples (default 2000)")
    h.add_argument("--seed", type=int, default=1, help="first synthetic seed to draw from (not 0, the default data's)")
    add_share_options(h)
    c = sub.add_parser("check", help="validate a data file and print counts per tier and query type")
    c.add_argument("file")
    c.add_argument("--against", metavar="FILE", help="a validation or test file (same reader options): count its "
                                                      "queries and pairs that also occur in FILE (leakage)")
    add_reader_options(c)
    sp = sub.add_parser("split", help="split a labelled file (with its joins) by query into train/val/test JSONL")
    sp.add_argument("file")
    sp.add_argument("--out", required=True, help="output directory: train.jsonl, val.jsonl, test.jsonl")
    sp.add_argument("--val", type=float, default=0.1, help="share of the distinct queries for val.jsonl (default 0.1)")
    sp.add_argument("--test", type=float, default=0.1, help="share of the distinct queries for test.jsonl (default 0.1)")
    sp.add_argument("--seed", type=int, default=0, help="the shuffle of the queries (default 0)")
    add_reader_options(sp)
    v = sub.add_parser("convert", help="read a data file (with its joins) and write it as taosr JSONL")
    v.add_argument("file")
    v.add_argument("--out", required=True, help="output JSONL file")
    add_reader_options(v)
    e = sub.add_parser("esci", help="convert Amazon Shopping Queries (ESCI) parquet files to taosr JSONL")
    e.add_argument("--examples", required=True)
    e.add_argument("--products", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--locale", default="us")
    e.add_argument("--split", default="train")
    e.add_argument("--all-versions", action="store_true", help="use the large version, not small_version only")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--skip-invalid", action="store_true", help="skip (and count) bad rows instead of failing")
    a = p.parse_args(argv)

    def at_least(flag: str, v: int | None, low: int) -> None:
        if v is not None and v < low:
            raise TaosrError(f"{flag}: must be at least {low}, got {v}")

    def writable_file(flag: str, path: str) -> None:
        if os.path.isdir(path):
            raise TaosrError(f"{flag}: {path} is a directory; give a file path")

    if a.cmd == "synth":
        from taosr.schema import write_jsonl
        from taosr.data.synth import SynthConfig, generate

        at_least("--n", a.n, 1)
        at_least("--n-val", a.n_val, 0)
        at_least("--n-test", a.n_test, 0)
        at_least("--items-per-query", a.items_per_query, 1)
        shares = share_settings(a)
        if os.path.exists(a.out) and not os.path.isdir(a.out):
            raise TaosrError(f"--out: {a.out} is a file; give a directory")
        cfg = SynthConfig(n_train=a.n, n_val=a.n_val if a.n_val is not None else max(1, a.n // 15),
                          n_test=a.n_test if a.n_test is not None else max(1, int(a.n / 7.5)), seed=a.seed,
                          items_per_query=a.items_per_query, annotation_regime=a.annotation_regime, **shares)
        if a.type_weight:
            cfg.query_type_weights = key_values(a.type_weight, "--type-weight", float)
        if a.tier_weight:
            cfg.tier_weights = key_values(a.tier_weight, "--tier-weight", float, int)
        for split, rows in generate(cfg).items():
            n = write_jsonl(os.path.join(a.out, f"{split}.jsonl"), rows)
            print(f"wrote {n:6d} examples to {os.path.join(a.out, split + '.jsonl')}")
        return 0
    if a.cmd == "heldout":
        from taosr.schema import write_jsonl
        from taosr.data.synth import SynthConfig, heldout

        at_least("--n", a.n, 1)
        shares = share_settings(a)
        writable_file("--out", a.out)
        n = write_jsonl(a.out, heldout(a.n, seed=a.seed, base=SynthConfig(**shares)))
        print(f"wrote {n:6d} held-out examples to {a.out}")
        return 0
    if a.cmd == "check":
        from taosr.data.check import check_file

        spec = reader_spec(a, a.file)
        print(check_file(spec, against=a.against))
        return 0
    if a.cmd == "split":
        from taosr.data.split import split_file

        print(split_file(reader_spec(a, a.file), a.out, a.val, a.test, a.seed))
        return 0
    if a.cmd == "convert":
        from taosr.data.check import convert_file

        writable_file("--out", a.out)
        print(convert_file(reader_spec(a, a.file), a.out))
        return 0
    if a.cmd == "esci":
        from taosr.data.esci import esci_to_jsonl

        at_least("--limit", a.limit, 1)
        writable_file("--out", a.out)
        res = esci_to_jsonl(a.examples, a.products, a.out, locale=a.locale, split=a.split,
                            small_version=not a.all_versions, limit=a.limit,
                            on_error="skip" if a.skip_invalid else "raise")
        print(res)
        return 0
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        try:
            print(HELP, flush=True)
        except BrokenPipeError:  # taosr --help | head: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "data":
            return data_main(rest)
        if cmd == "sample":
            from taosr.sampling import sample_main

            return sample_main(rest)
        if cmd == "score":
            from taosr.scoring import score_main

            return score_main(rest)
        if cmd == "reason":
            from taosr.bootstrap import reason_main

            return reason_main(rest)
        if cmd == "sweep":
            from taosr.sweep import sweep_main

            return sweep_main(rest)
        if cmd == "quickstart":
            from taosr.pipeline import quickstart_main

            return quickstart_main(rest)
        if cmd == "compare":
            from taosr.compare import compare_main

            return compare_main(rest)
        if cmd == "delta":
            from taosr.packing import delta_main

            return delta_main(rest)
        if cmd in LIGHTNING_COMMANDS:
            return run_lightning(argv, verbose)
        print(f"taosr: error: unknown command {cmd!r}\n\n{HELP}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"taosr: {err}", file=sys.stderr)
        return err.code
    except BrokenPipeError:  # `taosr data check F | head`: the reader left; no traceback on the way out
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except TaosrError as err:
        if verbose:
            raise
        print(f"taosr: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
