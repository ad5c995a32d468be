"""``taosr sweep FILE``: run a W&B sweep YAML locally, without a W&B server.

The same YAML runs unchanged with ``wandb sweep FILE`` + ``wandb agent``. Locally, W&B's
open-source sweep engine (the ``sweeps`` package) proposes each run (grid, random or bayes, the
latter fitted on the finished runs' metric), W&B's own macro expansion turns the YAML's
``command:`` into the run's command line exactly as ``wandb agent`` would, and each run logs
offline under ``--out/<run>``. The sweep metric is read from the run's own evaluation files
(``val/<m>`` -> the last ``eval/val-step*-metrics.json``, ``test/<m>`` -> ``eval/test-metrics.json``).
A summary table (Markdown, CSV) and a chart of the metric per run are written at the end.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import subprocess
import sys
import time

from taosr.configfiles import load_yaml, locate
from taosr.errors import ConfigError

ENGINE_KEYS = ("method", "metric", "parameters", "early_terminate")


METHODS = ("grid", "random", "bayes")


def load_sweep(path: str) -> dict:
    path = locate(path)
    if not os.path.exists(path):
        raise ConfigError(f"{path}: sweep file not found")
    cfg = load_yaml(path)  # a syntax error or a key set twice names file:line
    if not isinstance(cfg, dict) or "parameters" not in cfg or "method" not in cfg:
        raise ConfigError(f"{path}: a sweep YAML needs 'method' and 'parameters'")
    if cfg["method"] not in METHODS:
        raise ConfigError(f"{path}: method {cfg['method']!r} is not one of {', '.join(METHODS)}")
    if not isinstance(cfg["parameters"], dict) or not cfg["parameters"]:
        raise ConfigError(f"{path}: 'parameters' must map each parameter to its values")
    if "metric" not in cfg and cfg["method"] == "bayes":
        raise ConfigError(f"{path}: method 'bayes' needs a 'metric' (name, goal)")
    return cfg


def build_command(cfg: dict, params: dict) -> list[str]:
    """Expand the YAML's ``command:`` macros with W&B's own helpers (as ``wandb agent`` does)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars["interpreter"] = [sys.executable]
    sweep_vars["program"] = [cfg.get("program", "")]
    sweep_vars["env"] = ["/usr/bin/env"] if os.name != "nt" else []
    out: list[str] = []
    for chunk in create_sweep_command(list(cfg.get("command") or [])):
        c = str(chunk)
        if c.startswith("${") and c.endswith("}"):
            out += [str(x) for x in (sweep_vars.get(c[2:-1]) or [])]
        else:
            out.append(c)
    return out


def read_metric(run_dir: str, name: str) -> float | None:
    split, _, key = name.partition("/")
    if split == "test":
        files = [os.path.join(run_dir, "eval", "test-metrics.json")]
    else:
        files = sorted(glob.glob(os.path.join(run_dir, "eval", f"{split}-step*-metrics.json")),
                       key=lambda f: int(re.search(r"step(\d+)", f).group(1)))[-1:]
    for f in files:
        if os.path.exists(f):
            with open(f) as fh:
                v = json.load(fh).get(key)
            return None if v is None else float(v)
    return None


def _plain(v):
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
    except ImportError:
        pass
    return v


def run_sweep(path: str, out: str, count: int | None = None, extra: list[str] | None = None,
              dry_run: bool = False) -> list[dict]:
    import sweeps

    cfg = load_sweep(path)
    engine_cfg = {k: cfg[k] for k in ENGINE_KEYS if k in cfg}
    metric = (cfg.get("metric") or {}).get("name")
    name = cfg.get("name") or os.path.splitext(os.path.basename(path))[0]
    if count is None:
        count = cfg.get("run_cap") or 10
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"--count {count}: the run budget must be at least 1")
    runs: list = []
    rows: list[dict] = []
    for i in range(count):
        try:
            proposal = sweeps.next_run(engine_cfg, runs, validate=True)
        except Exception as err:  # noqa: BLE001 - the engine's schema check of the YAML
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{path}: invalid sweep: {first[:200]}") from None
        if proposal is None:
            break  # grid exhausted
        params = {k: _plain(v["value"]) for k, v in proposal.config.items()}
        run_dir = os.path.join(out, f"run{i:03d}")
        cmd = build_command(cfg, params) + ["--trainer.default_root_dir", run_dir] + list(extra or [])
        print(f"[{name} {i}] " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        rc = 0
        if not dry_run:
            env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_RUN_GROUP": name}
            rc = subprocess.run(cmd, env=env).returncode
        value = read_metric(run_dir, metric) if metric and not dry_run else None
        proposal.state = sweeps.RunState.finished if rc == 0 else sweeps.RunState.failed
        proposal.name = f"run{i:03d}"
        if value is not None:
            proposal.summary_metrics = {metric: value}  # what bayes fits on
        runs.append(proposal)
        rows.append({"run": proposal.name, **params, **({metric: value} if metric else {}), "exit": rc,
                     "seconds": round(time.perf_counter() - t0, 1)})
    write_summary(out, rows, metric, cfg.get("metric", {}).get("goal", "maximize"))
    return rows


def write_summary(out: str, rows: list[dict], metric: str | None, goal: str) -> None:
    os.makedirs(out, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out, "summary.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    md += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    scored = [r for r in rows if metric and r.get(metric) is not None]
    if scored:
        best = (max if goal == "maximize" else min)(scored, key=lambda r: r[metric])
        md.append(f"\nbest: {best['run']} {metric}={best[metric]:.4f}")
    with open(os.path.join(out, "summary.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    if scored:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(scored) + 2), 3.5))
        ax.bar([r["run"] for r in scored], [r[metric] for r in scored])
        ax.set_ylabel(metric)
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "summary.png"), dpi=110)
        plt.close(fig)


def sweep_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="taosr sweep", description="Run a W&B sweep YAML locally (offline).")
    p.add_argument("file")
    p.add_argument("--count", type=int, default=None, help="run budget (default: run_cap or 10; grids stop when exhausted)")
    p.add_argument("--out", default=None, help="default runs/sweeps/<sweep name>")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    a, extra = p.parse_known_args(argv)
    out = a.out or os.path.join("runs", "sweeps", os.path.splitext(os.path.basename(a.file))[0])
    rows = run_sweep(a.file, out, a.count, extra, a.dry_run)
    failed = [r["run"] for r in rows if r["exit"] != 0]
    if rows and len(failed) == len(rows):
        raise ConfigError(f"{a.file}: every run of the sweep failed (exit {rows[0]['exit']} first); "
                          f"see {out}/summary.md and the runs' output above")
    if failed:
        print(f"taosr sweep: {len(failed)} of {len(rows)} runs failed: {', '.join(failed)}", file=sys.stderr)
    return 0
