"""``taosr sweep FILE``: run a W&B sweep YAML locally, without a W&B server.

The same YAML runs unchanged with ``wandb sweep FILE`` + ``wandb agent``. Locally, W&B's
open-source sweep engine (the ``sweeps`` package) proposes each run (grid, random or bayes, the
latter fitted on the finished runs' metric), W&B's own macro expansion turns the YAML's
``command:`` into the run's command line exactly as ``wandb agent`` would, and each run logs
offline under ``--out/<run>``. The sweep metric is read from the run's own evaluation files
(``val/<m>`` -> the last ``eval/val-step*-metrics.json``, ``test/<m>`` -> ``eval/test-metrics.json``).
A summary table (Markdown, CSV) and a chart of the metric per run are written at the end.

Each run folder records its parameters, the extra arguments and its state (``sweep-run.json``): a
re-run of the same command into the same ``--out`` keeps the finished runs as the engine's history
and continues after them (an interrupted run resumes from its ``last.ckpt``); Ctrl-C writes the
summary so far and exits 130.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import re
import subprocess
import sys
import time

from taosr.configfiles import load_yaml, locate, not_found
from taosr.errors import ConfigError, Interrupted
from taosr.launcher import INTERRUPTED, LIGHTNING_COMMANDS, TERMINATED, parse_error, shared_arguments

ENGINE_KEYS = ("method", "metric", "parameters", "early_terminate")


METHODS = ("grid", "random", "bayes")


def load_sweep(path: str) -> dict:
    path = locate(path)
    if not os.path.exists(path):
        raise ConfigError(not_found(path, "sweep file"))
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


def _first_values(parameters: dict) -> dict:
    """One value of each sweep parameter (``values[0]``, ``value``, else ``min``) for the pre-check."""
    out = {}
    for k, spec in (parameters or {}).items():
        if isinstance(spec, dict):
            for key in ("value", "values", "min"):
                if key in spec:
                    v = spec[key]
                    out[k] = _plain(v[0] if key == "values" and isinstance(v, list) and v else v)
                    break
    return out


def lightning_args(cmd: list[str]) -> list[str] | None:
    """A sweep command's taosr part from its subcommand on (``fit --config ...``); None when it has none."""
    at = next((i for i, c in enumerate(cmd) if c in LIGHTNING_COMMANDS), None)
    return None if at is None else cmd[at:]


def check_command(cfg: dict, extra: list[str], out: str, name: str = "sweep", build: bool = True) -> None:
    """Check the sweep's taosr command with one value of every parameter and the extra arguments
    (:func:`taosr.launcher.parse_error`: parsed and, with ``build``, its data module, module and
    trainer built; nothing is run), so a typo in a parameter's key or an override, or a value a
    constructor refuses, stops the sweep before its first run (each run failed on it, one after the
    other). A dry run only parses."""
    taosr_args = lightning_args(build_command(cfg, _first_values(cfg.get("parameters"))))
    if taosr_args is None:  # not a taosr fit / validate ... command: nothing to parse here
        return
    why = parse_error([*taosr_args, "--trainer.default_root_dir", os.path.join(out, "check"), *extra], build=build)
    if why is not None:
        raise ConfigError(f"sweep {name}: {why} (checked before the first run)")


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


def fixed_arguments(cfg: dict) -> list[str]:
    """The arguments the sweep's ``command:`` gives every run (those after the taosr subcommand,
    without the swept ``${args}``)."""
    args = lightning_args(build_command(cfg, {}))
    return args[1:] if args else []


def run_sweep(path: str, out: str, count: int | None = None, extra: list[str] | None = None,
              dry_run: bool = False) -> list[dict]:
    cfg = load_sweep(path)
    # the command's fixed arguments and the extra ones reach every run: a setting one run does not read is a
    # warning there (setting_checks), e.g. one grm_path in the command of a sweep over examiner modes
    with shared_arguments([*fixed_arguments(cfg), *(extra or [])]):
        return _run_sweep(path, cfg, out, count, extra, dry_run)


def _run_sweep(path: str, cfg: dict, out: str, count: int | None, extra: list[str] | None, dry_run: bool) -> list[dict]:
    import sweeps

    engine_cfg = {k: cfg[k] for k in ENGINE_KEYS if k in cfg}
    metric = (cfg.get("metric") or {}).get("name")
    name = cfg.get("name") or os.path.splitext(os.path.basename(path))[0]
    if count is None:
        count = cfg.get("run_cap") or 10
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"--count {count}: the run budget must be at least 1")
    check_command(cfg, list(extra or []), out, name, build=not dry_run)
    runs, rows, started, next_index = _previous_runs(sweeps, out, metric, list(extra or []))
    if runs:
        print(f"[{name}] {len(runs)} runs finished before: kept, the sweep continues after them", flush=True)
    try:
        while len(runs) < count:
            try:
                proposal = sweeps.next_run(engine_cfg, runs, validate=True)
            except Exception as err:  # noqa: BLE001 - the engine's schema check of the YAML
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ConfigError(f"{path}: invalid sweep: {first[:200]}") from None
            if proposal is None:
                break  # grid exhausted
            params = {k: _plain(v["value"]) for k, v in proposal.config.items()}
            # an interrupted run of the same parameters continues in its folder (a grid proposes it again);
            # otherwise the next free folder (an interrupted random / bayes proposal is left as it is)
            i = next((j for j, rec in started.items() if rec.get("params") == params), None)
            if i is None:
                i, next_index = next_index, next_index + 1
            record = started.pop(i, None)
            run_dir = os.path.join(out, f"run{i:03d}")
            cmd = build_command(cfg, params) + ["--trainer.default_root_dir", run_dir] + list(extra or [])
            ckpt = os.path.join(run_dir, "checkpoints", "last.ckpt")
            resume = ["--ckpt_path", ckpt] if record is not None and os.path.isfile(ckpt) else []
            print(f"[{name} {i}] " + " ".join(cmd + resume), flush=True)
            t0 = time.perf_counter()
            rc = 0
            if not dry_run:
                _write_record(run_dir, {"params": params, "extra": list(extra or []), "state": "started"})
                env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_RUN_GROUP": name}
                rc = _run_child(cmd + resume, env)
                if rc in (INTERRUPTED, TERMINATED):  # the run saved its checkpoint: stop here, a re-run resumes it
                    raise KeyboardInterrupt
            value = read_metric(run_dir, metric) if metric and not dry_run else None
            row = {"run": f"run{i:03d}", **params, **({metric: value} if metric else {}), "exit": rc,
                   "seconds": round(time.perf_counter() - t0, 1)}
            if not dry_run:
                _write_record(run_dir, {"params": params, "extra": list(extra or []), "state": "finished", "row": row})
            runs.append(_engine_run(sweeps, row["run"], params, rc, metric, value))
            rows.append(row)
    except KeyboardInterrupt:
        if rows:
            write_summary(out, rows, metric, cfg.get("metric", {}).get("goal", "maximize"))
        raise Interrupted(f"sweep {name} interrupted after {len(rows)} finished runs (kept in {out}); re-run the "
                          "same command to continue: the interrupted run resumes from its checkpoint") from None
    write_summary(out, rows, metric, cfg.get("metric", {}).get("goal", "maximize"))
    return rows


def _run_child(cmd: list[str], env: dict[str, str]) -> int:
    """Run one trial; a SIGTERM to this process is passed on to it (it saves its checkpoint and exits
    143) instead of leaving it training into a folder a re-run resumes. Ctrl-C reaches it from the
    terminal (same process group)."""
    import signal

    from taosr.jobs import Terminated, raise_on_sigterm

    proc = subprocess.Popen(cmd, env=env)
    previous = raise_on_sigterm()
    try:
        return proc.wait()
    except Terminated:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise KeyboardInterrupt from None
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached it too; a `kill -INT` of this process did not
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # a second Ctrl-C is ignored by a fit already shutting down
        proc.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


RECORD = "sweep-run.json"  # in each run folder: its parameters, the extra arguments, its state and row


def _read_record(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _write_record(run_dir: str, record: dict) -> None:
    from taosr.schema import write_json

    write_json(os.path.join(run_dir, RECORD), record)


def _engine_run(sweeps, run_name: str, params: dict, rc: int, metric: str | None, value: float | None):
    """A finished run as the sweep engine's history holds it (bayes fits on its metric)."""
    run = sweeps.SweepRun(name=run_name, config={k: {"value": v} for k, v in params.items()},
                          state=sweeps.RunState.finished if rc == 0 else sweeps.RunState.failed)
    if value is not None:
        run.summary_metrics = {metric: value}
    return run


def _previous_runs(sweeps, out: str, metric: str | None, extra: list[str]) -> tuple[list, list[dict], dict[int, dict], int]:
    """What earlier ``taosr sweep`` commands into ``out`` left: the engine runs and summary rows of
    every finished run (any ``runNNN`` folder, in order), the records of the runs they started and did
    not finish (index -> record), and the next free index. Runs made with other extra arguments are
    refused (a sweep mixing budgets would compare unlike runs)."""
    runs, rows, started = [], [], {}
    indices = sorted(int(m.group(1)) for d in (os.listdir(out) if os.path.isdir(out) else [])
                     if (m := re.fullmatch(r"run(\d{3,})", d)))
    for i in indices:
        rec = _read_record(os.path.join(out, f"run{i:03d}"))
        if rec is None:
            continue
        if rec.get("extra") != extra:
            raise ConfigError(f"{out}/run{i:03d} ran with other extra arguments ({' '.join(rec.get('extra') or []) or 'none'}; "
                              f"now {' '.join(extra) or 'none'}): use another --out, or the same arguments to continue")
        if rec.get("state") == "finished":
            row = rec["row"]
            runs.append(_engine_run(sweeps, row["run"], rec["params"], row["exit"], metric,
                                    row.get(metric) if metric else None))
            rows.append(row)
        else:
            started[i] = rec
    return runs, rows, started, (indices[-1] + 1 if indices else 0)


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
    # a failed run's metric is its last validation before the failure, and a NaN would win max(): neither is ranked
    scored = [r for r in rows if metric and r.get("exit", 0) == 0 and isinstance(r.get(metric), (int, float))
              and math.isfinite(r[metric])]
    if scored:
        best = (max if goal == "maximize" else min)(scored, key=lambda r: r[metric])
        md.append(f"\nbest: {best['run']} {metric}={best[metric]:.4f}")
    unranked = [r["run"] for r in rows if metric and r not in scored and (r.get("exit", 0) != 0 or r.get(metric) is not None)]
    if unranked:
        md.append(f"not ranked (failed, or no finite {metric}): {', '.join(unranked)}")
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
    p.add_argument("--count", type=int, default=None, help="the sweep's run budget, runs finished before into --out included (default: run_cap or 10; "
                        "grids stop when exhausted)")
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
