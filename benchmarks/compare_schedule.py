"""How long a `taosr compare --jobs N` would take in each scheduling order, from the command times a
compare log measured.

`taosr compare ... --jobs N > compare.log` prints one ``took`` line per command (``[name i/n] arm
seed S: fit took 465s``). This script reads them and replays the same runs over N workers:

* ``submission``: the order before longest-first (a worker keeps a run for its fit and its
  evaluation, and takes the next run in spec order);
* ``longest first``: :func:`taosr.jobs.next_command` without ranks, as ``taosr compare`` ran from
  2026-12-02 to 2026-12-04 (fits before evaluations, the arm expected to run longest first,
  durations learned as commands finish);
* ``seed by seed``: the same with each run ranked by its seed's place, as ``taosr compare`` runs now
  (a seed's fits and evaluations before the next seed's: a comparison stopped early leaves whole
  seeds);
* the lower bound: all work divided by N (no order does better).

Replaying one log's times under each order separates the order's effect from the machine's
speed that day. Prints a markdown table of the wall times, then one of the minute each seed has
every run scored (what a comparison cut short at that minute can pair).

    python benchmarks/compare_schedule.py runs/retime7.log runs/retime8.log [--jobs 2]
"""
from __future__ import annotations

import argparse
import re

from taosr.jobs import Durations, Task, next_command

TOOK = re.compile(r"^\[[^\]]*? (\d+)/(\d+)\] (\S+)(?: seed (\d+))?: (\w+) took (\d+)s\s*$")


ORDERS = ("submission", "longest", "seeds")


def read_log(path: str) -> list[tuple[str, str, int | None, list[tuple[str, float]]]]:
    """(run, arm, seed, [(verb, seconds), ...]) per run, in the spec's run order (the log's i/n)."""
    runs: dict[int, tuple[str, str, int | None, list[tuple[str, float]]]] = {}
    with open(path) as fh:
        for line in fh:
            m = TOOK.match(line.strip())
            if not m:
                continue
            i, _, arm, seed, verb, secs = m.groups()
            name = arm if seed is None else f"{arm} seed {seed}"
            runs.setdefault(int(i), (name, arm, None if seed is None else int(seed), []))[3].append((verb, float(secs)))
    if not runs:
        raise SystemExit(f"{path}: no '... took Ns' lines from taosr compare --jobs")
    return [runs[i] for i in sorted(runs)]


def replay(runs, workers: int, order: str) -> tuple[float, dict[int, float]]:
    """Wall seconds of running ``runs`` over ``workers`` in ``order`` (one of :data:`ORDERS`), and the
    second each seed has all its runs done (the start's evaluation, seedless, counts with every seed)."""
    seeds = list(dict.fromkeys(seed for _, _, seed, _ in runs if seed is not None))
    tasks = [Task(name, [[verb] for verb, _ in cmds], "", group=arm,
                  rank=seeds.index(seed) if order == "seeds" and seed is not None else 0)
             for name, arm, seed, cmds in runs]
    secs = {id(t): [s for _, s in cmds] for t, (_, _, _, cmds) in zip(tasks, runs)}
    seed_of = {id(t): seed for t, (_, _, seed, _) in zip(tasks, runs)}
    durations = Durations()
    ready = [(t, 0) for t in tasks]
    free, active, now = list(range(workers)), [], 0.0
    ended: dict[int | None, float] = {}
    while ready or active:
        while free and ready:
            task, k = ready.pop(next_command(ready, durations) if order != "submission" else 0)
            active.append((now + secs[id(task)][k], task, k, free.pop(0)))
        active.sort(key=lambda a: a[0])
        now, task, k, worker = active.pop(0)
        durations.add(task.group, task.commands[k][0], secs[id(task)][k])
        free.append(worker)
        if k + 1 < len(task.commands):
            # submission order: the worker that ran the fit runs its evaluation next
            ready.insert(0, (task, k + 1)) if order == "submission" else ready.append((task, k + 1))
        else:
            ended[seed_of[id(task)]] = max(ended.get(seed_of[id(task)], 0.0), now)
    start = ended.pop(None, 0.0)
    return now, {seed: max(ended[seed], start) for seed in seeds if seed in ended}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+", help="logs of taosr compare --jobs N")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    print(f"| log | commands | work s | submission order min | longest first min | seed by seed min | "
          f"work / {a.jobs} min |")
    print("|---|---|---|---|---|---|---|")
    whole = []
    for path in a.logs:
        runs = read_log(path)
        work = sum(s for _, _, _, cmds in runs for _, s in cmds)
        n = sum(len(cmds) for _, _, _, cmds in runs)
        done = {order: replay(runs, a.jobs, order) for order in ORDERS}
        print(f"| {path} | {n} | {work:.0f} | " + " | ".join(f"{done[o][0] / 60:.1f}" for o in ORDERS)
              + f" | {work / a.jobs / 60:.1f} |")
        whole += [(path, o, done[o][1]) for o in ORDERS]
    print("\n| log | order | minute each seed has every run scored, in seed order |\n|---|---|---|")
    for path, order, ends in whole:
        print(f"| {path} | {order} | " + ", ".join(f"{s}: {t / 60:.1f}" for s, t in ends.items()) + " |")


if __name__ == "__main__":
    main()
