"""GRM training on evidence mistakes (data.grm_corrupt_evidence): a decision step keeps its
conclusion and gets one evidence part of another example's, verdict wrong; the default rows are
unchanged, and the GRM's validation scores evidence mistakes on their own (grm/evidence/...)."""
import glob
import json
import os
import random

import pytest

from taosr.data.grm import corrupt_steps, evidence_parts, evidence_pool, swap_evidence_part
from taosr.data.synth import DECISION_STEPS, SynthConfig, generate
from taosr.errors import ConfigError
from taosr.labels import STEP_KEYS
from taosr.reasoning.format import conclusion
from taosr.reasoning.verifier import step_matches
from tests.conftest import fit

STEP = "coffee maker vs coffee maker; kitchen appliances vs kitchen appliances => exact"
POOL = [["coffee maker vs coffee maker", "jeans vs robot vacuum"],
        ["kitchen appliances vs kitchen appliances", "bottoms vs floor cleaning"]]


def test_one_evidence_part_is_swapped_and_the_conclusion_kept():
    for seed in range(20):
        out = swap_evidence_part(STEP, POOL, random.Random(seed))
        assert conclusion(out) == "exact"
        before, after = evidence_parts(STEP), evidence_parts(out)
        changed = [i for i in range(2) if before[i] != after[i]]
        assert len(changed) == 1 and after[changed[0]] == POOL[changed[0]][1]  # the other part at that position
        # the conclusion-only verifier passes it; the evidence check (an evidence-first annotation) does not
        assert step_matches("category", out, STEP) and not step_matches("category", out, STEP, check_evidence=True)
    assert swap_evidence_part("exact", POOL, random.Random(0)) is None  # no evidence stated
    assert swap_evidence_part(STEP, [["coffee maker vs coffee maker"], ["kitchen appliances vs kitchen appliances"]],
                              random.Random(0)) is None  # nothing else known at that position


@pytest.fixture(scope="module")
def examples():
    return [ex for ex in generate(SynthConfig(n_train=60, n_val=0, n_test=0, seed=4))["train"] if ex.steps]


def test_without_evidence_corruption_the_rows_are_as_before(examples):
    """No extra random draw when the option is 0: the default GRM trains on the same rows."""
    pool = {k: sorted({conclusion(ex.steps[k]) for ex in examples}) for k in STEP_KEYS}
    a, b = random.Random(0), random.Random(0)
    assert [corrupt_steps(ex, pool, a, 0.5) for ex in examples] == \
        [corrupt_steps(ex, pool, b, 0.5, 0.0, evidence_pool(examples)) for ex in examples]


def test_evidence_corruption_marks_only_decision_steps_wrong(examples):
    pool = {k: sorted({conclusion(ex.steps[k]) for ex in examples}) for k in STEP_KEYS}
    ev = evidence_pool(examples)
    rng = random.Random(1)
    wrong = 0
    for ex in examples:
        steps, verdicts = corrupt_steps(ex, pool, rng, 0.0, 1.0, ev)
        for k in STEP_KEYS:
            assert conclusion(steps[k]) == conclusion(ex.steps[k])  # every conclusion kept
            if k not in DECISION_STEPS:
                assert verdicts[k] and steps[k] == ex.steps[k]
            elif not verdicts[k]:
                wrong += 1
                assert not step_matches(k, steps[k], ex.steps[k], check_evidence=True)
            else:
                assert steps[k] == ex.steps[k]
    assert wrong > 0.9 * 3 * len(examples)  # nearly every decision step has another part to swap in


def test_a_bad_share_and_another_views_use_are_refused(tmp_path, cache_dir):
    from taosr.cli import main
    from taosr.data.datamodule import RelevanceDataModule

    with pytest.raises(ConfigError, match=r"data.grm_corrupt_evidence must be in \[0, 1\], got 1.5"):
        RelevanceDataModule(view="grm", grm_corrupt_evidence=1.5)
    from tests.conftest import small_overrides

    rc = main(["fit", "--config", "configs/sft.yaml", *small_overrides(str(tmp_path), cache_dir),
               "--data.grm_corrupt_evidence", "0.3"])
    assert rc == 2


def test_grm_fit_trains_on_evidence_mistakes_and_reports_them(tmp_path, cache_dir, sft_run, samples):
    root = str(tmp_path / "grm")
    fit("configs/grm.yaml", root, cache_dir, "--model.init_args.model.name_or_path", os.path.join(sft_run, "export"),
        "--data.samples_path", samples,
        "--data.grm_corrupt_evidence", "0.5", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2")
    m = json.load(open(glob.glob(os.path.join(root, "eval", "val-step*-grm-metrics.json"))[0]))
    assert 0 < m["grm/evidence/wrong_share"] < 1 and "grm/evidence/auroc" in m
    assert m["grm/evidence/verdict_accuracy/query"] != m["grm/evidence/verdict_accuracy/query"]  # NaN: not scored
