"""``taosr quickstart``: SFT -> DPO -> GRPO -> SRPO (and the GRM) on the embedded default or ``--model``.

Each stage is the same ``taosr fit`` a user would run with the YAML under ``configs/``, started
from the previous stage's export, then ``taosr test`` on the same test split and on a larger
held-out set (``taosr data heldout``: queries in no split of the run's data; its macro F1 has
about half the test split's noise). At the end a comparison table (overall, per query type, long
tail; both sets) is printed and written as Markdown and CSV, with a PNG chart of the held-out
set, under ``--out`` (default ``runs/quickstart``).

``--small`` is a first-look variant (smaller data and budgets) that finishes in a few minutes.

``--model`` picks the model and its budgets (``configs/quickstart/<name>.yaml``, see
:mod:`taosr.quickstart_plan`): ``tiny`` (default, the embedded model trained from scratch),
``smollm2-135m`` (SmolLM2-135M-Instruct with LoRA on every training stage), or any local model
folder or Hugging Face id (the smollm2 budgets; ``--model-budgets FILE`` to replace them). Where
CUDA is available the file's ``cuda`` overrides (smollm2: accelerator gpu, bf16-mixed) go to every
fit and test; ``--cpu`` or arguments after ``--`` win. ``<out>/plan.json`` records what was used.

The same command run again keeps the steps it finished (``<out>/quickstart-steps.json``,
:class:`StepRecord`), resumes an interrupted fit from its ``last.ckpt`` and runs the rest.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass

from taosr.cliargs import ArgumentParser
from taosr.configfiles import locate, option_pairs
from taosr.data.synth import FIELD_SHARES, SynthConfig, heldout
from taosr.errors import TaosrError
from taosr.launcher import resume_hint, run_lightning, shared_arguments
from taosr.quickstart_plan import DEFAULT_MODEL, QuickstartPlan, load_plan
from taosr.run_record import PATH_OPTIONS, SAMPLE_PATH_OPTIONS, first_difference, fingerprint, record_place, relocated
from taosr.sampling import sample_main
from taosr.schema import write_jsonl

# the steps that make taosr compare's shared start (the DPO export, the training samples, the GRM)
START_STEPS = ("fit sft", "sample", "fit dpo", "fit grm")
METRICS = ("macro_f1", "good_f1", "accuracy", "step_accuracy", "format_error_rate")
STAGES = ("sft", "dpo", "grpo", "srpo")


@dataclass
class Step:
    """One command of the chain: ``kind`` fit | sample | test; ``timing`` the row of the stage table it
    counts towards; ``result`` (tests) ``(split, stage)`` of the metrics it reads back."""
    kind: str
    argv: list[str]
    timing: str
    result: tuple[str, str] | None = None

    @property
    def label(self) -> str:
        if self.kind == "sample":
            return "sample"
        return f"test {self.result[1]} ({self.result[0]})" if self.result else f"fit {self.timing}"

    @property
    def root(self) -> str:
        return self.argv[self.argv.index("--trainer.default_root_dir") + 1]


def plan(small: bool, model: str = DEFAULT_MODEL, configs: str = "configs") -> dict:
    """Budgets per stage of ``model`` (``configs/quickstart/<model>.yaml``; see :mod:`taosr.quickstart_plan`)."""
    return load_plan(model, small, configs=configs).budgets


# Overrides after `--` that change which synthetic examples there are: the sample step gets the
# same through `taosr sample`'s flags, so that it samples the fits' training examples (a quickstart
# given `-- --data.synth.n_val 6` sampled other data, and DPO found no sample of its examples).
SAMPLE_FOLLOWS = {"--data.synth.n_train": "--synth-n-train", "--data.synth.n_val": "--synth-n-val",
                  "--data.synth.n_test": "--synth-n-test", "--data.synth.seed": "--synth-seed",
                  **{f"--data.synth.{name}": f"--synth-{name.replace('_', '-')}" for name in FIELD_SHARES},
                  "--data.data_dir": "--data-dir"}
# synthetic-data keys that change annotations only, never the examples: nothing for the sampler to follow
ANNOTATION_KEYS = tuple(f"--data.synth.{k}" for k in ("train_annotation_share", "annotation_regime",
                                                      "annotate_evidence"))


def data_overrides(extra: list[str]) -> dict[str, str]:
    """The overrides of :data:`SAMPLE_FOLLOWS` in ``extra`` (``--key value`` or ``--key=value``; the
    last wins), by key. One that changes the training examples in a way the sample step cannot
    follow (another example-changing synthetic key, a training data file) is refused in one line."""
    found = {}
    for key, value in option_pairs(extra):
        value = "" if value is None else value
        if key in SAMPLE_FOLLOWS:
            found[key] = value
        elif key.startswith("--data.synth") and key not in ANNOTATION_KEYS or key == "--data.train" and value != "synth":
            raise TaosrError(f"quickstart: {key} (after --) changes the training data, which the sample step cannot "
                             f"follow (it takes {', '.join(SAMPLE_FOLLOWS)}); run the stages one by one "
                             "(README: Your own data, end to end) to train on other data")
    return found


def sample_data_args(extra: list[str]) -> list[str]:
    """``taosr sample`` flags for the data overrides in ``extra`` (:func:`data_overrides`)."""
    return [a for key, value in data_overrides(extra).items() for a in (SAMPLE_FOLLOWS[key], value)]


def synth_base(budgets: dict, seed: int, extra: list[str]) -> SynthConfig:
    """The synthetic data every stage trains on: the budgets' sizes and ``seed``, with the overrides
    after ``--`` (the held-out set's queries must be in none of its splits)."""
    got = data_overrides(extra)

    def whole(key: str, default: int) -> int:
        value = got.get(f"--data.synth.{key}", default)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise TaosrError(f"quickstart: --data.synth.{key} (after --): must be a whole number, got {value!r}") from None

    def share(key: str) -> float:
        value = got.get(f"--data.synth.{key}", getattr(SynthConfig, key))
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TaosrError(f"quickstart: --data.synth.{key} (after --): must be a number in [0, 1], got {value!r}") from None

    return SynthConfig(n_train=whole("n_train", budgets["n_train"]), n_val=whole("n_val", SynthConfig.n_val),
                       n_test=whole("n_test", budgets["n_test"]), seed=whole("seed", seed),
                       **{name: share(name) for name in FIELD_SHARES})


def commands(out: str, qp: QuickstartPlan, budgets: dict, configs: str = "configs", seed: int = 0,
             extra: list[str] | None = None, heldout_path: str | None = None) -> list[Step]:
    """Every command of the chain in order (pure: nothing runs). ``extra`` goes last into every
    fit/test; the budgets file's per-stage overrides follow each stage's own arguments."""
    p, extra = budgets, list(extra or [])
    data = ["--data.synth.n_train", str(p["n_train"]), "--data.synth.n_test", str(p["n_test"]),
            "--data.synth.seed", str(seed), "--seed_everything", str(seed),
            "--data.data_dir", p.get("data_dir", ".cache/taosr/data")]
    cfg = lambda name: os.path.join(configs, f"{name}.yaml")  # noqa: E731
    export = lambda name: os.path.join(out, name, "export")  # noqa: E731
    fit = lambda stage, args, timing: Step("fit", ["fit", "--config", cfg(stage), "--trainer.default_root_dir",  # noqa: E731
                                                   os.path.join(out, stage), *args, *qp.stage_args(stage), *extra], timing)
    samples = os.path.join(out, "sft", "samples-train.jsonl")
    steps = [fit("sft", data + ["--trainer.max_epochs", str(p["sft_epochs"]),
                                "--trainer.check_val_every_n_epoch", str(p["sft_epochs"])] + qp.model_args, "sft"),
             Step("sample", ["--model", export("sft"), "--out", samples, "--n", str(p["samples"]),
                             "--limit", str(p["sample_prompts"]), "--synth-n-train", str(p["n_train"]),
                             "--synth-n-test", str(p["n_test"]), "--synth-seed", str(seed), "--seed", str(seed),
                             "--max-new-tokens", str(p.get("max_new_tokens", 96)),
                             "--data-dir", p.get("data_dir", ".cache/taosr/data"), *sample_data_args(extra),
                             *qp.stage_args("sample")], "dpo"),
             fit("dpo", data + ["--data.samples_path", samples, "--model.init_args.model.name_or_path",
                                export("sft"), "--trainer.max_epochs", str(p["dpo_epochs"])], "dpo"),
             fit("grm", data + ["--trainer.max_steps", str(p["grm_steps"]), "--data.samples_path", samples,
                                "--model.init_args.model.name_or_path", export("sft"),
                                "--trainer.val_check_interval", str(p["grm_steps"])], "grm")]  # held-out verdict accuracy
    # GRPO continues from DPO (TaoSR1's chain); SRPO starts from the same export with the same rollout
    # budget, so the two RL methods compare on equal terms. Both train on the prompts the SFT policy
    # neither always nor never solves (offline rejection sampling on the pass@N file).
    rl = data + ["--trainer.max_steps", str(p["rl_steps"]), "--data.batch_size", str(p["rl_prompts"]),
                 "--trainer.val_check_interval", str(p["rl_steps"]),
                 "--data.samples_path", samples, "--data.rejection_sampling.low", str(p["rejection_band"][0]),
                 "--data.rejection_sampling.high", str(p["rejection_band"][1]),
                 "--model.init_args.model.name_or_path", export("dpo")]
    steps += [fit("grpo", rl, "grpo"), fit("srpo", rl + ["--model.init_args.grm_path", export("grm")], "srpo")]
    heldout_path = heldout_path or os.path.join(out, "data", "heldout.jsonl")
    test = data + qp.stage_args("test")
    for stage in STAGES:
        for split, more in (("test", []), ("heldout", ["--data.test", heldout_path])):
            steps.append(Step("test", ["test", "--config", cfg("sft"), "--trainer.default_root_dir",
                                       os.path.join(out, split, stage), *test, *more, *extra,
                                       "--model.init_args.model.name_or_path", export(stage)],
                              f"test_{stage}", (split, stage)))
    return steps


def execute(step: Step) -> dict | None:
    """Run one command in-process; a test returns its metrics. A failure stops the chain."""
    if step.kind == "sample":
        if sample_main(step.argv):
            raise SystemExit("quickstart: sampling failed")
        return None
    rc = run_lightning(step.argv)
    if rc:
        what = f"test of {step.argv[-1]}" if step.kind == "test" else step.argv[2]
        raise SystemExit(f"quickstart: {what} failed (exit {rc})")
    return read_metrics(step) if step.kind == "test" else None


def read_metrics(step: Step) -> dict:
    with open(step_output(step)) as fh:
        return json.load(fh)


def step_output(step: Step) -> str:
    """The file whose presence says a step finished: a fit's export, the samples, a test's metrics."""
    if step.kind == "sample":
        return step.argv[step.argv.index("--out") + 1]
    return os.path.join(step.root, "export", "config.json") if step.kind == "fit" else \
        os.path.join(step.root, "eval", "test-metrics.json")


def last_ckpt(step: Step) -> str | None:
    """Where a fit leaves the checkpoint a resume starts from (None for the other steps)."""
    return os.path.join(step.root, "checkpoints", "last.ckpt") if step.kind == "fit" else None


class StepRecord:
    """``<out>/quickstart-steps.json``: each step's command (:func:`taosr.run_record.fingerprint`),
    whether it finished and its seconds, so that the same command run again keeps the finished steps,
    resumes an interrupted fit from its ``last.ckpt`` and runs the rest. A step whose command changed
    (other budgets, model or overrides) runs again, and so does every step after it: a fresh start
    forgets the records of the chain after it."""

    def __init__(self, out: str):
        self.path = os.path.join(out, "quickstart-steps.json")
        self.steps: dict[str, dict] = {}
        self._fingerprints: dict[tuple, list[str]] = {}  # by command: configs and test files are read once
        if os.path.isfile(self.path):
            try:
                with open(self.path) as fh:
                    saved = json.load(fh)
                self.steps = saved["steps"]
                if not isinstance(self.steps, dict) or not all(isinstance(r, dict) for r in self.steps.values()):
                    raise TypeError("steps is not a mapping of records")
                # written elsewhere (the folder moved with its checkout): its commands' paths move along
                for rec in self.steps.values():
                    if isinstance(rec.get("argv"), list):
                        rec["argv"] = relocated(rec["argv"], saved.get("place"), out)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise TaosrError(f"quickstart: {self.path} cannot be read ({type(e).__name__}); delete it to run "
                                 "every step again") from None

    def _fingerprint(self, step: Step) -> list[str]:
        """The command, plus the content of what it reads by path that no argument spells out: each
        config (with its bases) and the test file (the held-out set is rewritten from its budget)."""
        key = (step.kind, tuple(step.argv))
        if key not in self._fingerprints:
            self._fingerprints[key] = self._compute_fingerprint(step)
        return self._fingerprints[key]

    @staticmethod
    def _compute_fingerprint(step: Step) -> list[str]:
        fp = fingerprint(step.argv, SAMPLE_PATH_OPTIONS if step.kind == "sample" else PATH_OPTIONS)
        for key, value in zip(step.argv, step.argv[1:]):
            if key == "--config":
                from taosr.configfiles import resolved_config

                text = json.dumps(resolved_config(locate(value)), sort_keys=True, default=str).encode()
            elif key == "--data.test" and os.path.isfile(value):
                with open(value, "rb") as fh:
                    text = fh.read()
            else:
                continue
            fp.append(f"{key} {value} sha256:{hashlib.sha256(text).hexdigest()[:16]}")
        return fp

    def _same(self, step: Step) -> dict | None:
        rec = self.steps.get(step.label)
        return rec if rec is not None and rec.get("argv") == self._fingerprint(step) else None

    def finished(self, step: Step) -> tuple[float | None, str]:
        """(seconds it took, "") for a step finished before with this command and still on disk; else
        (None, why it runs: "" when it never ran)."""
        rec = self.steps.get(step.label)
        if rec is None:
            return None, ""
        if self._same(step) is None:
            return None, ("ran before with other settings (" + first_difference(rec.get("argv") or [], self._fingerprint(step))
                          + "): running it and every later step again")
        if not rec.get("done"):
            return None, "interrupted before: " + ("resuming it" if self.resumable(step) else "running it again")
        if not os.path.exists(step_output(step)):
            return None, f"{step_output(step)} is gone: running it and every later step again"
        return float(rec.get("seconds", 0.0)), ""

    def resumable(self, step: Step) -> str | None:
        """The ``last.ckpt`` an interrupted fit of this same command left, or None."""
        ckpt, rec = last_ckpt(step), self._same(step)
        return ckpt if ckpt and rec and not rec.get("done") and os.path.isfile(ckpt) else None

    def seconds(self, step: Step) -> float:
        return float(self.steps[step.label]["seconds"])

    def start(self, step: Step, later: tuple[str, ...] | list[str] = ()) -> list[str]:
        """Mark the step started; its command (plus ``--ckpt_path`` when it resumes an interrupted fit).
        A fresh start forgets the records of the ``later`` steps (the chain after it): they were built
        on this step's old output, so neither this run, nor one cut short here, nor a ``--start-only``
        run keeps or resumes them; a fresh fit also removes a ``last.ckpt`` left in its folder."""
        ckpt = self.resumable(step)
        before = float(self.steps[step.label].get("seconds", 0.0)) if ckpt else 0.0
        if not ckpt:
            stale = last_ckpt(step)
            if stale and os.path.isfile(stale):  # another command's: an early interrupt must not resume it
                os.remove(stale)
            for label in later:
                self.steps.pop(label, None)
        self.steps[step.label] = {"argv": self._fingerprint(step), "done": False, "seconds": before}
        self._write()
        return step.argv + ["--ckpt_path", ckpt] if ckpt else list(step.argv)

    def stop(self, step: Step, dt: float) -> None:
        self.steps[step.label]["seconds"] += dt
        self._write()

    def done(self, step: Step) -> None:
        self.steps[step.label]["done"] = True
        self._write()

    def _write(self) -> None:
        from taosr.schema import write_json

        write_json(self.path, {"place": record_place(os.path.dirname(self.path) or "."), "steps": self.steps})


def run(out: str, small: bool = False, configs: str = "configs", seed: int = 0, extra: list[str] | None = None,
        plan_overrides: dict | None = None, model: str = DEFAULT_MODEL, budgets_file: str | None = None,
        cpu: bool = False, qplan: QuickstartPlan | None = None, start_only: bool = False) -> dict[str, dict]:
    """Run every stage; ``extra`` CLI overrides go to every fit/test (last, so they win),
    ``plan_overrides`` change budgets. ``model``/``budgets_file`` pick the budgets file (or pass
    ``qplan``); its per-stage overrides and, on CUDA, its ``cuda`` ones go to each fit/test.
    ``start_only``: only the steps of :data:`START_STEPS` (``taosr compare``'s shared start), no
    report; the same command without it later keeps them."""
    qp = qplan or load_plan(model, small, budgets_file, configs)
    p = {**qp.budgets, **(plan_overrides or {})}
    extra = qp.device_args(cpu) + list(extra or [])
    _write_plan(out, qp, p)
    heldout_path = os.path.join(out, "data", "heldout.jsonl")
    base = synth_base(p, seed, extra)  # heldout() skips base.seed: its queries are in no split of base
    write_jsonl(heldout_path, heldout(p["heldout"], seed=base.seed + 1, base=base))
    timings: dict[str, float] = {}
    results: dict[str, dict[str, dict]] = {"test": {}, "heldout": {}}
    record = StepRecord(out)
    chain = commands(out, qp, p, configs, seed, extra, heldout_path)
    labels = [s.label for s in chain]
    for i, step in enumerate(chain):
        if start_only and step.label not in START_STEPS:
            continue
        earlier, why = record.finished(step)  # a step after one that ran fresh has no record left
        if earlier is not None:
            timings[step.timing] = timings.get(step.timing, 0.0) + earlier
            print(f"quickstart: {step.label} done earlier ({earlier:.0f}s), kept", flush=True)
            if step.result:
                results[step.result[0]][step.result[1]] = read_metrics(step)
            continue
        if why:
            print(f"quickstart: {step.label}: {why}", flush=True)
        t = time.perf_counter()
        # a fit or the sampling feeds every later step; a test's metrics feed none
        argv = record.start(step, later=() if step.kind == "test" else labels[i + 1:])
        try:
            # given to every stage: one a stage does not read is a warning (setting_checks)
            with shared_arguments(extra), resume_hint("re-run the same taosr quickstart command to continue "
                                                      "(finished stages are kept, this one resumes)"):
                metrics = execute(Step(step.kind, argv, step.timing, step.result))
        finally:
            record.stop(step, time.perf_counter() - t)
        record.done(step)
        dt = record.seconds(step)
        timings[step.timing] = timings.get(step.timing, 0.0) + dt
        print(f"quickstart: {step.label} done in {dt:.0f}s", flush=True)
        if step.result:
            results[step.result[0]][step.result[1]] = metrics
    if start_only:
        print(f"quickstart: the start is ready: policy {os.path.join(out, 'dpo', 'export')}, samples "
              f"{os.path.join(out, 'sft', 'samples-train.jsonl')}, GRM {os.path.join(out, 'grm', 'export')}", flush=True)
        return {}
    write_report(out, results["test"], timings, heldout=results["heldout"],
                 used=f"model {qp.model}; budgets {qp.budgets_file} ({qp.variant})"
                 + (f", changed: {json.dumps(plan_overrides, default=str)}" if plan_overrides else "")
                 + (f"; every fit/test: {' '.join(extra)}" if extra else ""))
    return results["test"]


def _write_plan(out: str, qp: QuickstartPlan, budgets: dict) -> None:
    """``<out>/plan.json``: the model, budgets file and variant, the budgets in effect, the stage overrides."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "plan.json"), "w") as fh:
        json.dump({**qp.describe(), "budgets": budgets}, fh, indent=1, default=list)


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
                 heldout: dict[str, dict] | None = None, used: str | None = None) -> str:
    """Table (Markdown, CSV) of the test split and, when given, the held-out set; chart of the
    held-out set when given (lower noise), else of the test split. ``used`` (the model and budgets
    of the run) is written under the tables and printed."""
    rows = comparison_rows(results, "test") + (comparison_rows(heldout, "heldout") if heldout else [])
    os.makedirs(out, exist_ok=True)
    md = markdown_table(rows)
    with open(os.path.join(out, "comparison.md"), "w") as fh:
        fh.write(md + "\n")
        if timings:
            fh.write("\n| stage | seconds |\n|---|---|\n" + "\n".join(f"| {k} | {v:.0f} |" for k, v in timings.items()) + "\n")
        if used:
            fh.write(f"\n{used}\n")
    with open(os.path.join(out, "comparison.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["stage", "split", "slice", "n", *METRICS])
        w.writeheader()
        w.writerows(rows)
    shown = "heldout" if heldout else "test"
    plot_comparison([r for r in rows if r["split"] == shown], os.path.join(out, "comparison.png"), shown)
    overall = [r for r in rows if r["slice"] in ("overall", "long_tail")]
    print("\n" + markdown_table(overall) + (f"\n\n{used}" if used else "") + f"\n\nfull table: {out}/comparison.md (.csv, .png)")
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
    argv = list(argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = ArgumentParser(prog="taosr quickstart", description=__doc__.split("\n\n")[0],
                       epilog="Arguments after -- go to every fit/test last, so they win, "
                              "e.g. -- --trainer.precision 32-true")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--small", action="store_true", help="first-look variant: smaller data and budgets")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="preset with budgets in configs/quickstart/ (tiny, smollm2-135m), a local model folder "
                        "or a Hugging Face id (these use the smollm2-135m budgets: LoRA on every stage)")
    p.add_argument("--model-budgets", default=None, metavar="FILE",
                   help="budgets file to use instead of the model's (format: taosr/quickstart_plan.py)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is available")
    p.add_argument("--configs", default="configs", help="folder with sft/dpo/grm/grpo/srpo.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-only", action="store_true",
                   help="only SFT, sampling, DPO and the GRM (taosr compare's shared start): no RL stages, no "
                        "evaluation; the same command without it later keeps them")
    a = p.parse_args(argv)
    a.configs = locate(a.configs)  # taosr's own configs/ when the current folder has none
    a.model_budgets = locate(a.model_budgets) if a.model_budgets else None
    qp = load_plan(a.model, a.small, a.model_budgets, a.configs)
    t0 = time.perf_counter()
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if a.cpu:  # `taosr sample` too: it samples on the GPU where it sees one
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        run(a.out, small=a.small, configs=a.configs, seed=a.seed, extra=passthrough, cpu=a.cpu, qplan=qp,
            start_only=a.start_only)
    finally:
        if a.cpu:
            os.environ.pop("CUDA_VISIBLE_DEVICES") if hidden is None else os.environ.update(CUDA_VISIBLE_DEVICES=hidden)
    print(f"quickstart finished in {time.perf_counter() - t0:.0f}s")
    return 0
