"""Settings that would do nothing, or train something other than asked, are refused in one line
before any step (a read-only audit found each of them accepted silently)."""
import os

import pytest

from taosr.cli import main
from tests.conftest import ROOT, SMOKE_RL, small_overrides


def _fit_error(capsys, cfg, root, cache, *extra, overlays=()):
    args = ["fit", "--config", os.path.join(ROOT, cfg)]
    for o in overlays:
        args += ["--config", os.path.join(ROOT, o)]
    rc = main(args + small_overrides(root, cache) + list(extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err and err[-1].startswith("taosr: error: "), err
    return err[-1]


@pytest.mark.parametrize("cfg, extra, needle", [
    # --model DPOModule on the SFT config: its batches split into "chosen" and "rejected" halves of other prompts
    ("configs/sft.yaml", ["--model", "DPOModule"], "data.view: DPOModule trains on the 'dpo' view, got 'sft'"),
    # SFT on DPO's pairs: it learnt from the rejected completions too
    ("configs/sft.yaml", ["--data.view", "dpo"], "data.view: SFTModule trains on the 'sft' view, got 'dpo'"),
    ("configs/grm.yaml", ["--data.view", "sft"], "data.view: GRMModule trains on the 'grm' view, got 'sft'"),
])
def test_a_method_on_another_methods_view_is_refused(tmp_path, cache_dir, capsys, cfg, extra, needle):
    assert needle in _fit_error(capsys, cfg, str(tmp_path), cache_dir, *extra)


@pytest.mark.parametrize("cfg, extra, needle", [
    # DPO trains on the pairs of its samples file, the GRM on its own rows: the hooks filtered nothing
    ("configs/dpo.yaml", ["--data.diverse_sampling", "{share: 0.1}"],
     "data.diverse_sampling: the 'dpo' view does not read it"),
    ("configs/grm.yaml", ["--data.rejection_sampling", "{low: 0.5}"],
     "data.rejection_sampling: the 'grm' view does not read it"),
    # a curriculum in DPO crashed with an AttributeError (its rows are pairs, not examples)
    ("configs/dpo.yaml", ["--data.curriculum", '{"stages": [{"max_difficulty": 0.5, "until_step": 1}, {}]}'],
     "data.curriculum: the 'dpo' view does not read it"),
    # SFT lists no CurriculumCallback: the first stage's filter held for the whole run
    ("configs/sft.yaml", ["--data.curriculum", '{"stages": [{"max_difficulty": 0.5, "until_step": 1}, {}]}'],
     "data.curriculum: no taosr.callbacks.curriculum.CurriculumCallback in trainer.callbacks"),
    # another view's options, changed from their default, did nothing
    ("configs/sft.yaml", ["--data.grm_corrupt_prob", "0.5"],
     "data.grm_corrupt_prob: an option of the 'grm' view, and this run trains on the 'sft' view"),
    ("configs/grm.yaml", ["--data.pairs_per_prompt", "2"],
     "data.pairs_per_prompt: an option of the 'dpo' view, and this run trains on the 'grm' view"),
])
def test_a_data_hook_the_view_does_not_read_is_refused(tmp_path, cache_dir, capsys, sft_run, samples, cfg, extra, needle):
    start = ["--model.init_args.model.name_or_path", os.path.join(sft_run, "export"), "--data.samples_path", samples]
    assert needle in _fit_error(capsys, cfg, str(tmp_path), cache_dir, *(start if cfg == "configs/dpo.yaml" else ()),
                                *extra)


@pytest.mark.parametrize("extra, needle", [
    # passed Lightning's check at start and failed at the first real update (hours in, on a real run)
    (["--trainer.gradient_clip_algorithm", "value"],
     "trainer.gradient_clip_algorithm: GRPOModule clips by norm in its own update (model.init_args.max_grad_norm)"),
    # Lightning's own refusals now name the taosr option that does the job
    (["--trainer.gradient_clip_val", "1.0"], "(GRPO/SRPO clip by norm in their update: model.init_args.max_grad_norm)"),
    (["--trainer.accumulate_grad_batches", "2"], "model.init_args.micro_batch_size bounds the completions"),
])
def test_rl_trainer_settings_of_automatic_optimization_are_refused_at_start(tmp_path, cache_dir, capsys, sft_run,
                                                                            samples, extra, needle):
    start = ["--model.init_args.model.name_or_path", os.path.join(sft_run, "export"), "--data.samples_path", samples,
             "--config", SMOKE_RL]
    assert needle in _fit_error(capsys, "configs/grpo.yaml", str(tmp_path), cache_dir, *start, *extra)


def test_a_model_trained_without_its_chat_template_is_prompted_alike_later(tmp_path, cache_dir, capsys, sft_run):
    """data.use_chat_template: false on a tokenizer with a template was not carried past training: a
    later stage, test or sample prompted the export with the template it never saw."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from taosr.models.factory import EXPORT_META

    model = str(tmp_path / "export")
    shutil.copytree(os.path.join(sft_run, "export"), model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    tok.save_pretrained(model)
    meta_path = os.path.join(model, EXPORT_META)
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    json.dump({**meta, "use_chat_template": False}, open(meta_path, "w"))
    args = ["test", "--config", os.path.join(ROOT, "configs", "sft.yaml"), *small_overrides(str(tmp_path / "t"), cache_dir),
            "--model.init_args.model.name_or_path", model, "--data.limit_test", "2"]
    assert main(args) == 0
    assert "was trained with data.use_chat_template: false: prompting it alike" in capsys.readouterr().err
