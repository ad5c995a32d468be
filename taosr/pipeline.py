"""``taosr quickstart``: SFT -> DPO -> GRPO -> SRPO (and the GRM) on the embedded default.

Each stage is the same ``taosr fit`` a user would run with the YAML under ``configs/``, started
from the previous stage's export, then ``taosr test`` on the same test split and on a larger
held-out set (``taosr data heldout``: queries in no split of the run's data; its macro F1 has
about half the test split's noise). At the end a comparison table (overall, per query type, long
tail; both sets) is printed and written as Markdown and CSV, with a PNG chart of the held-out
set, under ``--out`` (default ``runs/quickstart``).

``--small`` is a first-look variant (smaller data and budgets) that finishes in a few minutes.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time

from taosr.data.synth import SynthConfig, heldout
from taosr.launcher import run_lightning
from taosr.sampling import sample_main
from taosr.schema import write_jsonl

METRICS = ("macro_f1", "good_f1", "accuracy", "step_accuracy", "format_error_rate")
STAGES = ("sft", "dpo", "grpo", "srpo")


def _fit(cfg: str, root: str, overrides: list[str], extra: list[str]) -> None:
    rc = run_lightning(["fit", "--config", cfg, "--trainer.default_root_dir", root, *overrides, *extra])
    if rc:
        raise SystemExit(f"quickstart: {cfg} failed (exit {rc})")


def _test(cfg: str, root: str, export: str, overrides: list[str], extra: list[str]) -> dict:
    rc = run_lightning(["test", "--config", cfg, "--trainer.default_root_dir", root,
                        *overrides, *extra, "--model.init_args.model.name_or_path", export])
    if rc:
        raise SystemExit(f"quickstart: test of {export} failed (exit {rc})")
    with open(os.path.join(root, "eval", "test-metrics.json")) as fh:
        return json.load(fh)


def plan(small: bool) -> dict:
    """Budgets per stage: the full run fits 15 minutes on 2 CPU cores; --small a few minutes."""
    if small:
        return {"n_train": 800, "n_test": 200, "sft_epochs": 3, "sample_prompts": 200, "samples": 4,
                "rl_steps": 10, "rl_prompts": 4, "grm_steps": 60, "dpo_epochs": 1,
                "rejection_band": (0.0, 1.0), "heldout": 400}
    return {"n_train": 3000, "n_test": 400, "sft_epochs": 6, "sample_prompts": 600, "samples": 4,
            "rl_steps": 60, "rl_prompts": 8, "grm_steps": 300, "dpo_epochs": 1,
            "rejection_band": (0.0, 1.0), "heldout": 2000}


def run(out: str, small: bool = False, configs: str = "configs", seed: int = 0, extra: list[str] | None = None,
        plan_overrides: dict | None = None) -> dict[str, dict]:
    """Run every stage; ``extra`` CLI overrides go to every fit/test, ``plan_overrides`` change budgets."""
    extra = list(extra or [])
    p = {**plan(small), **(plan_overrides or {})}
    data = ["--data.synth.n_train", str(p["n_train"]), "--data.synth.n_test", str(p["n_test"]),
            "--data.synth.seed", str(seed), "--seed_everything", str(seed),
            "--data.data_dir", p.get("data_dir", ".cache/taosr/data")]
    cfg = lambda name: os.path.join(configs, f"{name}.yaml")  # noqa: E731
    root = lambda name: os.path.join(out, name)  # noqa: E731
    export = lambda name: os.path.join(out, name, "export")  # noqa: E731
    timings, results = {}, {}

    t = time.perf_counter()
    _fit(cfg("sft"), root("sft"), data + ["--trainer.max_epochs", str(p["sft_epochs"]),
                                           "--trainer.check_val_every_n_epoch", str(p["sft_epochs"])], extra)
    timings["sft"] = time.perf_counter() - t

    t = time.perf_counter()
    samples = os.path.join(out, "sft", "samples-train.jsonl")
    rc = sample_main(["--model", export("sft"), "--out", samples, "--n", str(p["samples"]),
               "--limit", str(p["sample_prompts"]), "--synth-n-train", str(p["n_train"]),
               "--synth-n-test", str(p["n_test"]), "--synth-seed", str(seed), "--seed", str(seed),
               "--max-new-tokens", str(p.get("max_new_tokens", 96)), "--data-dir", p.get("data_dir", ".cache/taosr/data")])
    if rc:
        raise SystemExit("quickstart: sampling failed")
    _fit(cfg("dpo"), root("dpo"), data + ["--data.samples_path", samples, "--model.init_args.model.name_or_path",
                                           export("sft"), "--trainer.max_epochs", str(p["dpo_epochs"])], extra)
    timings["dpo"] = time.perf_counter() - t

    t = time.perf_counter()
    _fit(cfg("grm"), root("grm"), data + ["--trainer.max_steps", str(p["grm_steps"]), "--data.samples_path", samples,
                                           "--model.init_args.model.name_or_path", export("sft"),
                                           "--trainer.val_check_interval", str(p["grm_steps"])], extra)  # held-out verdict accuracy
    timings["grm"] = time.perf_counter() - t

    # GRPO continues from DPO (TaoSR1's chain); SRPO starts from the same export with the same rollout
    # budget, so the two RL methods compare on equal terms. Both train on the prompts the SFT policy
    # neither always nor never solves (offline rejection sampling on the pass@N file).
    rl = data + ["--trainer.max_steps", str(p["rl_steps"]), "--data.batch_size", str(p["rl_prompts"]),
                 "--trainer.val_check_interval", str(p["rl_steps"]),
                 "--data.samples_path", samples, "--data.rejection_sampling.low", str(p["rejection_band"][0]),
                 "--data.rejection_sampling.high", str(p["rejection_band"][1]),
                 "--model.init_args.model.name_or_path", export("dpo")]
    for stage in ("grpo", "srpo"):
        t = time.perf_counter()
        grm = ["--model.init_args.grm_path", export("grm")] if stage == "srpo" else []
        _fit(cfg(stage), root(stage), rl + grm, extra)
        timings[stage] = time.perf_counter() - t

    heldout_path = os.path.join(out, "data", "heldout.jsonl")
    write_jsonl(heldout_path, heldout(p["heldout"], seed=seed + 1,
                                      base=SynthConfig(n_train=p["n_train"], n_test=p["n_test"], seed=seed)))
    held: dict[str, dict] = {}
    for stage in STAGES:
        t = time.perf_counter()
        results[stage] = _test(cfg("sft"), os.path.join(out, "test", stage), export(stage), data, extra)
        held[stage] = _test(cfg("sft"), os.path.join(out, "heldout", stage), export(stage),
                            data + ["--data.test", heldout_path], extra)
        timings[f"test_{stage}"] = time.perf_counter() - t
    write_report(out, results, timings, heldout=held)
    return results


def comparison_rows(results: dict[str, dict], split: str = "test") -> list[dict]:
    """One row per (stage, slice) with the main metrics."""
    slices = ["overall", "long_tail"] + sorted({k.split("/")[1] for r in results.values() for k in r if k.startswith("by_type/")})
    rows = []
    for stage, m in results.items():
        for sl in slices:
            pre = "" if sl == "overall" else ("long_tail/" if sl == "long_tail" else f"by_type/{sl}/")
            if pre + "n" not in m:
                continue
            rows.append({"stage": stage, "split": split, "slice": sl, "n": int(m[pre + "n"]),
                         **{k: m.get(pre + k) for k in METRICS}})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| stage | split | slice | n | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 4) + "|"]
    for r in rows:
        vals = ["—" if r[k] is None or r[k] != r[k] else f"{r[k]:.3f}" for k in METRICS]
        lines.append(f"| {r['stage']} | {r['split']} | {r['slice']} | {r['n']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def write_report(out: str, results: dict[str, dict], timings: dict[str, float] | None = None,
                 heldout: dict[str, dict] | None = None) -> str:
    """Table (Markdown, CSV) of the test split and, when given, the held-out set; chart of the
    held-out set when given (lower noise), else of the test split."""
    rows = comparison_rows(results, "test") + (comparison_rows(heldout, "heldout") if heldout else [])
    os.makedirs(out, exist_ok=True)
    md = markdown_table(rows)
    with open(os.path.join(out, "comparison.md"), "w") as fh:
        fh.write(md + "\n")
        if timings:
            fh.write("\n| stage | seconds |\n|---|---|\n" + "\n".join(f"| {k} | {v:.0f} |" for k, v in timings.items()) + "\n")
    with open(os.path.join(out, "comparison.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["stage", "split", "slice", "n", *METRICS])
        w.writeheader()
        w.writerows(rows)
    shown = "heldout" if heldout else "test"
    plot_comparison([r for r in rows if r["split"] == shown], os.path.join(out, "comparison.png"), shown)
    overall = [r for r in rows if r["slice"] in ("overall", "long_tail")]
    print("\n" + markdown_table(overall) + f"\n\nfull table: {out}/comparison.md (.csv, .png)")
    return md


def plot_comparison(rows: list[dict], path: str, split: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    slices = [s for s in dict.fromkeys(r["slice"] for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, metric in zip(axes, ("macro_f1", "step_accuracy")):
        width = 0.8 / max(1, len(stages))
        for i, st in enumerate(stages):
            vals = [next((r[metric] or 0.0 for r in rows if r["stage"] == st and r["slice"] == sl), 0.0) for sl in slices]
            ax.bar([x + i * width for x in range(len(slices))], vals, width, label=st)
        ax.set_xticks([x + width * (len(stages) - 1) / 2 for x in range(len(slices))])
        ax.set_xticklabels(slices, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"{metric} ({split})")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quickstart_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="taosr quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--small", action="store_true", help="first-look variant: smaller data and budgets")
    p.add_argument("--configs", default="configs", help="folder with sft/dpo/grm/grpo/srpo.yaml")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    run(a.out, small=a.small, configs=a.configs, seed=a.seed)
    print(f"quickstart finished in {time.perf_counter() - t0:.0f}s")
    return 0
