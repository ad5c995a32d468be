"""taosr.jobs: worker slots (cores, GPUs) and the parallel runner (real `python -m taosr.cli` processes)."""
import os

import pytest

from taosr.jobs import Slot, Task, make_slots, run_parallel
from tests.conftest import ROOT


def test_slots_split_cores_and_share_gpus():
    a, b = make_slots(2, cpus=[0, 1, 2, 3], gpus=[])
    assert (a.cpus, b.cpus) == ([0, 1], [2, 3]) and a.gpu is None
    assert a.env() == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    three = make_slots(3, cpus=[4, 5], gpus=["2", "5"])
    assert [s.cpus for s in three] == [[4], [5], [4]]           # more jobs than cores: shared round-robin
    assert [s.gpu for s in three] == ["2", "5", "2"]
    assert three[1].env()["CUDA_VISIBLE_DEVICES"] == "5" and three[1].env()["OMP_NUM_THREADS"] == "1"
    assert [s.cpus for s in make_slots(3, cpus=list(range(8)), gpus=[])] == [[0, 1], [2, 3, 4], [5, 6, 7]]


def test_run_parallel_runs_commands_in_order_and_stops_after_a_failure(tmp_path):
    logs = [str(tmp_path / f"t{i}" / "log") for i in range(3)]
    ok = Task("ok", [["--help"], ["--help"]], logs[0])
    bad = Task("bad", [["no-such-command"], ["--help"]], logs[1])
    never = Task("never", [["--help"]], logs[2])
    lines = []
    failed = run_parallel([ok, bad, never], [Slot(0, [])], env=lambda t, k: {"TAOSR_TEST_TASK": t.name},
                          say=lines.append, poll_s=0.05)
    assert failed == [bad] and bad.failed == (0, 2) and ok.failed is None
    text = open(logs[0]).read()
    assert text.count("$ taosr --help") == 2 and "usage: taosr COMMAND" in text
    bad_log = open(logs[1]).read()
    assert "unknown command 'no-such-command'" in bad_log and "$ taosr --help" not in bad_log  # its next step never ran
    assert not os.path.exists(logs[2])                                      # no new task after a failure
    assert any(line.startswith("bad: taosr no-such-command failed (exit 2)") for line in lines)
    # keep_going (taosr compare's default): the failure ends only its own task; the next task still runs
    logs2 = [str(tmp_path / f"k{i}" / "log") for i in range(2)]
    bad2, other = Task("bad", [["no-such-command"], ["--help"]], logs2[0]), Task("other", [["--help"]], logs2[1])
    assert run_parallel([bad2, other], [Slot(0, [])], say=lines.append, poll_s=0.05, keep_going=True) == [bad2]
    assert "$ taosr --help" not in open(logs2[0]).read() and "usage: taosr COMMAND" in open(logs2[1]).read()


def test_compare_jobs_must_be_positive(tmp_path):
    from taosr.compare import compare_main
    from taosr.errors import ConfigError

    with pytest.raises(ConfigError, match="--jobs 0: must be at least 1"):
        compare_main(["comparisons/srpo_vs_grpo.yaml", "--jobs", "0"])
    with pytest.raises(ConfigError, match="--report-only: no finished runs under"):
        compare_main([os.path.join(ROOT, "comparisons", "srpo_vs_grpo.yaml"), "--report-only", "--out", str(tmp_path)])


def _task(name, verbs, group):
    return Task(name, [[v] for v in verbs], f"/nonexistent/{name}.log", group=group)


def test_next_command_prefers_fits_then_the_longest_then_the_unmeasured():
    from taosr.jobs import Durations, next_command

    d = Durations()
    grpo0, srpo0 = _task("grpo0", ["fit", "test"], "grpo"), _task("srpo0", ["fit", "test"], "srpo")
    start = _task("start", ["test"], "start")
    # nothing measured: fits before the evaluation, ties in the order they became ready
    assert next_command([(start, 0), (grpo0, 0), (srpo0, 0)], d) == 1
    d.add("grpo", "fit", 330.0)
    d.add("grpo", "fit", 350.0)
    assert d.expect("grpo", "fit") == 340.0 and d.expect("srpo", "fit") is None
    grpo1, srpo1 = _task("grpo1", ["fit", "test"], "grpo"), _task("srpo1", ["fit", "test"], "srpo")
    # an arm with no finished fit counts as the longest: it starts before the measured one
    assert next_command([(grpo0, 1), (grpo1, 0), (srpo1, 0)], d) == 2
    d.add("srpo", "fit", 500.0)
    assert next_command([(grpo0, 1), (grpo1, 0), (srpo1, 0)], d) == 2   # measured longer
    d.add("srpo", "fit", 100.0)                                        # now shorter on average (300 s)
    assert next_command([(grpo0, 1), (grpo1, 0), (srpo1, 0)], d) == 1
    # evaluations only when no fit is ready: the longest (or unmeasured) first
    d.add("grpo", "test", 90.0)
    assert next_command([(grpo0, 1), (start, 0), (srpo0, 1)], d) == 1
    d.add("start", "test", 80.0)
    d.add("srpo", "test", 120.0)
    assert next_command([(grpo0, 1), (start, 0), (srpo0, 1)], d) == 2


def test_next_command_takes_the_lowest_rank_first_so_a_stopped_comparison_leaves_whole_seeds():
    """A lent machine given back mid-comparison keeps what finished: with the slowest arm measured,
    longest-first alone would fit that arm's every seed before the other arm's second, leaving one
    pair. Ranks (seeds) come first: seed 0's evaluations before seed 1's fits, longest first within."""
    from taosr.jobs import Durations, next_command

    d = Durations()
    d.add("grpo", "fit", 300.0)
    d.add("srpo", "fit", 500.0)
    grpo0 = Task("grpo0", [["fit"], ["test"]], "/nonexistent/g0.log", group="grpo", rank=0)
    grpo1 = Task("grpo1", [["fit"], ["test"]], "/nonexistent/g1.log", group="grpo", rank=1)
    srpo1 = Task("srpo1", [["fit"], ["test"]], "/nonexistent/s1.log", group="srpo", rank=1)
    srpo2 = Task("srpo2", [["fit"], ["test"]], "/nonexistent/s2.log", group="srpo", rank=2)
    assert next_command([(srpo2, 0), (srpo1, 0), (grpo0, 1)], d) == 2   # seed 0's evaluation first
    assert next_command([(srpo2, 0), (grpo1, 0), (srpo1, 0)], d) == 2   # then seed 1, the longer arm
    assert next_command([(srpo2, 0), (grpo1, 0)], d) == 1
    assert next_command([(grpo1, 1), (srpo2, 0)], d) == 0               # within seed 1 still before seed 2


def test_compare_ranks_its_parallel_runs_by_seed(monkeypatch, capsys):
    """`taosr compare --jobs` hands each run's rank (its seed's place, the start with the first) to the
    workers: the order of --seeds, not the seed's value."""
    import taosr.jobs
    from taosr.compare import _run_parallel, load_spec, plan_runs

    spec = load_spec(os.path.join(ROOT, "comparisons", "srpo_vs_grpo.yaml"), seeds=[7, 3])
    runs = plan_runs(spec, "/nonexistent/out")
    seen = {}
    monkeypatch.setattr(taosr.jobs, "run_parallel",
                        lambda tasks, slots, **kw: seen.update({t.name: t.rank for t in tasks}) or [])
    _run_parallel(spec, [(f"{r.arm}{r.seed}", r, [["fit"], ["test"]]) for r in runs], jobs=2)
    assert len(seen) == len(runs) > 3 and seen["startNone"] == 0, seen
    assert all(rank == {"7": 0, "3": 1}[name[-1]] for name, rank in seen.items() if name != "startNone"), seen


def test_run_parallel_keeps_each_task_in_order_over_two_slots_and_learns_durations(tmp_path):
    from taosr.jobs import Durations

    tasks = [Task(f"t{i}", [["--help"], ["help"]], str(tmp_path / f"t{i}.log"), group="g") for i in range(3)]
    lines, d = [], Durations()
    failed = run_parallel(tasks, [Slot(0, []), Slot(1, [])], say=lines.append, poll_s=0.02, durations=d)
    assert failed == []
    for t in tasks:
        text = open(t.log).read()
        assert text.index("$ taosr --help") < text.index("$ taosr help")  # a task's commands stay in order
    assert d.expect("g", "--help") > 0 and d.expect("g", "help") > 0
    assert sum(" took " in line for line in lines) == 6
    assert lines[-1].startswith("2 workers: ") and "of the workers' time" in lines[-1]


def _running_with(marker: str) -> list[str]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    pids.append(pid)
        except OSError:
            pass
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to find the worker")
def test_sigterm_to_the_parent_stops_the_workers(tmp_path):
    """Workers run in their own sessions (a terminal's Ctrl-C reaches the parent only), so a SIGTERM
    to the parent (a scheduler, `kill`) must be passed on: no worker may outlive it and keep writing
    into run folders a re-run then uses."""
    import signal
    import threading

    from taosr.errors import Interrupted

    out = str(tmp_path / "synth-marker-7f3a")
    slow = Task("slow", [["data", "synth", "--n", "20000000", "--out", out]], str(tmp_path / "log"))
    started = []

    def say(line):
        started.append(line)
        if "started" in line:  # the worker runs: SIGTERM this process, as `kill <pid>` would
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match=r"interrupted \(SIGTERM\): stopped 1 running commands") as err:
        run_parallel([slow], [Slot(0, [])], say=say, poll_s=0.05)
    assert err.value.code == 143
    assert _running_with(out) == []
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is this process's own again


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to find the worker")
def test_a_stop_reaches_the_workers_as_ctrl_c_even_where_this_process_ignores_it(tmp_path, monkeypatch):
    """A worker is stopped with Ctrl-C, whatever this process received: a fit saves at once on
    Ctrl-C, but on SIGTERM only after the step it is in, minutes for a real model on a CPU, past
    the wait before a worker is killed unsaved. A compare started with `&` from a script ignores
    SIGINT and its workers inherited that: the SmolLM2 study's workers outlived a stop that way."""
    import signal
    import threading

    from taosr.errors import Interrupted

    out = str(tmp_path / "synth-marker-c3e1")
    log = str(tmp_path / "log")
    slow = Task("slow", [["data", "synth", "--n", "20000000", "--out", out]], log)

    def say(line):
        if "started" in line:
            threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()

    import taosr.jobs

    monkeypatch.setattr(taosr.jobs, "STOP_WAIT_S", 20)  # a worker that ignored the Ctrl-C is killed sooner
    before_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job's shell leaves it
    try:
        with pytest.raises(Interrupted, match=r"interrupted \(SIGTERM\)") as err:
            run_parallel([slow], [Slot(0, [])], say=say, poll_s=0.05)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # this process's own disposition is back
    finally:
        signal.signal(signal.SIGINT, before_int)
    assert "killed" not in str(err.value)
    assert _running_with(out) == []
    assert "KeyboardInterrupt" in open(log).read()  # the worker took it as a Ctrl-C, not a kill


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to find the worker")
def test_a_worker_stopped_alone_stops_the_run_and_starts_nothing_new(tmp_path):
    """`kill` of one worker's pid is a stop, not a failure: the SmolLM2 study's worker TERM'd by hand
    counted as failed while its freed worker started the next seed's fit."""
    import signal
    import threading

    from taosr.errors import Interrupted

    markers = [str(tmp_path / f"synth-marker-{i}-5d0b") for i in range(3)]
    tasks = [Task(f"t{i}", [["data", "synth", "--n", "20000000", "--out", m]], str(tmp_path / f"log{i}"), rank=i)
             for i, m in enumerate(markers)]
    bad = Task("bad", [["no-such-command"]], str(tmp_path / "bad.log"), rank=0)  # fails first: named, not lost
    started = []

    def say(line):
        started.append(line)
        if line.startswith("t0:") and "started" in line:  # stop the first worker alone, as `kill <pid>` would
            def stop():
                for pid in _running_with(markers[0]):
                    os.kill(int(pid), signal.SIGTERM)
            threading.Timer(1.5, stop).start()

    with pytest.raises(Interrupted, match=r"t0: taosr data was stopped \(SIGTERM, exit -15; log .*log0\); "
                                          r"stopped the 1 other running commands .*; failed before: bad "
                                          r"\(`taosr no-such-command` exit 2, log .*bad.log\)") as err:
        run_parallel([bad, *tasks], [Slot(0, []), Slot(1, [])], say=say, poll_s=0.05, keep_going=True)
    assert err.value.code == 143
    assert not any(line.startswith("t2:") for line in started), started  # nothing new started
    assert all(_running_with(m) == [] for m in markers)
    assert "KeyboardInterrupt" in open(tasks[1].log).read()  # the other worker got a Ctrl-C


def test_a_sweep_passes_sigterm_on_to_its_trial_as_ctrl_c(tmp_path):
    """`taosr sweep`'s trial, like a compare worker, is stopped with a Ctrl-C (at once, inside its step)
    even where the sweep ignores SIGINT (started with `&`)."""
    import signal
    import sys
    import threading

    from taosr.sweep import _run_child

    out = tmp_path / "out"
    child = (f"import sys, time\nsay = lambda w: open({str(out)!r}, 'a').write(w + '\\n')\ntry:\n"
             "    say('ready')\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    say('ctrl-c')\n    sys.exit(130)\n")
    before_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job's shell leaves it
    try:
        threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with pytest.raises(KeyboardInterrupt):
            _run_child([sys.executable, "-c", child], dict(os.environ))
    finally:
        signal.signal(signal.SIGINT, before_int)
    assert open(out).read().split() == ["ready", "ctrl-c"]


def test_a_terminals_ctrl_c_reaches_a_sweep_trial_once(tmp_path):
    """A terminal's Ctrl-C goes to its whole process group. The trial used to share the sweep's, so
    it got that Ctrl-C and the one the sweep passed on: two, and a second Ctrl-C stops a DDP fit
    without saving. Now the trial has a session of its own and gets exactly the sweep's."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    trial = (f"import signal, sys, time\nsay = lambda w: open({str(out)!r}, 'a').write(w + '\\n')\nn = []\n"
             "signal.signal(signal.SIGINT, lambda *a: n.append(1))\nsay('ready')\nt = time.time()\n"
             "while time.time() - t < 3:\n    time.sleep(0.05)\nsay(f'ctrl-c {len(n)}')\nsys.exit(130)\n")
    sweep = (f"import sys\nsys.path.insert(0, {ROOT!r})\nfrom taosr.sweep import _run_child\ntry:\n"
             f"    _run_child([sys.executable, '-c', {trial!r}], {{}})\nexcept KeyboardInterrupt:\n"
             f"    open({str(out)!r}, 'a').write('sweep stopped\\n')\n")
    proc = subprocess.Popen([sys.executable, "-c", sweep], start_new_session=True)  # its own "terminal" group
    try:
        for _ in range(200):
            if out.exists() and "ready" in out.read_text():
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert out.read_text().split("\n")[:3] == ["ready", "ctrl-c 1", "sweep stopped"]


@pytest.fixture
def second_thread():
    """A live thread besides the main one, as in a real compare (torch starts threads): a signal mask
    set on the main thread alone held nothing, the kernel handed the signal to this one."""
    import threading

    done = threading.Event()
    t = threading.Thread(target=done.wait, daemon=True)
    t.start()
    yield t
    done.set()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to find the worker")
@pytest.mark.parametrize("sig, how", [("SIGINT", "Ctrl-C"), ("SIGTERM", "SIGTERM")])
def test_a_stop_while_a_worker_starts_stops_that_worker_too(tmp_path, monkeypatch, second_thread, sig, how):
    """A Ctrl-C or SIGTERM between a worker's start and its registration used to leave that worker
    running, unknown to the stop (the review's open hole): it is now held until the worker is known."""
    import signal
    import time

    import taosr.jobs
    from taosr.errors import Interrupted

    out = str(tmp_path / "synth-marker-a91c")
    slow = Task("slow", [["data", "synth", "--n", "20000000", "--out", out]], str(tmp_path / "log"))
    real_start = taosr.jobs._start

    def start_then_stop(*args, **kwargs):
        proc = real_start(*args, **kwargs)
        os.kill(os.getpid(), getattr(signal, sig))  # lands after the start, before registration
        time.sleep(0.05)  # taken here, were it not held
        return proc

    monkeypatch.setattr(taosr.jobs, "_start", start_then_stop)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Interrupted, match=rf"interrupted \({how}\): stopped 1 running commands"):
            run_parallel([slow], [Slot(0, [])], poll_s=0.05)
        assert _running_with(out) == []
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        for pid in _running_with(out):  # the old code's orphan
            os.kill(int(pid), signal.SIGKILL)


def test_a_ctrl_c_while_a_sweep_trial_starts_stops_that_trial_too(monkeypatch, second_thread):
    """The same hole in `taosr sweep`: a Ctrl-C right after the trial's start left it running."""
    import signal
    import subprocess
    import sys
    import time

    import taosr.sweep

    real_popen, started = subprocess.Popen, []

    def popen_then_ctrl_c(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGINT)  # after the start, before `_run_child` knows the trial
        time.sleep(0.05)
        return started[-1]

    monkeypatch.setattr(taosr.sweep.subprocess, "Popen", popen_then_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            taosr.sweep._run_child([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
        assert started and started[0].poll() is not None  # stopped, not left sleeping
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()


def test_a_held_stop_is_acted_on_as_the_handler_before_would_and_an_ignored_one_stays_ignored():
    import signal

    from taosr.jobs import stops_held

    seen = []
    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stops_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)  # ignored before: stays ignored
            assert seen == []
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to find the worker")
def test_a_worker_that_cannot_start_stops_the_ones_running(tmp_path, monkeypatch):
    """An error in this process (the second worker's log cannot be opened) used to leave the first
    worker running, in its own session, writing into a run folder a re-run then uses."""
    import taosr.jobs

    out = str(tmp_path / "synth-marker-e4b2")
    slow = Task("slow", [["data", "synth", "--n", "20000000", "--out", out]], str(tmp_path / "log"), rank=0)
    second = Task("second", [["data", "synth", "--n", "10", "--out", str(tmp_path / "x")]],
                  str(tmp_path / "no-such-dir" / "log"), rank=1)
    real_start = taosr.jobs._start

    def start(cmd, slot, log, env):
        if "no-such-dir" in log:
            raise PermissionError(f"{log}: permission denied")
        return real_start(cmd, slot, log, env)

    monkeypatch.setattr(taosr.jobs, "_start", start)
    with pytest.raises(PermissionError, match="permission denied"):
        run_parallel([slow, second], [Slot(0, []), Slot(1, [])], poll_s=0.05)
    assert _running_with(out) == []
