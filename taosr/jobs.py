"""Run taosr commands in parallel worker processes, each with its own share of the machine.

``taosr compare --jobs N`` hands its runs to :func:`run_parallel`: N workers, each a slot with a
disjoint set of CPU cores (its torch threads = its core count) and, where CUDA devices exist, one
GPU (``CUDA_VISIBLE_DEVICES``; slots share GPUs round-robin when N exceeds them). A *task* is a
list of commands run one after the other (a fit, then its evaluation); each command is
``python -m taosr.cli ARGS`` with its output appended to the task's log file, so N interleaved
progress bars never reach the terminal. A small model gains little from a second torch thread,
so N one-core jobs finish a batch of runs nearly N times sooner than one job with N threads.

Which command a free worker starts (:func:`next_command`): the commands of one task still run in
order, but not necessarily in one slot. A free worker takes a ready command of the lowest *rank*
(``taosr compare`` ranks its runs by seed), then a fit before an evaluation, then the one expected
to run longest. Durations are learned as commands finish (:class:`Durations`, mean seconds per
task group and command: a compare arm's fits take alike), and a group with none finished counts
as the longest, so every arm's first fit starts early. Longest-first keeps a long fit from
starting last while the other workers sit idle (list scheduling, longest processing time first);
within a rank evaluations, a fifth of a fit's time, fill its end. Ranks first make a comparison
stopped early (a time limit, a lent machine given back) leave whole seeds, every arm fitted and
scored, which are what its paired differences need, rather than many seeds of the slowest arm.

A failed command ends its task; running tasks finish, no new task starts, and the failures are
returned (the caller names them and their logs). Ctrl-C, or SIGTERM to this process, is passed on
to every worker as a Ctrl-C (they run in their own sessions, so a signal to this process's group
would not reach them) and ends :func:`run_parallel` with :class:`taosr.errors.Interrupted` once
they have exited. A Ctrl-C, not the SIGTERM received, sent to the worker's process group as a
terminal would: a single-process fit stops at once on Ctrl-C and saves the start of the step it was
in, which its resume redoes exactly (:mod:`taosr.callbacks.checkpoint`), while Lightning acts on
SIGTERM only at the next batch boundary, and one RL step of a real model on a CPU takes minutes
(SmolLM2 GRPO on one core: 90-125 s). A multi-process (DDP) fit stops every rank at the end of its
step either way (:mod:`taosr.callbacks.ranks`). Workers still running :data:`STOP_WAIT_S` seconds
later are killed, their ranks with them, without saving. Workers take Ctrl-C even where this
process ignores it (started with ``&`` from a script, whose shell sets SIGINT to ignored, which
children inherit). A command stopped by a signal sent to its worker alone (``kill`` of its pid:
exit 130 or 143) stops everything the same way, rather than counting as a failure while the freed
worker starts the next command. A stop that arrives while a worker is being started is held until
the worker is registered (:func:`stops_held`), so it is stopped too. An error in this process
itself (a worker's log it cannot open) stops the running workers the same way before it is raised.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from taosr.errors import Interrupted


@dataclass
class Slot:
    index: int
    cpus: list[int]
    gpu: str | None = None

    def env(self) -> dict[str, str]:
        n = str(max(1, len(self.cpus)))
        env = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env

    def describe(self) -> str:
        cpus = ",".join(map(str, self.cpus)) if self.cpus else "any"
        return f"cpus {cpus}" + (f", gpu {self.gpu}" if self.gpu is not None else "")


@dataclass
class Task:
    name: str                      # shown in progress lines
    commands: list[list[str]]      # taosr argv lists, run in order
    log: str                       # file the commands' output is appended to
    group: str = ""                # tasks of one group (a compare arm) are expected to take alike
    rank: int = 0                  # lower ranks start first (a compare: the seed's place in its seeds)
    failed: tuple[int, int] | None = field(default=None, init=False)  # (command index, exit status)


TRAINING_VERBS = ("fit",)


class Durations:
    """Mean seconds per (task group, command verb) of the commands finished so far."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # (total seconds, count)

    def add(self, group: str, verb: str, seconds: float) -> None:
        total, n = self._seen.get((group, verb), (0.0, 0))
        self._seen[(group, verb)] = (total + float(seconds), n + 1)

    def expect(self, group: str, verb: str) -> float | None:
        total, n = self._seen.get((group, verb), (0.0, 0))
        return total / n if n else None


def next_command(ready: list[tuple[Task, int]], durations: Durations) -> int:
    """Index into ``ready`` ((task, command index) pairs, in the order they became ready) of the
    command a free worker should start: the lowest task rank, then training before evaluation (a
    short evaluation never holds up a fit, and evaluations fill the end of their rank), then the
    longest expected (a group with no finished command of that verb counts as infinitely long, so it
    is measured early), then the earliest ready."""
    def key(i: int):
        task, k = ready[i]
        verb = task.commands[k][0]
        est = durations.expect(task.group, verb)
        return (task.rank, verb not in TRAINING_VERBS, -(math.inf if est is None else est), i)

    return min(range(len(ready)), key=key)


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries ([] without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA runtime
        n = 0
    if n == 0:
        return []
    ids = [d.strip() for d in env.split(",") if d.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


def make_slots(jobs: int, cpus: list[int] | None = None, gpus: list[str] | None = None) -> list[Slot]:
    """``jobs`` slots with disjoint, contiguous core sets (cores shared round-robin when jobs exceed
    them) and GPUs assigned round-robin."""
    cpus = available_cpus() if cpus is None else list(cpus)
    gpus = visible_gpus() if gpus is None else list(gpus)
    slots = []
    for i in range(jobs):
        if len(cpus) >= jobs:
            lo, hi = i * len(cpus) // jobs, (i + 1) * len(cpus) // jobs
            mine = cpus[lo:hi]
        else:
            mine = [cpus[i % len(cpus)]] if cpus else []
        slots.append(Slot(i, mine, gpus[i % len(gpus)] if gpus else None))
    return slots


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def take_ctrl_c() -> None:
    """In a child before exec: SIGINT back to its default, which Python turns into KeyboardInterrupt
    again (a parent started with ``&`` from a script ignores SIGINT, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def stops_held():
    """Ctrl-C and SIGTERM held back while a worker starts and is registered (one arriving between
    its start and its registration would leave it running, unknown to the stop): a handler that only
    notes them stands in, and on leaving the first one noted is acted on as the handler before would
    have. Python handlers, not a signal mask: a mask holds one thread, and the kernel hands a process's
    signal to any thread that has not blocked it (torch starts threads). A signal ignored before
    stays ignored; on a thread other than the main one (where handlers cannot be set) nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    saved: dict[int, object] = {}
    try:
        for sig in STOP_SIGNALS:
            old = signal.getsignal(sig)
            if old is None or old == signal.SIG_IGN:  # not set from Python (cannot be put back), or ignored
                continue
            saved[sig] = old
            signal.signal(sig, lambda signum, frame: noted.append(signum))
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
    if noted:
        old = saved[noted[0]]
        if callable(old):
            old(noted[0], None)  # KeyboardInterrupt, or Terminated from raise_on_sigterm's handler
        else:  # SIG_DFL: what it does (SIGTERM ends the process)
            signal.raise_signal(noted[0])


def _start(cmd: list[str], slot: Slot, log: str, env: dict[str, str]) -> subprocess.Popen:
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    fh = open(log, "a")
    fh.write(f"\n$ taosr {' '.join(cmd)}    # {slot.describe()}\n")
    fh.flush()
    cpus = slot.cpus

    def pin() -> None:  # in the child, before exec
        take_ctrl_c()
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen([sys.executable, "-m", "taosr.cli", *cmd], stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, **env, **slot.env()}, preexec_fn=pin,
                            start_new_session=True)  # a terminal's Ctrl-C reaches the parent only, which passes one on
    fh.close()  # the child holds its own descriptor
    return proc


STOP_WAIT_S = 300  # after the Ctrl-C passed on, how long the workers may take to save before they are killed


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to the worker's process group (it leads one: its own session), its ranks included."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# a worker's exit when it was stopped by a signal sent to it (not to this process): the launcher's
# 130 / 143 after its save, or the signal itself where it had no handler yet (loading a model)
STOPPED_EXITS = {130: "Ctrl-C", 143: "SIGTERM", -signal.SIGINT: "Ctrl-C", -signal.SIGTERM: "SIGTERM"}


def stop_workers(procs: list[subprocess.Popen], say: Callable[[str], None] = print) -> int:
    """Stop running workers, each the leader of its own process group, as a terminal's Ctrl-C would
    (every rank of a DDP fit gets it); a group still running :data:`STOP_WAIT_S` seconds later is
    killed. Returns how many were killed. The caller ignores SIGINT and SIGTERM meanwhile: a second
    signal must not abandon the workers mid-save."""
    if procs:
        say(f"stopping {len(procs)} running commands: each saves its checkpoint (a multi-process fit at the "
            f"end of its step); one still running after {STOP_WAIT_S} s is killed")
    for proc in procs:
        _signal_group(proc, signal.SIGINT)
    killed, deadline = 0, time.monotonic() + STOP_WAIT_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)  # its ranks too, not just the launcher
            proc.wait()
            killed += 1
    return killed


def ignore_stops() -> None:
    """SIGINT and SIGTERM ignored while workers save (nothing off the main thread, where they cannot
    be set); :func:`restore_handlers` gives back what :func:`raise_on_sigterm` saved."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:
            pass


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the parent: handled like Ctrl-C (the workers are stopped and save their checkpoints)."""


class WorkerStopped(KeyboardInterrupt):
    """A worker was stopped by a signal sent to it: the whole run stops, as if this process had been
    (``kill`` of one worker's pid stopped that run, and the freed worker started the next one)."""

    def __init__(self, task: Task, verb: str, rc: int):
        super().__init__()
        self.task, self.verb, self.rc = task, verb, rc


def _raise_terminated(signum, frame):
    raise Terminated()


def raise_on_sigterm() -> tuple | None:
    """Turn SIGTERM into :class:`Terminated` while workers run; this process's SIGTERM and SIGINT
    handlers, for :func:`restore_handlers` (None when they cannot be set: not the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated), signal.getsignal(signal.SIGINT)
    except ValueError:
        return None


def restore_handlers(saved: tuple | None) -> None:
    """The handlers :func:`raise_on_sigterm` saved, back in place (after :func:`ignore_stops` too)."""
    for sig, handler in zip((signal.SIGTERM, signal.SIGINT), saved or ()):
        if handler is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(sig, handler)


def exit_line(verb: str, rc: int) -> str:
    """What a worker's log gets when its command ends early (a crash prints only a traceback): read
    back by ``taosr compare --report-only`` (:data:`ENDED`)."""
    return f"taosr compare: taosr {verb} {'stopped' if rc in STOPPED_EXITS else 'failed'} (exit {rc})\n"


# how a command's end reads in its log: the launcher's own lines, and exit_line's
ENDED = re.compile(r"^taosr: (?:(interrupted|terminated)|error: )|^taosr compare: taosr \S+ (stopped|failed) \(exit", re.M)


def _say_exit(log: str, verb: str, rc: int) -> None:
    try:
        with open(log, "a") as fh:
            fh.write(exit_line(verb, rc))
    except OSError:
        pass


def run_parallel(tasks: list[Task], slots: list[Slot], env: Callable[[Task, int], dict[str, str]] | None = None,
                 say: Callable[[str], None] = print, poll_s: float = 0.5,
                 durations: Durations | None = None, keep_going: bool = False) -> list[Task]:
    """Run ``tasks`` over ``slots``, each free slot taking the :func:`next_command`; returns the tasks
    that failed (``task.failed`` set; a failed task's later commands never run). Without
    ``keep_going`` no task starts after a failure (running ones finish theirs); with it the others all
    run. ``durations`` (learned here when not given) collects how long each finished command took."""
    ready: list[tuple[Task, int]] = [(t, 0) for t in tasks if t.commands]
    free = list(slots)
    active: dict[int, tuple[Task, int, subprocess.Popen, float, Slot]] = {}
    failed: list[Task] = []
    durations = Durations() if durations is None else durations
    t_start, busy = time.perf_counter(), 0.0

    def launch(task: Task, k: int, slot: Slot) -> None:
        with stops_held():  # a stop that arrives now is taken once the worker is known, so it is stopped too
            proc = _start(task.commands[k], slot, task.log, env(task, k) if env else {})
            active[proc.pid] = (task, k, proc, time.perf_counter(), slot)
        say(f"{task.name}: taosr {task.commands[k][0]} started ({slot.describe()}; log {task.log})")

    saved = raise_on_sigterm()
    try:
        while ready or active:
            if failed and not keep_going:  # no new task starts after a failure; running tasks finish theirs
                ready = [(t, k) for t, k in ready if k > 0]
            while free and ready:
                task, k = ready.pop(next_command(ready, durations))
                launch(task, k, free.pop(0))
            if not active:
                break
            time.sleep(poll_s)
            for pid, (task, k, proc, t0, slot) in list(active.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del active[pid]
                free.append(slot)
                verb = task.commands[k][0]
                took = time.perf_counter() - t0
                busy += took
                if rc:
                    _say_exit(task.log, verb, rc)
                if rc in STOPPED_EXITS:
                    raise WorkerStopped(task, verb, rc)
                if rc:
                    task.failed = (k, rc)
                    failed.append(task)
                    say(f"{task.name}: taosr {verb} failed (exit {rc}); log {task.log}")
                    continue
                durations.add(task.group, verb, took)
                say(f"{task.name}: {verb} took {took:.0f}s")
                if k + 1 < len(task.commands):
                    ready.append((task, k + 1))
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM (Terminated), a stopped worker: the workers are in their own sessions
        ignore_stops()  # a second signal must not abandon the workers mid-save (the handlers are restored below)
        how = ("SIGTERM" if isinstance(err, Terminated) else STOPPED_EXITS[err.rc] if isinstance(err, WorkerStopped)
               else "Ctrl-C")
        running = [proc for _, _, proc, _, _ in active.values() if proc.poll() is None]
        killed = stop_workers(running, say)
        lost = (f"; {killed} did not stop within {STOP_WAIT_S} s and were killed, without saving" if killed else "")
        what = (f"{err.task.name}: taosr {err.verb} was stopped ({how}, exit {err.rc}; log {err.task.log}); stopped "
                f"the {len(running)} other running commands" if isinstance(err, WorkerStopped)
                else f"interrupted ({how}): stopped {len(running)} running commands")
        before = "".join(f"; failed before: {t.name} (`taosr {t.commands[t.failed[0]][0]}` exit {t.failed[1]}, "
                         f"log {t.log})" for t in failed)
        raise Interrupted(f"{what} (a fit saves its checkpoint){lost}{before}; finished work is kept: re-run the "
                          "same command to continue", 143 if how == "SIGTERM" else 130) from None
    except Exception:  # this process failed (a log it cannot open, a worker that cannot start): no worker outlives it
        ignore_stops()
        stop_workers([proc for _, _, proc, _, _ in active.values() if proc.poll() is None], say)
        raise
    finally:
        restore_handlers(saved)
    wall = time.perf_counter() - t_start
    if slots:
        say(f"{len(slots)} workers: {wall:.0f}s wall, {busy:.0f}s of commands "
            f"({busy / (wall * len(slots)):.0%} of the workers' time)")
    return failed
