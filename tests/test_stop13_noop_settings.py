"""Settings the run never reads are refused where the user set them (the command line, YAML text, a
config file of their own) and left alone where taosr's own configs/ set them for every method
(taosr.setting_checks; who set a key: taosr.configfiles.user_set_keys). Each test also shows the
taosr-set case still passing."""
import os

import pytest
import yaml

from taosr.cli import main
from tests.conftest import ROOT, SMOKE, small_overrides

SRPO, GRPO, GRM = (os.path.join(ROOT, "configs", f"{m}.yaml") for m in ("srpo", "grpo", "grm"))
MODE_VERIFIER = ["--model.init_args.examiner.mode", "verifier"]


def _check(*argv):
    from taosr.launcher import parse_error  # what taosr compare / sweep check before their first run

    return parse_error(list(argv))


def test_who_set_a_key():
    from taosr.configfiles import USER_KEYS_MARK, user_set_keys

    # taosr's own files (method configs, their bases, experiment overlays) set nothing of the user's
    assert user_set_keys(["fit", "--config", SRPO, "--config", SMOKE, "--config",
                          os.path.join(ROOT, "configs", "experiment", "smoke_rl.yaml")]) == frozenset()
    # options in every spelling: --k v, --k=v, --model.x (jsonargparse's init_args shorthand), a mapping value
    assert user_set_keys(["fit", "--config", SRPO, "--model.grm_path", "g", "--model.init_args.lr=0.1",
                          "--model.init_args.examiner", "{mode: verifier}", "--model", "SRPOModule",
                          "--config", "model:\n  init_args:\n    min_lr_ratio: 0.2\n", "--print_config"]) == {
        "model.init_args.grm_path", "model.init_args.lr", "model.init_args.examiner.mode", "model.class_path",
        "model.init_args.min_lr_ratio"}


def test_who_set_a_key_in_a_users_file_and_a_saved_run_config(tmp_path):
    from taosr.configfiles import user_mark, user_set_keys

    own = tmp_path / "mine.yaml"  # a user's file based on taosr's srpo.yaml: its own keys only
    own.write_text(f"base: [{SRPO}]\nmodel:\n  init_args:\n    keep_step_only_groups: true\n")
    assert user_set_keys(["fit", "--config", str(own)]) == {"model.init_args.keep_step_only_groups"}
    saved = tmp_path / "config.yaml"  # a run's saved config lists its user's keys
    saved.write_text(user_mark({"trainer.default_root_dir"}) + yaml.safe_dump(
        {"model": {"init_args": {"grm_path": "x", "examiner": {"mode": "verifier"}}}}))
    assert user_set_keys(["fit", "--config", str(saved)]) == {"trainer.default_root_dir"}


def test_min_lr_ratio_with_a_constant_schedule(tmp_path):
    bad = _check("fit", "--config", GRPO, "--model.init_args.min_lr_ratio", "0.05")
    assert bad.startswith("model.init_args.min_lr_ratio: 0.05 is the floor of the cosine and linear schedules, "
                          "and model.init_args.scheduler is constant"), bad
    mine = tmp_path / "mine.yaml"  # a user's own file is the user's setting too
    mine.write_text("model:\n  init_args:\n    min_lr_ratio: 0.0\n")
    assert "min_lr_ratio" in _check("fit", "--config", GRPO, "--config", str(mine))
    # the constant schedule comes from taosr's rl base; with a schedule that reads it, or at its default: accepted
    assert _check("fit", "--config", GRPO, "--model.init_args.min_lr_ratio", "0.05",
                  "--model.init_args.scheduler", "cosine") is None
    assert _check("fit", "--config", GRPO, "--model.init_args.min_lr_ratio", "0.1") is None


def test_keep_step_only_groups_without_dynamic_sampling_or_a_step_term(tmp_path):
    # srpo.yaml's GRM (runs/grm/export) must exist for the module to be built: a folder stands in
    keep = ["--model.init_args.keep_step_only_groups", "true", "--model.init_args.grm_path", str(tmp_path)]
    bad = _check("fit", "--config", SRPO, *keep, "--model.init_args.dynamic_sampling", "false")
    assert bad.startswith("model.init_args.keep_step_only_groups: changes which groups dynamic sampling drops, "
                          "and model.init_args.dynamic_sampling is false"), bad
    bad = _check("fit", "--config", SRPO, *keep, "--model.init_args.step_advantage.name", "outcome")
    assert bad.startswith("model.init_args.keep_step_only_groups: keeps groups for their step term, and "
                          "step_advantage 'outcome' has none"), bad
    assert _check("fit", "--config", SRPO, *keep) is None  # dynamic sampling on (the rl base) and a step term


def test_grm_path_in_verifier_mode():
    bad = _check("fit", "--config", SRPO, *MODE_VERIFIER, "--model.init_args.grm_path", "runs/grm/export")
    assert bad.startswith("model.init_args.grm_path: examiner.mode 'verifier' never loads a GRM, so "
                          "'runs/grm/export' is unused (remove it or give null"), bad
    # srpo.yaml's own grm_path with the README's verifier-only advice (and sweeps/srpo_ablation.yaml): accepted
    assert _check("fit", "--config", SRPO, *MODE_VERIFIER) is None
    assert _check("fit", "--config", SRPO, *MODE_VERIFIER, "--model.init_args.grm_path", "null") is None
    # the GRM's scoring batch size alike (fourteenth stop)
    bad = _check("fit", "--config", SRPO, *MODE_VERIFIER, "--model.init_args.grm_batch_size", "8")
    assert bad.startswith("model.init_args.grm_batch_size: examiner.mode 'verifier' never loads a GRM, so its "
                          "scoring batch size is unused"), bad


def test_a_setting_given_to_every_run_of_a_sweep_or_comparison_is_a_warning():
    """taosr sweep / compare / quickstart give their extra arguments to every run (shared_arguments): a
    sweep over examiner modes with one GRM for all is not refused in its verifier runs, only noted."""
    from taosr.launcher import SHARED_ARGS_ENV, shared_arguments
    from taosr.setting_checks import check_unread_settings

    args = ["fit", "--config", SRPO, *MODE_VERIFIER, "--model.init_args.grm_path", "g"]
    assert "grm_path" in _check(*args)
    with shared_arguments(["--model.init_args.grm_path", "g"]):
        assert _check(*args) is None
    assert SHARED_ARGS_ENV not in os.environ
    notes = []
    cfg = {"model": {"class_path": "taosr.methods.srpo.SRPOModule",
                     "init_args": {"grm_path": "g", "examiner": {"mode": "verifier"}}}}
    check_unread_settings("fit", cfg, {"model.init_args.grm_path"}, {"model.init_args.grm_path"}, warn=notes.append)
    assert len(notes) == 1 and notes[0].startswith("taosr: warning: model.init_args.grm_path: examiner.mode") \
        and notes[0].endswith("(given to every run: a warning, not a refusal)")


def test_ddp_ranks_get_the_keys_of_the_command_as_given(monkeypatch):
    """Lightning's DDP launcher starts the other ranks with the expanded arguments (a layered config as
    YAML text, every key of which would read as the user's): they take rank 0's keys from the environment."""
    from taosr.configfiles import expand_config_args, user_set_keys
    from taosr.launcher import RUN_KEYS_ENV, _run_keys

    monkeypatch.delenv(RUN_KEYS_ENV, raising=False)
    argv = ["fit", "--config", SRPO, *MODE_VERIFIER]
    expanded = expand_config_args(argv)
    assert "model.init_args.grm_path" in user_set_keys(expanded)  # what a rank would compute alone
    mine = ({"model.init_args.examiner.mode"}, set())
    assert _run_keys(argv, expanded) == mine  # rank 0
    assert _run_keys(expanded, expanded) == mine  # a rank it started
    monkeypatch.delenv(RUN_KEYS_ENV)
    other = ["fit", "--config", SRPO, "--model.init_args.grm_path", "g"]
    assert _run_keys(other, expand_config_args(other)) == ({"model.init_args.grm_path"}, set())


def test_grm_eval_generation_outside_predict(tmp_path):
    gen = ["--model.init_args.eval_generation.max_new_tokens", "8"]
    for command in ("test", "validate"):
        bad = _check(command, "--config", GRM, *gen)
        assert bad == (f"model.init_args.eval_generation.max_new_tokens: GRMModule's {command} scores step verdicts "
                       "and generates nothing (only taosr predict reads eval_generation); remove it"), bad
    assert _check("predict", "--config", GRM, *gen) is None  # predict generates with it
    assert _check("test", "--config", GRM, "--config", SMOKE) is None  # the smoke overlay sets it for every method
    # a fit only warns: the quick start passes one set of arguments (`-- ARGS`) to every stage, the GRM's too
    assert _check("fit", "--config", GRM, *gen) is None
    from taosr.setting_checks import check_unread_settings

    notes = []
    cfg = {"model": {"class_path": "taosr.methods.grm.GRMModule", "init_args": {"eval_generation": {"max_new_tokens": 8}}}}
    check_unread_settings("fit", cfg, {"model.init_args.eval_generation.max_new_tokens"}, warn=notes.append)
    assert len(notes) == 1 and "this fit does not read it" in notes[0]


def test_grm_eval_scores_and_table_rows(tmp_path):
    """The generated-label evaluation's other options (fourteenth stop): the GRM never logs a table of
    generations, and only taosr predict generates (with tier scores under eval_scores)."""
    for command in ("fit", "test", "validate", "predict"):
        bad = _check(command, "--config", GRM, "--model.init_args.table_rows", "8")
        assert bad.startswith("model.init_args.table_rows: GRMModule logs no table of generations"), bad
    bad = _check("test", "--config", GRM, "--model.init_args.eval_scores", "false")
    assert bad == ("model.init_args.eval_scores: GRMModule's test scores step verdicts and generates nothing (only "
                   "taosr predict reads eval_scores); remove it"), bad
    assert _check("predict", "--config", GRM, "--model.init_args.eval_scores", "false") is None
    assert _check("fit", "--config", GRM, "--model.init_args.eval_scores", "false") is None  # a warning at fit
    # at their defaults, and on a method that generates: accepted
    assert _check("test", "--config", GRM, "--model.init_args.table_rows", "32") is None
    assert _check("test", "--config", os.path.join(ROOT, "configs", "sft.yaml"), "--model.init_args.table_rows", "8",
                  "--model.init_args.eval_scores", "false") is None


def test_a_saved_run_config_means_what_its_run_meant(tmp_path, capsys):
    """A re-run of <run>/config.yaml (every key in one file) is refused only for what its run's user set."""
    from taosr.configfiles import user_mark

    assert main(["test", "--config", GRM, "--config", SMOKE, "--print_config"]) == 0
    cfg = capsys.readouterr().out
    saved = tmp_path / "config.yaml"
    saved.write_text(user_mark({"trainer.default_root_dir"}) + cfg)
    assert _check("test", "--config", str(saved)) is None  # eval_generation came from the smoke overlay
    plain = tmp_path / "mine.yaml"
    plain.write_text(cfg)
    assert "model.init_args.eval_generation.max_new_tokens" in _check("test", "--config", str(plain))


def test_the_run_writes_who_set_its_keys_and_refuses_before_building(tmp_path, cache_dir, capsys, sft_run):
    from taosr.configfiles import saved_user_keys

    listed = saved_user_keys(os.path.join(sft_run, "config.yaml"))
    assert listed is not None and "model.init_args.model.name_or_path" in listed
    assert not {"model.init_args.eval_generation.max_new_tokens", "model.init_args.scheduler"} & listed
    rc = main(["fit", "--config", GRPO, *small_overrides(str(tmp_path), cache_dir), "--model.init_args.min_lr_ratio", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("taosr: error: model.init_args.min_lr_ratio: 0.0 is the floor"), err
    assert not os.path.exists(tmp_path / "checkpoints") and not os.path.exists(tmp_path / "config.yaml")


@pytest.mark.parametrize("cfg", ["sft", "dpo", "grm", "grpo", "srpo"])
def test_no_shipped_config_or_overlay_is_refused(cfg):
    """Every taosr config with every experiment overlay, and the settings the checks read changed on the
    command line (not the checked keys themselves), is accepted."""
    path = os.path.join(ROOT, "configs", f"{cfg}.yaml")
    other = {"grpo": ["--model.init_args.scheduler", "constant"], "srpo": [*MODE_VERIFIER, "--model.init_args.dynamic_sampling",
                                                                         "false"]}.get(cfg, [])
    for overlay in ("smoke", "label_only", "grm_policy", "smollm2_sft", "your_data"):
        args = ["--config", path, "--config", os.path.join(ROOT, "configs", "experiment", f"{overlay}.yaml"), *other]
        for command in ("fit", "test"):
            why = _check(command, *args)
            assert why is None or not any(k in why for k in ("min_lr_ratio", "keep_step_only", "grm_path", "eval_generation")), \
                (cfg, overlay, command, why)


def test_sampler_correction_with_an_on_policy_engine(tmp_path):
    """rollout_is* weight the mismatch of an engine that samples apart from the trainer (vLLM); the HF
    engine samples from the trainer's model and reports no sampler log-probs: set there, refused."""
    for flag, value in (("rollout_is", "token_truncate"), ("rollout_is", "null"), ("rollout_is_max", "2.0"),
                        ("rollout_is_min", "0.5")):
        bad = _check("fit", "--config", SRPO, f"--model.init_args.{flag}", value)
        assert bad is not None and bad.startswith(
            f"model.init_args.{flag}: corrects the mismatch of an engine that samples apart from the trainer (vllm), "
            "and the rollout engine is 'hf'"), (flag, bad)
    # at its default, or with the vllm engine (the check needs no vLLM installed): accepted
    assert _check("fit", "--config", GRPO, "--model.init_args.rollout_is", "sequence_mask") is None
    vllm = tmp_path / "vllm.yaml"
    vllm.write_text(f"base: [{GRPO}]\ntrainer:\n  callbacks:\n    - class_path: taosr.callbacks.rollout.RolloutCallback\n"
                    "      init_args: {engine: vllm}\n")
    assert _check("fit", "--config", str(vllm), "--model.init_args.rollout_is", "token_truncate") is None
