"""The GRM trained and validated on verifier-labelled policy samples (data.grm_samples)."""
import dataclasses
import glob
import json
import math
import os
import random

import pytest
import torch

from taosr.data.grm import (GRMSamples, balance_verdicts, build_grm_rows, collate_grm, policy_rows,
                            policy_split)
from taosr.errors import ConfigError
from taosr.labels import STEP_KEYS
from taosr.methods.grm import policy_truth, verdict_metrics
from taosr.reasoning.format import render_reasoning
from taosr.reasoning.grm_layout import verdict_slot
from tests.conftest import fit
from tests.test_datamodule import dm  # noqa: F401  (the module's DataModule fixture)


def _wrong_category(ex) -> dict:
    steps = dict(ex.steps)
    steps["category"] = steps["category"].rsplit("=>", 1)[0] + "=> unrelated-on-purpose"
    return steps


def _covered(ex):
    """``ex`` annotated on category and query only."""
    return dataclasses.replace(ex, annotations={"category": ex.steps["category"].rsplit("=>", 1)[-1].strip(),
                                                "query": ex.steps["query"]})


def _samples(path, examples) -> str:
    """Per example: its gold reasoning twice (one distinct sample), and once with a wrong category
    conclusion. Annotations cover category and query only (a run reads its own data's: give the
    DataModule the same, :func:`_covered`)."""
    rows = []
    for ex in examples:
        ex = _covered(ex)
        gold = render_reasoning(ex.steps, ex.label)
        bad = render_reasoning(_wrong_category(ex), ex.label)
        rows.append({"index": 0, "split": "train", "pass_rate": 1.0, "example": ex.to_dict(),
                     "samples": [{"text": gold, "correct": True}, {"text": gold, "correct": True},
                                 {"text": bad, "correct": True}]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_covered_steps_get_verdicts_and_duplicates_are_dropped(tmp_path, dm):
    exs = dm.splits["train"][:6]
    path = _samples(tmp_path / "s.jsonl", exs)
    rows = policy_rows(path, GRMSamples(steps="covered"))
    assert len(rows) == 2 * len(exs)  # the repeated gold sample counts once
    for n, (ex, steps, v) in enumerate(rows):
        assert v["category"] is (n % 2 == 0) and v["query"] is True
        assert v["item"] is None and v["attribute"] is None and v["judgment"] is None  # uncovered: no verdict
    # steps: all (the old rule) uses only samples whose five steps are all covered: none here
    assert policy_rows(path, GRMSamples()) == []


def test_balance_keeps_as_many_right_as_wrong_verdicts_per_step():
    ex = object()
    rows = [(ex, {}, {"query": True, "item": None, "category": i < 2, "attribute": None, "judgment": None})
            for i in range(10)]
    rows.append((ex, {}, {"query": None, "item": None, "category": None, "attribute": None, "judgment": True}))
    out = balance_verdicts(rows, random.Random(0))
    for k in STEP_KEYS:
        vs = [v[k] for _, _, v in out if v[k] is not None]
        assert vs.count(True) == vs.count(False), k
    cat = [v["category"] for _, _, v in out]
    assert cat.count(False) == 2 and cat.count(True) == 2  # both wrong ones kept, 2 of the 8 right ones
    assert len(out) == 4  # rows left with no verdict at all (only "query", all right) are dropped
    assert out == balance_verdicts(rows, random.Random(0))  # seeded


def test_holdout_splits_by_query_and_bad_settings_are_refused(tmp_path, dm):
    rows = policy_rows(_samples(tmp_path / "s.jsonl", dm.splits["train"]), GRMSamples(steps="covered"))
    train, val = policy_split(rows, GRMSamples(steps="covered", holdout=0.5), seed=0)
    assert train and val and len(train) + len(val) == len(rows)
    assert not {r[0].query for r in train} & {r[0].query for r in val}
    assert policy_split(rows, GRMSamples(steps="covered"), seed=0) == (rows, [])
    for kw, msg in ((dict(steps="some"), "data.grm_samples.steps: 'some' is unknown"),
                    (dict(copies=0), "data.grm_samples.copies"), (dict(holdout=1.0), "data.grm_samples.holdout")):
        with pytest.raises(ConfigError, match=msg):
            GRMSamples(**kw)


def test_view_repeats_policy_rows_and_trains_only_on_their_verdicts(tmp_path, dm, monkeypatch):
    saved = dm.samples_path, dm.grm_samples
    train = dm.splits["train"]
    monkeypatch.setitem(dm.splits, "train", [_covered(ex) for ex in train[:6]] + train[6:])
    try:
        dm.samples_path = _samples(tmp_path / "s.jsonl", dm.splits["train"][:6])
        dm.grm_samples = GRMSamples(steps="covered", copies=3)
        rows = build_grm_rows(dm)
        gold = 3 * len(dm.splits["train"])
        assert len(rows) == gold + 3 * 12
        batch = collate_grm(dm, rows[gold:gold + 2])
        _, right, wrong = verdict_slot(dm.tokenizer)
        # two verdicts each, in step order (query, category): the gold sample right/right, the bad one right/wrong
        assert batch["loss_mask"].sum(1).tolist() == [2, 2]
        assert batch["targets"][0][batch["loss_mask"][0].bool()].tolist() == [right, right]
        assert batch["targets"][1][batch["loss_mask"][1].bool()].tolist() == [right, wrong]
    finally:
        dm.samples_path, dm.grm_samples = saved


def test_verdict_metrics_on_hand_made_scores():
    probs = torch.tensor([[0.9, 0.2, 0.6, float("nan"), 0.1],
                          [0.8, 0.7, 0.3, 0.4, 0.9]])
    truth = torch.tensor([[True, False, False, True, False],
                          [True, True, True, False, True]])
    valid = torch.ones_like(truth)
    valid[1, 4] = False
    m = verdict_metrics(probs, truth, valid, prefix="p")
    # judged: row 0 steps 0,1,2,4 (step 3 is missing: NaN), row 1 steps 0-3
    # hits: 0.9 T ok, 0.2 F ok, 0.6 F no, 0.1 F ok; 0.8 T ok, 0.7 T ok, 0.3 T no, 0.4 F ok -> 6 of 8
    assert m["p/verdict_accuracy"] == pytest.approx(6 / 8)
    assert m["p/wrong_step_recall"] == pytest.approx(3 / 4) and m["p/right_step_recall"] == pytest.approx(3 / 4)
    assert m["p/wrong_share"] == pytest.approx(4 / 8)
    assert m["p/verdict_accuracy/query"] == 1.0 and m["p/verdict_accuracy/category"] == 0.0
    assert m["p/verdict_accuracy/attribute"] == 1.0
    # AUROC: right steps {0.9, 0.8, 0.7, 0.3}, wrong {0.2, 0.6, 0.1, 0.4}: 14 of 16 pairs ordered
    assert m["p/auroc"] == pytest.approx(14 / 16)
    none = verdict_metrics(probs, truth, torch.zeros_like(truth), prefix="p")
    assert math.isnan(none["p/verdict_accuracy"]) and math.isnan(none["p/auroc"])


def test_policy_truth_reads_verifier_and_gold(dm):
    ex = dm.splits["train"][0]
    steps = _wrong_category(ex)
    del steps["judgment"]
    ver, cov, gold, known = policy_truth([(ex, steps, {"query": True, "item": None, "category": False,
                                                       "attribute": None, "judgment": None})])
    assert cov[0].tolist() == [True, False, True, False, False] and ver[0].tolist()[:3] == [True, False, False]
    assert known[0].tolist() == [True, True, True, True, False]  # the missing judgment has no gold verdict
    assert gold[0].tolist()[:4] == [True, True, False, True]


def test_grm_policy_overlay_validates_on_held_out_policy_samples(tmp_path, cache_dir, sft_run):
    """configs/experiment/grm_policy.yaml smoke-runs, and the GRM's validation scores the policy
    samples of the held-out queries against the verifier and the gold steps."""
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig

    d = RelevanceDataModule(synth=SynthConfig(n_train=48, n_val=6, n_test=6), data_dir=os.path.join(cache_dir, "data"))
    d.setup("fit")
    samples = _samples(tmp_path / "s.jsonl", d.splits["train"])
    root = str(tmp_path / "grm")
    fit("configs/grm.yaml", root, cache_dir, "--data.samples_path", samples,
        "--model.init_args.model.name_or_path", os.path.join(sft_run, "export"),
        "--data.synth.train_annotation_share", "1.0", overlays=("configs/experiment/grm_policy.yaml",))
    m = json.load(open(glob.glob(os.path.join(root, "eval", "val-step*-grm-metrics.json"))[0]))
    for k in ("grm/policy/verdict_accuracy", "grm/policy/auroc", "grm/policy_gold/wrong_step_recall",
              "grm/policy_uncovered/verdict_accuracy"):
        assert k in m, k
    # the run's data annotates all five steps: category wrong in one of 2 distinct samples, the rest right
    assert m["grm/policy/wrong_share"] == pytest.approx(0.1)


def test_policy_sample_settings_without_samples_are_refused(dm):
    saved = dm.samples_path, dm.grm_samples
    try:
        dm.samples_path, dm.grm_samples = None, GRMSamples(steps="covered")
        with pytest.raises(ConfigError, match="data.grm_samples is set but data.samples_path is not"):
            build_grm_rows(dm)
        dm.grm_samples = GRMSamples()
        assert len(build_grm_rows(dm)) == 3 * len(dm.splits["train"])  # the default without samples: gold rows only
    finally:
        dm.samples_path, dm.grm_samples = saved


@pytest.mark.parametrize("arch", ["granite", "gemma2", "cohere", "llama"])
def test_grm_head_logits_are_the_models_own(arch):
    """The GRM scores two head rows at the verdict slots; it must equal the model's full logits there,
    post-processing included (Granite divides by logits_scaling, Cohere multiplies by logit_scale,
    Gemma 2 soft-caps)."""
    import transformers as T

    from taosr.rl.grm import head_logits

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2)
    cfg = {"granite": lambda: T.GraniteConfig(logits_scaling=8.0, **common),
           "gemma2": lambda: T.Gemma2Config(head_dim=16, final_logit_softcapping=0.5, **common),
           "cohere": lambda: T.CohereConfig(logit_scale=3.0, **common),
           "llama": lambda: T.LlamaConfig(**common)}[arch]()
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(0, 64, (2, 7))
    rows = torch.tensor([5, 9])
    with torch.no_grad():
        want = model(input_ids=ids).logits[..., rows]
        h = model.get_decoder()(input_ids=ids).last_hidden_state
        head = model.get_output_embeddings()
        got = head_logits(model.config, h, head.weight[rows], None if head.bias is None else head.bias[rows])
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
