import math
import os

import pytest

from taosr.compare import START, arm_rows, load_spec, markdown, pair_rows, plan_runs
from taosr.errors import ConfigError
from taosr.eval.stats import mean_se, paired_difference, pm

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mean_se_by_hand():
    s = mean_se([0.70, 0.72, 0.74, 0.76])
    assert s.mean == pytest.approx(0.73)
    # sample std = sqrt(((.03)^2 + (.01)^2 + (.01)^2 + (.03)^2) / 3) = 0.025820
    assert s.se == pytest.approx(0.025820 / 2, abs=1e-6) and s.n == 4
    assert s.fmt() == "0.730 ± 0.013"
    one = mean_se([0.5, float("nan"), None])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.se) and one.fmt() == "0.500"
    assert mean_se([]).n == 0 and mean_se([]).fmt() == "—"
    # a non-zero s.e. below 0.0005 is shown to its first significant digit, not as "± 0.000"
    assert mean_se([0.8450, 0.8452, 0.8454, 0.8456]).fmt() == "0.8453 ± 0.0001"
    assert pm(0.8453, 0.00096) == "0.845 ± 0.001" and pm(0.8453, 0.0) == "0.845 ± 0.000"
    assert pm(0.8453, 4e-05) == "0.84530 ± 0.00004" and pm(-0.0052, 0.0031) == "-0.005 ± 0.003"
    assert mean_se([0.7234] * 3).fmt() == "0.723 ± 0.000"  # equal seeds: float noise in the s.e. is no digit


def test_paired_difference_pairs_by_seed_and_against_a_constant():
    a = {0: 0.80, 1: 0.78, 2: 0.81, 3: 0.79}
    b = {0: 0.78, 1: 0.77, 2: 0.80, 4: 0.99}          # seed 3 and 4 unpaired: left out
    p = paired_difference(a, b)
    assert p.seeds == (0, 1, 2) and p.diffs == pytest.approx((0.02, 0.01, 0.01)) and p.wins == 3
    assert p.diff.mean == pytest.approx(0.04 / 3)
    assert p.diff.se == pytest.approx(mean_se([0.02, 0.01, 0.01]).se)
    assert p.z == pytest.approx(p.diff.mean / p.diff.se)
    c = paired_difference(a, 0.80)                   # a deterministic start scored once
    assert c.diffs == pytest.approx((0.0, -0.02, 0.01, -0.01)) and c.wins == 1 and c.ties == 1  # a tie is no loss
    from taosr.compare import _ties
    assert (_ties({"ties": 0}), _ties({"ties": 1}), _ties({"ties": 3})) == ("", " (1 tie)", " (3 ties)")
    # pairing removes the shared noise: same spread of seeds, constant lead
    noisy = {s: 0.7 + 0.05 * ((-1) ** s) * s for s in range(6)}
    lead = paired_difference({s: v + 0.01 for s, v in noisy.items()}, noisy)
    assert lead.diff.mean == pytest.approx(0.01) and lead.diff.se == pytest.approx(0.0, abs=1e-12)
    # every seed's difference equal: the s.e. is float noise, so mean / s.e. is undefined, not +1.8e14
    same = paired_difference({0: 0.8237, 1: 0.8886, 2: 0.8079}, {0: 0.8167, 1: 0.8816, 2: 0.8009})
    assert 0 < same.diff.se < 1e-15 and math.isnan(same.z)
    # seeds read back from files are strings: in number order (they sorted 0, 1, 10, 2)
    many = {str(s): 0.5 for s in (10, 2, 0, 1, 11)}
    assert paired_difference(many, 0.4).seeds == ("0", "1", "2", "10", "11")


def _spec(tmp_path, text):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return str(p)


GOOD = """
name: t
start: {model: m/export, samples: s.jsonl, grm: g/export}
seeds: [0, 1]
set: {trainer.max_steps: 5}
arms:
  grpo: {config: configs/grpo.yaml}
  srpo: {config: configs/srpo.yaml, set: {model.init_args.grm_path: "${start.grm}", model.init_args.step_advantage.lam: 0.0}}
eval: {heldout: 10}
pairs: [[srpo, grpo], [grpo, start]]
"""


def test_spec_resolves_interpolation_and_plans_runs(tmp_path):
    spec = load_spec(_spec(tmp_path, GOOD))
    assert [a.name for a in spec.arms] == ["grpo", "srpo"] and spec.seeds == [0, 1]
    assert spec.arms[1].overrides == ["--model.init_args.grm_path", "g/export", "--model.init_args.step_advantage.lam", "0.0"]
    assert spec.overrides == ["--trainer.max_steps", "5"] and spec.pairs == [("srpo", "grpo"), ("grpo", START)]
    runs = plan_runs(spec, "out")
    assert [(r.arm, r.seed) for r in runs] == [(START, None), ("grpo", 0), ("srpo", 0), ("grpo", 1), ("srpo", 1)]
    assert runs[2].root == os.path.join("out", "srpo", "seed0")
    assert load_spec(_spec(tmp_path, GOOD), seeds=[7]).seeds == [7]



def test_seed_keys_give_each_run_its_seed(tmp_path):
    """seed_keys: [data.seed] varies the data order with the seed (a deterministic SFT of a dropout-free
    export is the same run for every --seed_everything: three seeds scored the same)."""
    from taosr.compare import fit_args

    spec = load_spec(_spec(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: [0, 1]\nseed_keys: [data.seed]")))
    run = plan_runs(spec, "out")[3]
    assert (run.arm, run.seed) == ("grpo", 1)
    args = fit_args(spec, spec.arms[0], run, [])
    assert args[args.index("--seed_everything"):args.index("--seed_everything") + 4] == \
        ["--seed_everything", "1", "--data.seed", "1"]
    assert "--data.seed" not in fit_args(load_spec(_spec(tmp_path, GOOD)), spec.arms[0], run, [])  # not by default
    with pytest.raises(ConfigError, match="seed_keys must be a list of config keys"):
        load_spec(_spec(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: [0, 1]\nseed_keys: data.seed")))


def test_an_arm_stacks_configs_and_is_scored_in_the_target_it_was_trained_with(tmp_path):
    """`config:` as a list is `--config` of each in order (a method on your data: the method's config and
    the overlay), and an arm trained label-only (label_only.yaml stacked) is evaluated with its label
    prompt: with the reasoning eval config alone it was prompted for five steps it never learned. A
    start or baseline export is scored in the target its export recorded."""
    from taosr.compare import eval_args, fit_args, run_target
    from taosr.models.factory import EXPORT_META

    text = GOOD.replace("  grpo: {config: configs/grpo.yaml}",
                        "  grpo: {config: configs/grpo.yaml}\n"
                        "  label: {config: [configs/sft.yaml, configs/experiment/label_only.yaml]}")
    spec = load_spec(_spec(tmp_path, text))
    label = spec.arms[1]
    assert [os.path.relpath(c, ROOT_DIR) for c in label.configs] == ["configs/sft.yaml", "configs/experiment/label_only.yaml"]
    run = plan_runs(spec, "out")[2]
    args = fit_args(spec, label, run, [])
    assert args[:5] == ["fit", "--config", label.configs[0], "--config", label.configs[1]]
    assert fit_args(spec, spec.arms[0], run, [])[:3] == ["fit", "--config", spec.arms[0].configs[0]]  # one file as before
    assert run_target(spec, label, run.export, []) == "label"
    assert run_target(spec, label, run.export, ["--data.target=reasoning"]) == "reasoning"  # the extra arguments win
    assert run_target(spec, spec.arms[0], run.export, []) == "reasoning"
    label_file = os.path.join(ROOT_DIR, "configs", "experiment", "label_only.yaml")
    assert run_target(spec, spec.arms[0], run.export, ["--config", label_file]) == "label"  # extra --config files too
    assert eval_args(spec, run, "t.jsonl", run.export, target="label")[-2:] == ["--data.target", "label"]
    assert "--data.target" not in eval_args(spec, run, "t.jsonl", run.export, target="reasoning")
    assert "--data.target" not in eval_args(spec, run, "t.jsonl", run.export, target=None)
    spec.eval_overrides = ["--data.target", "label"]  # eval.set names a target: every run gets that one
    assert eval_args(spec, run, "t.jsonl", run.export, target="reasoning").count("--data.target") == 1
    export = tmp_path / "export"
    export.mkdir()
    (export / EXPORT_META).write_text('{"target": "label"}')
    assert run_target(spec, None, str(export), []) == "label"
    assert run_target(spec, None, str(tmp_path / "no-export"), []) == "reasoning"  # a preset or hub id
    for bad in ("[]", "[configs/sft.yaml, 3]"):
        with pytest.raises(ConfigError, match="arms.label.config must be a config file or a list of them"):
            load_spec(_spec(tmp_path, text.replace("[configs/sft.yaml, configs/experiment/label_only.yaml]", bad)))


@pytest.mark.parametrize("edit, message", [
    (("seeds: [0, 1]", "seeds: [0, 0]"), "seeds must be distinct integers"),
    (("pairs: [[srpo, grpo], [grpo, start]]", "pairs: [[srpo, dpo]]"), "pairs: ['srpo', 'dpo'] is not"),
    (("pairs: [[srpo, grpo], [grpo, start]]", "pairs: [[start, grpo]]"), "is not [arm, other arm, 'start' or a baseline]"),
    (("pairs: [[srpo, grpo], [grpo, start]]", "baselines: {sft: s/export}\npairs: [[sft, grpo]]"),
     "pairs: ['sft', 'grpo'] is not [arm, other arm, 'start' or a baseline] with arms ['grpo', 'srpo'] and baselines ['sft']"),
    (("pairs:", "baselines: {grpo: s/export}\npairs:"), "baselines.grpo: the name is taken by arms.grpo"),
    (("pairs:", "baselines: {start: s/export}\npairs:"), "baselines.start: the name is taken by the shared start"),
    (("pairs:", "baselines: [s/export]\npairs:"), "baselines must map names"),
    (("eval: {heldout: 10}", "eval: {heldout: 10, tset: x}"), "eval.tset: unknown key"),
    (("arms:", "armz: {}\narms:"), "armz: unknown key"),
    (("  grpo: {config: configs/grpo.yaml}", "  grpo: {confg: configs/grpo.yaml}"), "arms.grpo.config is missing"),
    (("${start.grm}", "${start.gmr}"), "start.gmr"),
    (("seeds: [0, 1]", "seeds: [0, 1"), "spec.yaml:5: YAML syntax error"),
    # formerly a TypeError traceback, a ValueError traceback, and seed 0 run alone without a word
    (("seeds: [0, 1]", "seeds: 3"), "seeds must be a non-empty list of integers (e.g. seeds: [0, 1, 2]), got 3"),
    (("seeds: [0, 1]", "seeds: []"), "seeds must be a non-empty list of integers"),
    (("eval: {heldout: 10}", "eval: {heldout: lots}"), "eval.heldout must be an integer, got 'lots'"),
    (("eval: {heldout: 10}", "eval: {heldout: 10, also: [a.jsonl]}"), "eval.also must map set names"),
    (("eval: {heldout: 10}", "eval: {heldout: 10, also: {a/b: x.jsonl}}"), "eval.also must map set names"),
])
def test_bad_specs_get_one_line(tmp_path, edit, message):
    with pytest.raises(ConfigError) as err:
        load_spec(_spec(tmp_path, GOOD.replace(*edit)))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(ROOT_DIR, "comparisons")) if f.endswith(".yaml")))
def test_every_shipped_spec_loads_and_dry_runs(name, capsys):
    """Each comparisons/*.yaml is a valid spec whose arm configs exist, and --dry-run prints its commands."""
    from taosr.compare import compare_main

    path = os.path.join("comparisons", name)
    spec = load_spec(os.path.join(ROOT_DIR, path))
    assert spec.arms and all(os.path.isfile(os.path.join(ROOT_DIR, c)) for a in spec.arms for c in a.configs)
    cwd = os.getcwd()
    os.chdir(ROOT_DIR)
    try:
        assert compare_main([path, "--dry-run", "--out", "/nonexistent/out"]) == 0
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert out.count("taosr fit --config") == len(spec.arms) * len(spec.seeds)


def test_a_bad_option_in_an_arm_stops_the_comparison_before_its_first_run(tmp_path):
    """Every arm's fit command and the evaluation command are parsed first (nothing runs): a typo in
    an arm's set: or the extra arguments names the arm, even with --dry-run."""
    from taosr.compare import compare_main

    spec = os.path.join(ROOT_DIR, "comparisons", "srpo_vs_grpo.yaml")
    with pytest.raises(ConfigError, match=r"compare srpo_vs_grpo: arms.grpo: .*'grm_pth' is not accepted"):
        compare_main([spec, "--dry-run", "--out", str(tmp_path), "--model.init_args.grm_pth", "x"])
    bad = _spec(tmp_path, GOOD.replace("step_advantage.lam: 0.0", "step_advantage.lamb: 0.0"))
    with pytest.raises(ConfigError, match=r"arms.srpo: .*lamb"):
        compare_main([bad, "--dry-run", "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("edit, needle", [
    (("set: {trainer.max_steps: 5}", "set: {trainer.max_steps: 5, data.batch_size: -4}"),
     r"compare t: arms.grpo: data.batch_size: must be a whole number >= 1, got -4"),
    (("step_advantage.lam: 0.0", "step_advantage.lam: 0.0, model.init_args.examiner.verifier_weight: 0.3"),
     r"compare t: arms.srpo: model.init_args.examiner.verifier_weight: read by mode weighted only"),
    (("${start.grm}", "${start.model}/../no-grm"), r"compare t: arms.srpo: model.init_args.grm_path: .* does not exist"),
])
def test_a_value_a_constructor_refuses_stops_the_comparison_before_its_first_run(tmp_path, monkeypatch, edit, needle):
    """The check before the first run builds each arm's data module, module and trainer (nothing is
    loaded or run): values that parse but that a constructor refuses stopped only that arm's first
    fit, hours into an overnight comparison (the eleventh stop's open item)."""
    from taosr.compare import compare_main

    monkeypatch.chdir(tmp_path)
    for d in ("m/export", "g/export"):
        os.makedirs(d)
    open("s.jsonl", "w").close()
    spec = _spec(tmp_path, GOOD.replace(*edit).replace("configs/", os.path.join(ROOT_DIR, "configs") + "/"))
    with pytest.raises(ConfigError, match=needle):
        compare_main([spec, "--out", str(tmp_path / "out")])
    made = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")}
    assert made == {"data", "data/heldout-10-s1.jsonl"}  # the evaluation set only: no run folder, log or checkpoint


def test_a_run_done_with_other_settings_is_not_reused(tmp_path, capsys):
    """A run folder records the commands it was fitted and scored with; a re-run with another budget
    (or another evaluation set) refuses it instead of averaging it with runs made the new way."""
    from taosr.compare import RUN_FILE, compare_main, eval_args, evaluation_path, fit_args, record_settings

    spec_path = os.path.join(ROOT_DIR, "comparisons", "srpo_vs_grpo.yaml")
    spec = load_spec(spec_path, [0], ["grpo"])
    out = str(tmp_path / "out")
    run = plan_runs(spec, out)[1]
    assert (run.arm, run.seed) == ("grpo", 0)
    os.makedirs(os.path.join(run.export))
    open(os.path.join(run.export, "config.json"), "w").write("{}")  # fitted
    record_settings(run, fit_args(spec, spec.arms[0], run, ["--trainer.max_steps", "30"]),
                    eval_args(spec, run, evaluation_path(spec, out), run.export))
    assert os.path.isfile(os.path.join(run.root, RUN_FILE))
    args = [spec_path, "--dry-run", "--arms", "grpo", "--seeds", "0", "--out", out]
    assert compare_main(args + ["--trainer.max_steps", "30"]) == 0  # the same settings: reused
    assert compare_main(args + ["--", "--trainer.max_steps", "30"]) == 0  # a `--` first (as quickstart's) is dropped
    # the same --out spelled relative to the working folder: still the same settings
    assert compare_main([*args[:-1], os.path.relpath(out), "--trainer.max_steps", "30"]) == 0
    os.makedirs(os.path.dirname(run.metrics_path))
    open(run.metrics_path, "w").write("{}")  # scored: the evaluation set may not change either
    assert compare_main(args + ["--trainer.max_steps", "30"]) == 0
    smaller = tmp_path / "smaller.yaml"  # the same spec scored on 12 held-out examples
    text = open(spec_path).read()
    assert "eval: {heldout: 2000}" in text
    smaller.write_text(text.replace("eval: {heldout: 2000}", "eval: {heldout: 12}"))
    with pytest.raises(ConfigError, match=r"grpo/seed0/heldout was scored with other settings \(was `--data.test "
                                          r".*heldout-2000-s.*`, now `--data.test .*heldout-12-s"):
        compare_main([str(smaller), *args[1:], "--trainer.max_steps", "30"])
    with pytest.raises(ConfigError, match=r"grpo/seed0 was fitted with other settings \(was `--trainer.max_steps 30`, "
                                          r"now `--trainer.max_steps 10`\); use another --out"):
        compare_main(args + ["--trainer.max_steps", "10"])


def test_arms_option_keeps_those_arms_and_their_pairs():
    spec = load_spec(os.path.join(ROOT_DIR, "comparisons", "srpo_vs_grpo.yaml"), [0, 1, 2, 3, 4], ["grpo", "srpo"])
    assert [a.name for a in spec.arms] == ["grpo", "srpo"] and spec.seeds == [0, 1, 2, 3, 4]
    assert spec.pairs == [("srpo", "grpo"), ("grpo", START), ("srpo", START)]  # srpo_lam0's pair left out
    with pytest.raises(ConfigError, match="--arms: gpro not in"):
        load_spec(os.path.join(ROOT_DIR, "comparisons", "srpo_vs_grpo.yaml"), None, ["gpro"])


def test_report_rows_and_table():
    def m(f1, lt, step):
        return {"n": 100, "macro_f1": f1, "step_accuracy": step, "long_tail/n": 60, "long_tail/macro_f1": lt,
                "long_tail/step_accuracy": step, "by_type/negation/n": 20, "by_type/negation/macro_f1": lt}
    results = {START: {None: m(0.70, 0.68, 0.80)},
               "grpo": {0: m(0.72, 0.70, 0.81), 1: m(0.74, 0.71, 0.82)},
               "srpo": {0: m(0.73, 0.72, 0.82), 1: m(0.76, 0.74, 0.83)}}
    arms = arm_rows(results)
    g = next(r for r in arms if r["arm"] == "grpo" and r["slice"] == "overall")
    assert g["macro_f1"] == pytest.approx(0.73) and g["macro_f1_se"] == pytest.approx(0.01) and g["seeds"] == 2
    assert {r["slice"] for r in arms} == {"overall", "long_tail", "negation"}
    pairs = pair_rows(results, [("srpo", "grpo"), ("grpo", START)])
    sg = next(r for r in pairs if r["pair"] == "srpo - grpo" and r["slice"] == "long_tail" and r["metric"] == "macro_f1")
    assert sg["mean"] == pytest.approx(0.025) and sg["wins"] == 2 and sg["per_seed"] == "+0.020 +0.030"
    gs = next(r for r in pairs if r["pair"] == "grpo - start" and r["slice"] == "overall" and r["metric"] == "macro_f1")
    assert gs["mean"] == pytest.approx(0.03)
    from taosr.compare import signal_rows, signals_markdown

    results["srpo"][0]["train/steps/critical_count"], results["srpo"][1]["train/steps/critical_count"] = 10.0, 14.0
    results["grpo"][0]["train/rewards/correct/rise"] = float("nan")  # a log without rollouts (SFT): no row of dashes
    sig = signal_rows(results)
    assert [r["arm"] for r in sig] == ["srpo"] and sig[0]["train/steps/critical_count"] == 12.0
    assert sig[0]["train/steps/critical_count_se"] == 2.0 and "| srpo | 2 | — |" in signals_markdown(sig)
    results["srpo"][0]["train/rewards/correct/rise"], results["srpo"][1]["train/rewards/correct/rise"] = -0.02, 0.04
    sig = signal_rows(results)  # the fit's change over its steps is a signal like the means
    assert sig[0]["train/rewards/correct/rise"] == pytest.approx(0.01) and "rewards/correct/rise" in signals_markdown(sig)
    md = markdown(arms, pairs, "t")
    assert "| grpo | overall | 2 | 100 | 0.730 ± 0.010 |" in md and "| srpo - grpo | long_tail | macro_f1 | 0.025 ± 0.005 |" in md
    # a metric some seeds lack (NaN step accuracy: no annotations) says over how many seeds it is
    results["grpo"][1]["step_accuracy"] = float("nan")
    g = next(r for r in arm_rows(results) if r["arm"] == "grpo" and r["slice"] == "overall")
    assert (g["seeds"], g["step_accuracy_seeds"], g["macro_f1_seeds"], g["step_accuracy"]) == (2, 1, 2, 0.81)
    assert "| grpo | overall | 2 | 100 | 0.730 ± 0.010 | 0.810 (1 of 2 seeds) |" in markdown(arm_rows(results), [], "t")
    assert "ndcg@10" not in markdown(arm_rows(results), pairs, "t") and "ndcg@10" not in arms[0]
    # runs scored with P(tier) (eval_scores) add the ranking metrics, reported and paired like the rest
    for seed, (ndcg, rmse) in {0: (0.86, 0.90), 1: (0.88, 0.80)}.items():
        results["srpo"][seed].update({"ndcg@10": ndcg, "rmse_grade": rmse})
        results["grpo"][seed].update({"ndcg@10": ndcg - 0.02, "rmse_grade": rmse + 0.1})
    s = next(r for r in arm_rows(results) if r["arm"] == "srpo" and r["slice"] == "overall")
    assert s["ndcg@10"] == pytest.approx(0.87) and s["rmse_grade"] == pytest.approx(0.85)
    sg = next(r for r in pair_rows(results, [("srpo", "grpo")]) if r["metric"] == "rmse_grade" and r["slice"] == "overall")
    assert sg["mean"] == pytest.approx(-0.1) and sg["wins"] == 0  # lower is better: "a > b" counts the higher
    assert "| srpo | overall | 2 | 100 | 0.745 ± 0.015 | 0.825 ± 0.005 | — | — | — | 0.870 ± 0.010 | 0.850 ± 0.050 |" \
        in markdown(arm_rows(results), [], "t")


def test_compare_end_to_end_lam0_equals_grpo_and_resumes(tmp_path, capsys, cache_dir, sft_run, samples):
    """Two arms x two seeds from one micro start: SRPO with lambda = 0 must be GRPO exactly (every
    seed's difference is 0), the report is written, and a second run skips every finished run."""
    from tests.conftest import SMOKE, rl_samples_overrides

    from taosr.cli import main

    data = {"data.data_dir": os.path.join(cache_dir, "data"), "data.synth": {"n_train": 48, "n_val": 6, "n_test": 6}}
    spec = tmp_path / "spec.yaml"
    import yaml

    spec.write_text(yaml.safe_dump({
        "name": "lam0", "start": {"model": os.path.join(sft_run, "export"), "samples": samples}, "seeds": [0, 1],
        "arms": {"grpo": {"config": "configs/grpo.yaml"},
                 "srpo_lam0": {"config": "configs/srpo.yaml",
                               "set": {"model.init_args.grm_path": None, "model.init_args.examiner.mode": "verifier",
                                       "model.init_args.step_advantage.lam": 0.0}}},
        "eval": {"heldout": 8, "set": {**data, "model.init_args.eval_generation.max_new_tokens": 24,
                                       "model.init_args.model.cache_dir": os.path.join(cache_dir, "models")}},
        "pairs": [["srpo_lam0", "grpo"], ["grpo", "start"]]}))
    extra = ["--config", SMOKE, "--model.init_args.model.cache_dir", os.path.join(cache_dir, "models"),
             "--data.data_dir", os.path.join(cache_dir, "data"), *rl_samples_overrides(samples)]
    out = tmp_path / "out"
    cwd = os.getcwd()
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # arm configs are relative to the repo
    try:
        assert main(["compare", str(spec), "--out", str(out), "--no-wandb", *extra]) == 0
        first = (out / "pairs.csv").read_text()
        capsys.readouterr()
        assert main(["compare", str(spec), "--out", str(out), "--no-wandb", *extra]) == 0
        log = capsys.readouterr().out
        (out / "pairs.csv").unlink()
        assert main(["compare", str(spec), "--out", str(out), "--report-only"]) == 0  # the tables of what is done
        assert "taosr " not in capsys.readouterr().out
    finally:
        os.chdir(cwd)
    assert log.count("done, skipped") == 5 and "taosr fit" not in log        # start + 2 arms x 2 seeds
    assert (out / "pairs.csv").read_text() == first
    import csv

    rows = list(csv.DictReader(open(out / "pairs.csv")))
    lam0 = [r for r in rows if r["pair"] == "srpo_lam0 - grpo"]
    assert lam0 and all(r["seeds"] == "2" and float(r["mean"]) == 0.0 for r in lam0)
    for s in (0, 1):  # the same predictions, seed by seed
        a = open(out / "grpo" / f"seed{s}" / "heldout" / "eval" / "test-predictions.jsonl").read()
        b = open(out / "srpo_lam0" / f"seed{s}" / "heldout" / "eval" / "test-predictions.jsonl").read()
        assert a == b
    assert any(r["pair"] == "grpo - start" for r in rows)
    for f in ("summary.md", "summary.csv", "summary.png"):
        assert (out / f).stat().st_size > 0
    signals = {r["arm"]: r for r in csv.DictReader(open(out / "signals.csv"))}  # read back from each fit's W&B log
    assert set(signals) == {"grpo", "srpo_lam0"} and all(r["seeds"] == "2" for r in signals.values())
    assert all(0 <= float(r["train/reward"]) <= 1.2 for r in signals.values())
    lam0 = signals["srpo_lam0"]
    assert math.isfinite(float(lam0["train/steps/critical_count"]))
    # steps/* are means over the rows dynamic sampling keeps: none when every group of every step was flat
    flat = float(lam0["train/frac_reward_zero_std"]) == 1.0
    assert math.isfinite(float(lam0["train/steps/verifier_coverage"])) != flat, lam0
    acc = float(lam0["train/steps/verifier_accuracy"])  # NaN only where no kept step was covered
    assert math.isnan(acc) or 0.0 <= acc <= 1.0, lam0
    assert {"train/steps/verifier_accuracy", "train/rewards/correct/rise"} <= set(open(out / "signals.csv").readline().strip().split(","))
    assert signals["grpo"]["train/steps/critical_count"] == "nan"          # GRPO has no step signal
    assert "## Training signals" in (out / "summary.md").read_text()

    # --jobs 2: the same runs in two worker processes (one core each) give the same predictions
    # (one arm: GRPO's two seeds and the start)
    par = tmp_path / "par"
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert main(["compare", str(spec), "--out", str(par), "--no-wandb", "--jobs", "2", "--arms", "grpo",
                     *extra]) == 0
        log = capsys.readouterr().out
    finally:
        os.chdir(cwd)
    assert "3 runs in 2 workers" in log and log.count("fit took") == 2 and log.count("test took") == 3
    for run in ("grpo/seed0", "grpo/seed1", "start"):
        assert (par / run / "compare.log").stat().st_size > 0
        assert (par / run / "heldout/eval/test-predictions.jsonl").read_text() == \
            (out / run / "heldout/eval/test-predictions.jsonl").read_text(), run
    grpo_rows = lambda text: [r for r in text.splitlines() if r.startswith("grpo - start")]  # noqa: E731
    assert grpo_rows((par / "pairs.csv").read_text()) == grpo_rows(first)


def test_compare_goes_on_after_a_failed_run(tmp_path, capsys, cache_dir, sft_run, samples):
    """A run that fails (an arm whose model folder is missing, found when the weights load at setup:
    the check before the first run builds modules but loads nothing) does not stop the runs after it: the other arm's fit and the start's evaluation run, the report covers them, and the
    failure is listed at the end (exit 2). It used to stop there, leaving the rest of the night idle."""
    import yaml

    from taosr.cli import main
    from tests.conftest import SMOKE, rl_samples_overrides

    data = {"data.data_dir": os.path.join(cache_dir, "data"), "data.synth": {"n_train": 48, "n_val": 6, "n_test": 6}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "keepgoing", "start": {"model": os.path.join(sft_run, "export"), "samples": samples}, "seeds": [0],
        "arms": {"bad": {"config": "configs/grpo.yaml", "set": {"model.init_args.model.name_or_path": str(tmp_path / "gone")}},
                 "grpo": {"config": "configs/grpo.yaml"}},
        "eval": {"heldout": 8, "set": {**data, "model.init_args.eval_generation.max_new_tokens": 8,
                                       "model.init_args.model.cache_dir": os.path.join(cache_dir, "models")}},
        "pairs": [["grpo", "start"]]}))
    extra = ["--config", SMOKE, "--trainer.max_steps", "1", "--model.init_args.model.cache_dir",
             os.path.join(cache_dir, "models"), "--data.data_dir", os.path.join(cache_dir, "data"),
             *rl_samples_overrides(samples)]
    out = tmp_path / "out"
    cwd = os.getcwd()
    os.chdir(ROOT_DIR)
    try:
        rc = main(["compare", str(spec), "--out", str(out), "--no-wandb", *extra])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert rc == 2 and "1 runs failed (first: compare: bad seed 0: `taosr fit` failed (exit 2)" in err
    assert (out / "grpo" / "seed0" / "heldout" / "eval" / "test-metrics.json").exists()
    assert "grpo - start" in (out / "pairs.csv").read_text()
    # the finished run's checkpoint is gone (its export is scored); the failed run keeps what it has
    assert (out / "grpo" / "seed0" / "export" / "config.json").exists()
    assert not list((out / "grpo" / "seed0" / "checkpoints").glob("*.ckpt"))


def test_report_notes_arms_scored_on_different_seeds():
    """After a failed run (compare goes on) the arms can cover different seeds: the report says so."""
    from taosr.compare import seed_gap_note

    m = {"macro_f1": 0.7}
    assert seed_gap_note({"grpo": {0: m, 1: m}, "srpo": {0: m, 1: m}, "start": {None: m}}) == ""
    note = seed_gap_note({"grpo": {0: m, 1: m, 2: m}, "srpo": {0: m, 2: m}, "start": {None: m}})
    assert note.startswith("Note: the arms cover different seeds (grpo 0 1 2; srpo 0 2)")



def test_report_notes_arms_whose_seeds_all_scored_the_same():
    from taosr.compare import same_seeds_note

    a, b = {"macro_f1": 0.7, "long_tail/macro_f1": 0.6}, {"macro_f1": 0.71, "long_tail/macro_f1": 0.6}
    assert same_seeds_note({"grpo": {0: a, 1: b}, "start": {None: a}}) == ""
    assert same_seeds_note({"sft": {0: a}, "start": {None: a}}) == ""  # one seed: nothing to compare
    note = same_seeds_note({"sft": {0: a, 1: dict(a), 2: dict(a)}, "grpo": {0: a, 1: b}, "start": {None: a}})
    assert note.startswith("Note: every seed of sft scored the same") and "seed_keys: [data.seed]" in note


def test_a_serial_compare_goes_on_after_any_error(tmp_path, monkeypatch):
    """Without --jobs a run that dies of something other than a refused value (out of memory) is
    listed and the next runs still run (only a ConfigError was caught: the compare died there)."""
    import json

    import torch
    import yaml

    import taosr.compare as cmp

    start = tmp_path / "start"
    start.mkdir()
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "oom", "start": {"model": str(start)}, "seeds": [0],
                                         "arms": {"bad": {"config": "configs/grpo.yaml"},
                                                  "good": {"config": "configs/grpo.yaml"}},
                                         "eval": {"heldout": 8}, "pairs": [["good", "start"]]}))
    for name in ("check_commands", "check_settings", "record_settings"):
        monkeypatch.setattr(cmp, name, lambda *a, **k: None)
    monkeypatch.setattr(cmp, "evaluation_file", lambda spec, out: str(tmp_path / "heldout.jsonl"))
    ran = []

    def fake_run(spec, tag, run, steps):
        ran.append(run.arm)
        if run.arm == "bad":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        os.makedirs(os.path.dirname(run.metrics_path), exist_ok=True)
        json.dump({"macro_f1": 0.7}, open(run.metrics_path, "w"))

    monkeypatch.setattr(cmp, "_run_here", fake_run)
    failures = []
    results = cmp.run_compare(cmp.load_spec(str(spec_file)), str(tmp_path / "out"), failures=failures)
    assert ran == ["start", "bad", "good"] and set(results) == {"start", "good"}
    assert failures == ["compare: bad seed 0: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"]
    with pytest.raises(torch.OutOfMemoryError):  # --fail-fast: as before
        cmp.run_compare(cmp.load_spec(str(spec_file)), str(tmp_path / "out2"))


def test_a_start_named_by_preset_or_hub_id_runs_a_missing_folder_is_refused(tmp_path, monkeypatch):
    """SFT arms start from a preset (`tiny`: from scratch, comparisons/catalogue_fields.yaml) or a
    hub id; these were refused as missing folders. A missing export is still named in one line."""
    import json

    import yaml

    import taosr.compare as cmp
    from taosr.errors import ConfigError

    for name in ("check_commands", "check_settings", "record_settings"):
        monkeypatch.setattr(cmp, name, lambda *a, **k: None)
    monkeypatch.setattr(cmp, "evaluation_file", lambda spec, out: str(tmp_path / "heldout.jsonl"))
    monkeypatch.setattr(cmp, "_run_here", lambda spec, tag, run, steps: (
        os.makedirs(os.path.dirname(run.metrics_path), exist_ok=True),
        json.dump({"macro_f1": 0.5}, open(run.metrics_path, "w"))))
    for i, model in enumerate(("tiny", "smollm2-135m", "HuggingFaceTB/SmolLM2-135M", str(tmp_path / "no" / "export"))):
        spec_file = tmp_path / f"spec{i}.yaml"
        spec_file.write_text(yaml.safe_dump({"name": "named", "start": {"model": model}, "seeds": [0],
                                             "arms": {"sft": {"config": "configs/sft.yaml"}}, "eval": {"heldout": 8},
                                             "pairs": [["sft", "start"]]}))
        spec = cmp.load_spec(str(spec_file))
        if i < 3:
            assert set(cmp.run_compare(spec, str(tmp_path / f"out{i}"))) == {"start", "sft"}
        else:
            with pytest.raises(ConfigError, match=rf"^start.model: {tmp_path}/no/export not found"):
                cmp.run_compare(spec, str(tmp_path / f"out{i}"))


def _fake_runs(tmp_path, monkeypatch) -> list:
    """Fits and evaluations of a comparison under ``tmp_path/out`` stood in by files (a fit writes an
    export, a test a macro F1 by data set, arm b +0.1, seed 1 +0.01), evaluated on ``main.jsonl``;
    returns the list of (command, run folder, W&B run name) they append to."""
    import json

    import taosr.compare as cmp
    import taosr.launcher as launcher
    from taosr.loggers import RUN_NAME_ENV

    monkeypatch.setattr(cmp, "check_commands", lambda *a, **k: None)
    ran = []

    def fake_lightning(args, **kw):
        root = args[args.index("--trainer.default_root_dir") + 1]
        ran.append((args[0], os.path.relpath(root, tmp_path / "out"), os.environ[RUN_NAME_ENV]))
        if args[0] == "fit":
            os.makedirs(os.path.join(root, "export"), exist_ok=True)
            open(os.path.join(root, "export", "config.json"), "w").write("{}")
        else:
            data = os.path.basename(args[args.index("--data.test") + 1]).split(".")[0]
            f1 = {"main": 0.5, "unpriced": 0.3, "fixture": 0.2, "other": 0.9}[data]
            f1 += 0.1 * ("/b/" in root) + 0.01 * ("seed1" in root)
            os.makedirs(os.path.join(root, "eval"), exist_ok=True)
            json.dump({"n": 10, "macro_f1": f1}, open(os.path.join(root, "eval", "test-metrics.json"), "w"))
        return 0

    monkeypatch.setattr(launcher, "run_lightning", fake_lightning)
    monkeypatch.setattr(cmp, "evaluation_file", lambda spec, out: str(tmp_path / "main.jsonl"))
    return ran


def test_runs_kept_as_scores_alone_are_reported_and_not_run_again(tmp_path, monkeypatch):
    """What a lent GPU session brings back of a comparison (each run's scores, records and logs; no
    weights): restored into the folder, a later session's comparison with more seeds skips those
    runs and reports every seed."""
    import json
    import shutil

    import yaml

    import taosr.compare as cmp

    ran = _fake_runs(tmp_path, monkeypatch)
    (tmp_path / "main.jsonl").write_text(json.dumps({"query": "red shoes", "item": {"title": "Red Shoes"}, "label": 4}) + "\n")
    spec = {"name": "carried", "start": {"model": "tiny"}, "seeds": [0],
            "arms": {"a": {"config": "configs/sft.yaml"}, "b": {"config": "configs/sft.yaml"}},
            "eval": {"heldout": 8}, "pairs": [["b", "a"]]}
    spec_file, out = tmp_path / "spec.yaml", str(tmp_path / "out")
    spec_file.write_text(yaml.safe_dump(spec))
    cmp.run_compare(cmp.load_spec(str(spec_file)), out)
    assert len(ran) == 4
    for arm in ("a", "b"):  # the weights stay on the machine that is given back
        shutil.rmtree(os.path.join(out, arm, "seed0", "export"))
    ran.clear()
    spec["seeds"] = [0, 1]
    spec_file.write_text(yaml.safe_dump(spec))
    results = cmp.run_compare(cmp.load_spec(str(spec_file)), out)
    assert sorted(r[1] for r in ran) == ["a/seed1", "a/seed1/heldout", "b/seed1", "b/seed1/heldout"]
    assert results["b"][0]["macro_f1"] == pytest.approx(0.6) and results["b"][1]["macro_f1"] == pytest.approx(0.61)


def test_eval_also_scores_every_run_on_more_sets_and_a_set_added_later_fits_nothing(tmp_path, monkeypatch):
    """eval.also: each run (and the start) is scored on more sets too, reported as set:<name> rows
    and paired like the rest, its W&B runs named -test-<set>; a set added to a finished comparison
    is only scored; a set dropped from the spec is not reported, and one scored before from another
    file is refused (also after it was dropped and added back), as the main evaluation is; a bad row
    in a set's file stops the comparison before its first run."""
    import json

    import yaml

    import taosr.compare as cmp

    ran = _fake_runs(tmp_path, monkeypatch)
    row = json.dumps({"query": "red shoes", "item": {"title": "Red Shoes"}, "label": 4}) + "\n"
    for name in ("main", "unpriced", "fixture", "other"):
        (tmp_path / f"{name}.jsonl").write_text(row)
    spec = {"name": "also", "start": {"model": "tiny"}, "seeds": [0, 1],
            "arms": {"a": {"config": "configs/sft.yaml"}, "b": {"config": "configs/sft.yaml"}},
            "eval": {"heldout": 8, "also": {"unpriced": str(tmp_path / "unpriced.jsonl")}}, "pairs": [["b", "a"], ["b", "start"]]}
    spec_file, out = tmp_path / "spec.yaml", str(tmp_path / "out")

    def compare(**also):
        spec["eval"]["also"] = {k: str(tmp_path / v) for k, v in also.items()}
        spec_file.write_text(yaml.safe_dump(spec))
        ran.clear()
        return cmp.run_compare(cmp.load_spec(str(spec_file)), out)

    results = compare(unpriced="unpriced.jsonl")
    assert ("test", "start/also-unpriced", "start-test-unpriced") in ran and ("fit", "b/seed1", "b-seed1") in ran
    assert ("test", "b/seed1/heldout", "b-seed1-test") in ran
    assert len(ran) == 1 * 2 + 4 * 3  # the start scored twice; each of 4 runs fitted and scored twice
    assert results["b"][1]["sets/unpriced/macro_f1"] == pytest.approx(0.41) and results["b"][1]["macro_f1"] == pytest.approx(0.61)
    pairs = cmp.pair_rows(results, [("b", "a")])
    r = next(p for p in pairs if p["slice"] == "set:unpriced" and p["metric"] == "macro_f1")
    assert r["mean"] == pytest.approx(0.1) and r["wins"] == 2
    assert "| b | set:unpriced | 2 | 10 | 0.405 ± 0.005 |" in cmp.markdown(cmp.arm_rows(results), pairs, "t", all_slices=False)
    # a set added later: only it is scored, nothing is fitted or scored again
    results = compare(unpriced="unpriced.jsonl", fixture="fixture.jsonl")
    assert sorted({(a[0], os.path.basename(a[1])) for a in ran}) == [("test", "also-fixture")] and len(ran) == 5
    assert results["a"][0]["sets/fixture/macro_f1"] == pytest.approx(0.2)
    # a set dropped from the spec is no longer reported
    results = compare(unpriced="unpriced.jsonl")
    assert ran == [] and "sets/fixture/macro_f1" not in results["a"][0] and "sets/unpriced/macro_f1" in results["a"][0]
    # the same name from another file: refused, nothing runs -- also after it was dropped (above) and added back
    for again in ({"unpriced": "unpriced.jsonl", "fixture": "other.jsonl"}, {"fixture": "other.jsonl"}):
        with pytest.raises(ConfigError, match=r"also-fixture was scored with other settings"):
            compare(**again)
        assert ran == []
    with pytest.raises(ConfigError, match=r"^eval.also.fixture: .*missing.jsonl not found"):
        compare(fixture="missing.jsonl")
    (tmp_path / "bad.jsonl").write_text(row + '{"query": "x", "item": {"title": "X"}}\n')
    with pytest.raises(ConfigError, match=r"^eval.also.late: .*bad.jsonl:2: field 'label'"):
        compare(late="bad.jsonl")
    assert ran == []


def _spec_file(path, spec) -> str:
    import yaml

    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_baselines_are_scored_once_paired_against_and_added_later_without_fitting(tmp_path, monkeypatch):
    """baselines: an earlier stage's export (the SFT before the DPO start) scored once, so the report
    pairs every arm against it seed by seed (GRPO > SFT is the paper's claim as much as SRPO > GRPO);
    one added to a finished comparison is only scored; a missing folder is refused before any run."""
    import json

    import yaml

    import taosr.compare as cmp
    import taosr.launcher as launcher

    ran = _fake_runs(tmp_path, monkeypatch)
    fake, models = launcher.run_lightning, {}

    def seeing_models(args, **kw):
        if args[0] == "test":
            root = os.path.relpath(args[args.index("--trainer.default_root_dir") + 1], tmp_path / "out")
            models[root] = args[args.index("--model.init_args.model.name_or_path") + 1]
        return fake(args, **kw)

    monkeypatch.setattr(launcher, "run_lightning", seeing_models)
    (tmp_path / "main.jsonl").write_text(json.dumps({"query": "red shoes", "item": {"title": "Red Shoes"}, "label": 4}) + "\n")
    sft = tmp_path / "sft-export"
    sft.mkdir()
    spec = {"name": "base", "start": {"model": "tiny"}, "seeds": [0, 1],
            "arms": {"a": {"config": "configs/sft.yaml"}, "b": {"config": "configs/sft.yaml"}},
            "eval": {"heldout": 8}, "pairs": [["b", "a"]]}
    spec_file, out = tmp_path / "spec.yaml", str(tmp_path / "out")
    spec_file.write_text(yaml.safe_dump(spec))
    cmp.run_compare(cmp.load_spec(str(spec_file)), out)
    assert len(ran) == 8 and not any(r[1].startswith(("start", "sft")) for r in ran)
    ran.clear()
    spec["baselines"], spec["pairs"] = {"sft": str(sft)}, [["b", "a"], ["b", "sft"]]
    spec_file.write_text(yaml.safe_dump(spec))
    results = cmp.run_compare(cmp.load_spec(str(spec_file)), out)
    assert ran == [("test", os.path.join("sft", "heldout"), "sft-test")]  # scored once; nothing fitted again
    assert models[os.path.join("sft", "heldout")] == str(sft)
    assert set(results["sft"]) == {None}
    rows = cmp.pair_rows(results, [("b", "sft")])
    r = next(p for p in rows if p["slice"] == "overall" and p["metric"] == "macro_f1")
    assert r["seeds"] == 2 and r["wins"] == 2 and r["mean"] == pytest.approx(0.105)  # 0.6 and 0.61 against 0.5
    spec["pairs"] = [["b", "a"]]  # a baseline no pair names is not scored (as the start)
    assert [r.arm for r in cmp.plan_runs(cmp.load_spec(_spec_file(spec_file, spec)), out) if r.seed is None] == []
    spec["pairs"] = [["b", "a"], ["b", "sft"]]
    spec["baselines"] = {"sft": str(tmp_path / "gone")}
    spec_file.write_text(yaml.safe_dump(spec))
    ran.clear()
    with pytest.raises(ConfigError, match=r"^baselines.sft: .*gone not found"):
        cmp.run_compare(cmp.load_spec(str(spec_file)), str(tmp_path / "out2"))
    assert ran == []


def test_a_hub_id_start_has_the_same_fingerprint_from_any_folder(tmp_path, monkeypatch):
    """A hub id in a command was made absolute like a path: resumed from another folder, the runs
    read as fitted with other settings."""
    from taosr.compare import _fingerprint

    args = ["fit", "--model.init_args.model.name_or_path", "HuggingFaceTB/SmolLM2-135M", "--data.test", "nodir/t.jsonl"]
    here = _fingerprint(args)
    monkeypatch.chdir(tmp_path)
    there = _fingerprint(args)
    assert here[2] == there[2] == "HuggingFaceTB/SmolLM2-135M" and here[4] != there[4]  # a real path is absolute


@pytest.mark.parametrize("arm", ["grpo", "srpo"])
def test_the_smollm2_spec_trains_as_the_smollm2_quick_start_does(arm, capsys):
    """comparisons/smollm2.yaml restates the SmolLM2 quick start's RL settings (LoRA, lr, budget,
    rejection band, evaluation sizes): each arm's resolved config equals that quick start's GRPO /
    SRPO fit but for the run's own paths and seed."""
    import dataclasses
    import json

    import yaml

    from taosr import pipeline
    from taosr.cli import main
    from taosr.compare import fit_args
    from taosr.data.synth import SynthConfig
    from taosr.quickstart_plan import load_plan

    def resolved(argv):
        cwd = os.getcwd()
        os.chdir(ROOT_DIR)
        try:
            assert main([*argv, "--print_config"]) == 0
        finally:
            os.chdir(cwd)
        cfg = yaml.safe_load(capsys.readouterr().out)
        for where, key in [(cfg, "seed_everything"), (cfg["trainer"], "default_root_dir"), (cfg["data"], "data_dir"),
                           (cfg["data"], "samples_path"), (cfg["model"]["init_args"], "grm_path"),
                           (cfg["model"]["init_args"]["model"], "name_or_path")]:
            where.pop(key, None)  # the run's own paths and seed
        if cfg["data"]["synth"] is None:  # the data module's default
            cfg["data"]["synth"] = json.loads(json.dumps(dataclasses.asdict(SynthConfig())))  # keys as YAML prints them
        return cfg

    qp = load_plan("smollm2-135m", False)
    quick = next(s.argv for s in pipeline.commands("runs/qs", qp, qp.budgets) if s.kind == "fit" and s.timing == arm)
    spec = load_spec(os.path.join(ROOT_DIR, "comparisons", "smollm2.yaml"))
    run = next(r for r in plan_runs(spec, "/nonexistent/out") if r.arm == arm)
    got, want = resolved(fit_args(spec, next(a for a in spec.arms if a.name == arm), run, [])), resolved(quick)
    for section in ("model", "data", "trainer"):
        assert got.pop(section) == want.pop(section), section
    assert got == want


def test_a_settings_difference_reads_as_a_sentence():
    """An added argument read "(was now also `--trainer.max_steps 5`)"."""
    from taosr.compare import _first_difference

    assert _first_difference(["--a", "1"], ["--a", "2"]) == "was `--a 1`, now `--a 2`"
    assert _first_difference(["--a", "1"], ["--a", "1", "--trainer.max_steps", "5"]) == "now also `--trainer.max_steps 5`"
    assert _first_difference(["--a", "1", "--b", "2"], ["--a", "1"]) == "then also `--b 2`"


def test_a_comparison_moved_with_its_checkout_keeps_its_runs(tmp_path, monkeypatch):
    """Each run's record names the folder it was written in: the tree moved (a checkout at another
    path, a lent machine's other folder), the comparison run again from there skips every finished run
    instead of refusing them as fitted with other settings; an older record (no folder) is as strict as
    before."""
    import json
    import shutil

    import yaml

    import taosr.compare as cmp

    ran = _fake_runs(tmp_path, monkeypatch)
    a, b = tmp_path / "a" / "main", tmp_path / "b" / "main"
    a.mkdir(parents=True)
    (a / "main.jsonl").write_text(json.dumps({"query": "red shoes", "item": {"title": "Red Shoes"}, "label": 4}) + "\n")
    monkeypatch.setattr(cmp, "evaluation_file", lambda spec, out: os.path.join(os.path.dirname(out), "main.jsonl"))
    spec = {"name": "moved", "start": {"model": "tiny"}, "seeds": [0],
            "arms": {"a": {"config": "configs/sft.yaml", "set": {"data.samples_path": str(a / "samples.jsonl")}}},
            "eval": {"heldout": 8}, "pairs": [["a", "start"]]}
    (a / "spec.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(a)  # run from the checkout's root, as the README's commands are
    cmp.run_compare(cmp.load_spec("spec.yaml"), "out")
    assert len(ran) == 3  # the fit, its evaluation, the start's
    b.parent.mkdir()
    shutil.move(str(a), str(b))
    spec["arms"]["a"]["set"]["data.samples_path"] = str(b / "samples.jsonl")  # the spec names the new place
    (b / "spec.yaml").write_text(yaml.safe_dump(spec))
    ran.clear()
    monkeypatch.chdir(b)
    cmp.run_compare(cmp.load_spec("spec.yaml"), "out")
    assert ran == []
    record = b / "out" / "a" / "seed0" / cmp.RUN_FILE
    stored = json.loads(record.read_text())
    assert stored["place"] == {"at": os.path.realpath(a / "out" / "a" / "seed0"), "cwd": os.path.realpath(a)}
    stored["also"] = {"x": "not a command"}
    record.write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match=r"a/seed0/compare-run.json cannot be read \(TypeError"):
        cmp.run_compare(cmp.load_spec("spec.yaml"), "out")
    del stored["place"], stored["also"]  # as written before records kept their place
    record.write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match=r"a/seed0 was fitted with other settings"):
        cmp.run_compare(cmp.load_spec("spec.yaml"), "out")


def test_report_only_says_where_each_unfinished_run_stands(tmp_path):
    """An overnight comparison read part-way: the finished runs counted, each started one with the
    last progress line of its log (metrics dropped) and the log's age, the rest counted."""
    from taosr.compare import Run, where_runs_stand

    def run(name, seed):
        return Run(name, seed, str(tmp_path / name / f"seed{seed}"))

    done, fitting, scoring, fitted, stopped, fresh, stale = (run("a", 0), run("a", 1), run("b", 1), run("b", 2),
                                                            run("a", 2), run("a", 3), run("b", 3))
    os.makedirs(os.path.dirname(done.metrics_path))
    open(done.metrics_path, "w").write("{}")
    for r in (fitting, scoring, fitted, stopped):
        os.makedirs(os.path.join(r.root, "checkpoints"))
    for r in (scoring, fitted):
        os.makedirs(r.export)
        open(os.path.join(r.export, "config.json"), "w").write("{}")
    open(os.path.join(fitting.root, "compare.log"), "w").write(
        "$ taosr fit ...\ntaosr: fit step 3/60 (5%), 90 s/step, 1h27m left; train/loss 0.1\n"
        "taosr: fit step 4/60 (7%), 91 s/step, 1h26m left; train/loss 0.2, train/reward 0.8\n")
    open(os.path.join(scoring.root, "compare.log"), "w").write(
        "taosr: fit step 60/60 (100%), 90 s/step, 0s left\n$ taosr test ...\ntaosr: test batch 2/32 (6%), 52 s/batch, 26m left\n")
    open(os.path.join(fitted.root, "compare.log"), "w").write("taosr: fit step 60/60 (100%), 90 s/step, 0s left\n")
    open(os.path.join(stopped.root, "checkpoints", "last.ckpt"), "w").write("")
    os.makedirs(stale.root)
    open(os.path.join(stale.root, "compare.log"), "w").write("taosr: fit step 4/60 (7%), 79.7 s/step, 1h14m left\n")
    os.utime(os.path.join(stale.root, "compare.log"), (1.0e9 - 3600, 1.0e9 - 3600))
    for r in (fitting, scoring, fitted):
        os.utime(os.path.join(r.root, "compare.log"), (1.0e9, 1.0e9))
    now = 1.0e9 + 125
    lines = where_runs_stand([done, fitting, scoring, fitted, stopped, fresh, stale], "study", now=now)
    assert lines == ["[study] 1 of 7 runs finished (the report covers them); 5 started, 1 not started:",
                     "  a seed 1: fit step 4/60 (7%), 91 s/step, 1h26m left (log written 2m05s ago)",
                     "  b seed 1: fitted; test batch 2/32 (6%), 52 s/batch, 26m left (log written 2m05s ago)",
                     "  b seed 2: fitted; evaluation not started (log written 2m05s ago)",
                     "  a seed 2: checkpoint saved",
                     "  b seed 3: stopped at fit step 4/60 (7%) (log written 1h02m ago)"]  # silent past its rate
    assert where_runs_stand([done], "study") == ["[study] all 1 runs finished"]
    # a run that said it stopped (its worker was stopped with the comparison: the lines of the study's
    # own logs) or whose command failed (a crash prints a traceback; the worker adds its exit) reads so
    # at once; one resumed since (a new command's header, its model still loading) does not
    from taosr.jobs import exit_line

    progress = "taosr: fit step 37/60 (62%), 96.4 s/step, 36m57s left; train/loss 0.1\n"
    ends = {"int": "\nDetected KeyboardInterrupt, attempting graceful shutdown ...\n"
                   "taosr: KeyboardInterrupt at step 37: saved last.ckpt\n"
                   "taosr: interrupted (checkpoint: last.ckpt, step 37); re-run the taosr compare command\n",
            "term": "taosr: terminated (SIGTERM); interrupted (checkpoint: last.ckpt, step 37); re-run ...\n",
            "crash": "Traceback (most recent call last):\nRuntimeError: out of memory\n" + exit_line("fit", 1),
            "resumed": "taosr: interrupted (checkpoint: last.ckpt, step 37); re-run\n\n$ taosr fit --ckpt_path last.ckpt\n"}
    runs = []
    for seed, end in enumerate(ends.values()):
        r = run("c", seed)
        os.makedirs(r.root)
        open(os.path.join(r.root, "compare.log"), "w").write(progress + end)
        os.utime(os.path.join(r.root, "compare.log"), (1.0e9, 1.0e9))
        runs.append(r)
    assert where_runs_stand(runs, "study", now=now)[1:] == [
        "  c seed 0: stopped at fit step 37/60 (62%) (log written 2m05s ago)",
        "  c seed 1: stopped at fit step 37/60 (62%) (log written 2m05s ago)",
        "  c seed 2: failed at fit step 37/60 (62%) (log written 2m05s ago)",
        "  c seed 3: fit step 37/60 (62%), 96.4 s/step, 36m57s left (log written 2m05s ago)"]


def test_a_worker_whose_command_fails_says_so_in_its_log(tmp_path):
    from taosr.jobs import Slot, Task, exit_line, run_parallel

    bad = Task("bad", [["no-such-command"]], str(tmp_path / "bad.log"))
    assert run_parallel([bad], [Slot(0, [])], poll_s=0.05) == [bad]
    assert open(bad.log).read().endswith(exit_line("no-such-command", 2)) and "failed (exit 2)" in exit_line("x", 2)


def test_the_report_counts_the_examples_behind_each_difference(tmp_path, capsys):
    """A paired macro F1 difference rests on the examples one arm got right and the other wrong:
    flips.csv and the report count them per seed (a against b, and against the start scored once);
    a seed without prediction records (a run carried back as scores alone) is left out and counted."""
    import csv
    import json

    import taosr.compare as cmp

    golds = [(4, "brand"), (2, "alternative"), (3, "negation"), (1, "qa")]
    preds = {("start", None): [4, 4, 3, 1], ("a", 0): [4, 2, 3, 2], ("a", 1): [4, 2, 2, 1], ("a", 2): [4, 2, 3, 1],
             ("b", 0): [4, 4, 3, 1], ("b", 1): [4, 4, 3, 1], ("b", 2): [4, 4, 3, 1]}
    out = str(tmp_path)
    runs = []
    for (arm, seed), ps in preds.items():
        run = cmp.Run(arm, seed, os.path.join(out, arm) if seed is None else os.path.join(out, arm, f"seed{seed}"))
        os.makedirs(os.path.dirname(run.metrics_path))
        json.dump({"n": 4, "macro_f1": 0.5}, open(run.metrics_path, "w"))
        if (arm, seed) != ("b", 2):
            with open(os.path.join(run.eval_root, "eval", "test-predictions.jsonl"), "w") as fh:
                for i, ((g, qt), p) in enumerate(zip(golds, ps)):
                    fh.write(json.dumps({"index": i, "id": f"h-{i}", "query_type": qt, "gold": g, "pred": p}) + "\n")
        runs.append(run)
    rows = cmp.flip_rows(runs, [("a", "b"), ("a", "start")])
    got = {(r["pair"], r["slice"]): r for r in rows}
    ab = got[("a - b", "overall")]
    assert ab["seeds"] == 2 and ab["n"] == 4  # seed 2 of b has no records
    assert (ab["a_only"], ab["b_only"], ab["net"]) == (1.0, 1.0, 0.0) and ab["both_wrong"] == 0.0
    a_start = got[("a - start", "long_tail")]  # alternative, negation, qa
    assert a_start["seeds"] == 3 and a_start["n"] == 3
    assert a_start["a_only"] == 1.0 and a_start["b_only"] == pytest.approx(2 / 3) and a_start["net"] == pytest.approx(1 / 3)
    cmp.write_report(out, cmp.collect(runs), [("a", "b"), ("a", "start")], "demo", rows)
    assert "| a - b | overall | 2 | 4 | 1.0 ± 0.0 | 1.0 ± 0.0 | 0.0 ± 0.0 | 0.0 ± 0.0 |" in (tmp_path / "summary.md").read_text()
    assert "Examples behind each difference" in capsys.readouterr().out
    assert len(list(csv.DictReader(open(tmp_path / "flips.csv")))) == 4
    # a bad record file leaves that seed out of its pair, with a warning naming it; the report is still written
    with open(os.path.join(runs[1].eval_root, "eval", "test-predictions.jsonl"), "a") as fh:  # a seed 0
        fh.write("{not json\n")
    rows = cmp.flip_rows(runs, [("a", "b")])
    assert rows[0]["seeds"] == 1 and "warning: flips of a seed 0 against b: " in capsys.readouterr().err
