"""``taosr sweep FILE``: run a W&B sweep YAML locally, without a W&B server.

The same YAML runs unchanged with ``wandb sweep FILE`` + ``wandb agent``. Locally, W&B's
open-source sweep engine (the ``sweeps`` package) proposes each run (grid, random or bayes, the
latter fitted on the finished runs' metric), W&B's own macro expansion turns the YAML's
``command:`` into the run's command line exactly as ``wandb agent`` would, and each run logs
under ``--out/<run>`` (W&B group: the sweep's name, run name ``<name>-runNNN``; offline unless W&B
credentials are configured). The sweep metric is read from the run's own evaluation files
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

from taosr.cliargs import passed_on
from taosr.configfiles import load_yaml, locate, not_found
from taosr.errors import ConfigError, Interrupted
from taosr.launcher import INTERRUPTED, LIGHTNING_COMMANDS, RESUME_HINT_ENV, TERMINATED, parse_error, shared_arguments

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


def _values_to_check(spec) -> list:
    """The values of one sweep parameter the pre-check tries: every one of ``values``, ``value``,
    else ``min`` and ``max`` of a distribution."""
    if not isinstance(spec, dict):
        return []
    if "value" in spec:
        return [_plain(spec["value"])]
    if isinstance(spec.get("values"), list) and spec["values"]:
        return [_plain(v) for v in spec["values"]]
    return [_plain(spec[k]) for k in ("min", "max") if k in spec]


def _check_points(parameters: dict) -> list[dict]:
    """Parameter sets that together try every value of every parameter once: the first values of all,
    then each other value of one parameter with the others at their first (a typo in the third value
    of a grid failed that run only, hours into the sweep)."""
    values = {k: _values_to_check(spec) for k, spec in (parameters or {}).items()}
    first = {k: v[0] for k, v in values.items() if v}
    points = [first]
    for k, vs in values.items():
        points += [{**first, k: v} for v in vs[1:]]
    return points


def grid_size(cfg: dict) -> int | None:
    """How many runs a grid sweep has (the product of its parameters' value counts); None for another method."""
    if cfg.get("method") != "grid":
        return None
    size = 1
    for spec in (cfg.get("parameters") or {}).values():
        if isinstance(spec, dict) and isinstance(spec.get("values"), list):
            size *= max(1, len(spec["values"]))
    return size


def lightning_args(cmd: list[str]) -> list[str] | None:
    """A sweep command's taosr part from its subcommand on (``fit --config ...``); None when it has none."""
    at = next((i for i, c in enumerate(cmd) if c in LIGHTNING_COMMANDS), None)
    return None if at is None else cmd[at:]


def check_command(cfg: dict, extra: list[str], out: str, where: str = "sweep", build: bool = True) -> None:
    """Check the sweep's taosr command with every value of every parameter (:func:`_check_points`)
    and the extra arguments (:func:`taosr.launcher.parse_error`: parsed and, with ``build``, its
    data module, module and trainer built; nothing is run), so a typo in a parameter's key, a value
    or an override, or a value a constructor refuses, stops the sweep before its first run (each run
    failed on it, one after the other). A dry run only parses. ``where`` (the sweep file) heads the error."""
    for params in _check_points(cfg.get("parameters")):
        taosr_args = lightning_args(build_command(cfg, params))
        if taosr_args is None:  # not a taosr fit / validate ... command: nothing to parse here
            return
        why = parse_error([*taosr_args, "--trainer.default_root_dir", os.path.join(out, "check"), *extra], build=build)
        if why is not None:
            tried = ", ".join(f"{k}={v}" for k, v in params.items())
            raise ConfigError(f"{where}: {why} (checked before the first run, with {tried})")


def check_metric(cfg: dict, where: str) -> None:
    """The sweep metric is one a run writes: ``val/<m>`` (every run validates) or, for a command that
    tests, ``test/<m>``; a name it never writes left every row empty and the sweep unranked."""
    metric = (cfg.get("metric") or {}).get("name")
    if not metric:
        return
    split, _, key = str(metric).partition("/")
    sub = (lightning_args(build_command(cfg, {})) or ["fit"])[0]
    splits = ("val", "test") if sub in ("test", "validate") else ("val",)
    if split not in splits or not key:
        raise ConfigError(f"{where}: metric {metric!r}: a `taosr {sub}` run writes {' and '.join(splits)}/<metric> "
                          "(e.g. val/macro_f1, val/long_tail/macro_f1)")


def metric_keys(run_dir: str, metric: str) -> list[str]:
    """The metrics a finished run wrote in the metric's split (to name them when the metric is not one)."""
    split = metric.partition("/")[0]
    f = _metrics_file(run_dir, split)
    if f is None:
        return []
    with open(f) as fh:
        return sorted(f"{split}/{k}" for k in json.load(fh))


def _metrics_file(run_dir: str, split: str) -> str | None:
    """A run's metrics of ``split``: ``eval/test-metrics.json``, or its last validation's file."""
    if split == "test":
        files = [os.path.join(run_dir, "eval", "test-metrics.json")]
    else:
        files = sorted(glob.glob(os.path.join(run_dir, "eval", f"{split}-step*-metrics.json")),
                       key=lambda f: int(re.search(r"step(\d+)", f).group(1)))[-1:]
    return next((f for f in files if os.path.exists(f)), None)


def read_metric(run_dir: str, name: str) -> float | None:
    split, _, key = name.partition("/")
    f = _metrics_file(run_dir, split)
    if f is None:
        return None
    with open(f) as fh:
        v = json.load(fh).get(key)
    return None if v is None else float(v)


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
    size = grid_size(cfg)
    if count is None:  # a grid runs to its end; random / bayes need a budget
        count = cfg.get("run_cap") or size or 10
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"--count {count}: the run budget must be at least 1")
    if size is not None and count < size:
        print(f"taosr sweep: warning: --count {count} (or run_cap) is less than the grid's {size} points: the last "
              f"{size - count} are left out", file=sys.stderr, flush=True)
    check_metric(cfg, path)
    check_command(cfg, list(extra or []), out, path, build=not dry_run)
    runs, rows, started, next_index = _previous_runs(sweeps, out, metric, list(extra or []))
    if runs:
        print(f"[{name}] {len(runs)} runs finished before: kept, the sweep continues after them", flush=True)
    redo = sum(1 for rec in started.values() if rec.get("state") == "finished")
    if redo:
        print(f"[{name}] {redo} runs failed before: run again", flush=True)
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
            run_dir = os.path.join(out, row_name(i))
            cmd = build_command(cfg, params) + ["--trainer.default_root_dir", run_dir] + list(extra or [])
            ckpt = os.path.join(run_dir, "checkpoints", "last.ckpt")
            resume = ["--ckpt_path", ckpt] if record is not None and os.path.isfile(ckpt) else []
            print(f"[{name} {i}] " + " ".join(cmd + resume), flush=True)
            t0 = time.perf_counter()
            rc = 0
            if not dry_run:
                _write_record(run_dir, {"params": params, "extra": list(extra or []), "state": "started"})
                # online where W&B credentials are (the logger's rule), grouped by sweep, each run named
                from taosr.loggers import RUN_NAME_ENV

                env = {**os.environ, "WANDB_RUN_GROUP": name, "WANDB_JOB_TYPE": "sweep",
                       RUN_NAME_ENV: f"{name}-{row_name(i)}",
                       RESUME_HINT_ENV: "re-run the taosr sweep command to continue (it resumes this run)"}
                rc = _run_child(cmd + resume, env)
                if rc in (INTERRUPTED, TERMINATED):  # the run saved its checkpoint: stop here, a re-run resumes it
                    raise KeyboardInterrupt
            value = read_metric(run_dir, metric) if metric and not dry_run else None
            if metric and not dry_run and rc == 0 and value is None:
                known = metric_keys(run_dir, metric)
                print(f"taosr sweep: warning: {row_name(i)} wrote no {metric}"
                      + (f" (it wrote {', '.join(known[:12])}{' ...' if len(known) > 12 else ''})" if known else ""),
                      file=sys.stderr, flush=True)
            row = {"run": row_name(i), **params, **({metric: value} if metric else {}), "exit": rc,
                   "seconds": round(time.perf_counter() - t0, 1)}
            if not dry_run:
                _write_record(run_dir, {"params": params, "extra": list(extra or []), "state": "finished", "row": row})
            runs.append(_engine_run(sweeps, row["run"], params, rc, metric, value))
            rows.append(row)
    except KeyboardInterrupt:
        if rows and not dry_run:
            write_summary(out, rows, metric, cfg.get("metric", {}).get("goal", "maximize"))
        raise Interrupted(f"sweep {name} interrupted after {len(rows)} finished runs (kept in {out}); re-run the "
                          "same command to continue: the interrupted run resumes from its checkpoint") from None
    if not dry_run:  # a dry run ran nothing: the summary of the runs that did run stays as it is
        write_summary(out, rows, metric, cfg.get("metric", {}).get("goal", "maximize"))
    return rows


def row_name(i: int) -> str:
    return f"run{i:03d}"


def _run_child(cmd: list[str], env: dict[str, str]) -> int:
    """Run one trial in a session of its own. Ctrl-C (a terminal's reaches this process only) or
    SIGTERM to this process stops it with exactly one Ctrl-C to its process group, as compare stops
    its workers (:func:`taosr.jobs.stop_workers`: a fit stops inside its step and saves; on SIGTERM
    Lightning would wait for the step's end), instead of leaving it training into a folder a re-run
    resumes. Before, the trial shared the terminal's process group and got the terminal's Ctrl-C and
    this process's too: a second Ctrl-C stops a DDP fit without saving."""
    from taosr.jobs import ignore_stops, raise_on_sigterm, restore_handlers, stop_workers, stops_held, take_ctrl_c

    saved, proc = raise_on_sigterm(), None
    try:
        with stops_held():  # a stop arriving as the trial starts is taken once `proc` is known
            proc = subprocess.Popen(cmd, env=env, preexec_fn=take_ctrl_c, start_new_session=True)
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (taosr.jobs.Terminated)
        ignore_stops()
        if proc is not None and proc.poll() is None:
            stop_workers([proc], say=lambda line: print(f"taosr sweep: {line}", flush=True))
        raise KeyboardInterrupt from None
    finally:
        restore_handlers(saved)


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
    every run that finished well (any ``runNNN`` folder, in order), the records of the runs they
    started and did not finish or that failed (index -> record: run again, in their folders), and
    the next free index. Runs made with other extra arguments are
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
        if rec.get("state") == "finished" and rec["row"].get("exit") == 0:
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
    if len(scored) > 1 and len({r[metric] for r in scored}) == 1:  # no run is best
        md.append(f"\nall {len(scored)} runs tie: {metric}={scored[0][metric]:.4f}")
    elif scored:
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
    p.add_argument("--count", type=int, default=None, help="the sweep's run budget, runs finished before into --out included (default: run_cap, "
                        "else a grid's every point, else 10)")
    p.add_argument("--out", default=None, help="default runs/sweeps/<the YAML file's name>")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    a, extra = p.parse_known_args(argv)
    extra = passed_on(extra)
    out = a.out or os.path.join("runs", "sweeps", os.path.splitext(os.path.basename(a.file))[0])
    rows = run_sweep(a.file, out, a.count, extra, a.dry_run)
    failed = [r["run"] for r in rows if r["exit"] != 0]
    if rows and len(failed) == len(rows):
        raise ConfigError(f"{a.file}: every run of the sweep failed (exit {rows[0]['exit']} first); "
                          f"see {out}/summary.md and the runs' output above")
    if failed:  # not a success: a script or scheduler must see it; the same command runs them again
        print(f"taosr sweep: {len(failed)} of {len(rows)} runs failed: {', '.join(failed)} (the same command runs "
              "them again, the finished ones kept)", file=sys.stderr)
        return 2
    return 0
