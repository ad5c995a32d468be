"""The reward side's data: GRM holdout queries give no gold training row, samples files are read
for training examples only (GRM and DPO), and the GRM input is fitted to data.max_length the same
way in training and scoring."""
import dataclasses
import json
import os

import pytest
import torch

from taosr.data.datamodule import RelevanceDataModule
from taosr.data.grm import GRMSamples, build_grm_rows, collate_grm, policy_rows_split
from taosr.data.pairs import build_pairs
from taosr.data.synth import SynthConfig
from taosr.errors import ConfigError
from taosr.labels import STEP_KEYS
from taosr.models.factory import ModelSpec, load_model_and_tokenizer
from taosr.reasoning.format import render_reasoning
from taosr.reasoning.grm_layout import _steps_ids, candidates_memo, encode_candidate, verdict_slot


@pytest.fixture(scope="module")
def dm_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("grm_fixes")
    dm = RelevanceDataModule(synth=SynthConfig(n_train=40, n_val=6, n_test=6, seed=9), data_dir=str(d / "data"), batch_size=4)
    dm.setup("fit")
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path="micro", cache_dir=str(d / "models")), dm.corpus)
    dm.attach_tokenizer(tok)
    return dm, model.eval()


@pytest.fixture
def dm(dm_model):
    dm = dm_model[0]
    saved = dm.samples_path, dm.grm_samples
    yield dm
    dm.samples_path, dm.grm_samples = saved


def _write_samples(path, groups) -> str:
    """A `taosr sample` file: per example its gold reasoning (correct) and a copy with a wrong category
    conclusion (incorrect); annotations cover category and query. ``groups``: (examples, split field
    or None for a row without one)."""
    rows = []
    for examples, split in groups:
        for ex in examples:
            ex = dataclasses.replace(ex, annotations={"category": ex.steps["category"].rsplit("=>", 1)[-1].strip(),
                                                      "query": ex.steps["query"]})
            bad = dict(ex.steps)
            bad["category"] = bad["category"].rsplit("=>", 1)[0] + "=> unrelated-on-purpose"
            row = {"index": 0, "pass_rate": 0.5, "example": ex.to_dict(),
                   "samples": [{"text": render_reasoning(ex.steps, ex.label), "correct": True},
                               {"text": render_reasoning(bad, ex.label), "correct": False}]}
            rows.append(row if split is None else {**row, "split": split})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _key(ex):
    return ex.query, ex.item.title


# ---------------------------------------------------------------- 1. holdout: no gold row of a held-out query
def test_holdout_queries_give_no_gold_training_rows(tmp_path, dm, capsys):
    dm.samples_path = _write_samples(tmp_path / "s.jsonl", [(dm.splits["train"], "train")])
    dm.grm_samples = GRMSamples(steps="covered", holdout=0.5)
    rows = build_grm_rows(dm, corrupt_prob=0.5)
    train_policy, val = policy_rows_split(dm)
    held = {ex.query for ex, _, _ in val}
    assert held and train_policy
    assert not [ex.id for ex, _, _ in rows if ex.query in held]  # was: their clean and corrupted gold rows
    kept = [ex for ex in dm.splits["train"] if ex.query not in held]
    assert len(rows) == 3 * len(kept) + len(train_policy)  # gold + 2 corrupted copies of the others
    n_out = len(dm.splits["train"]) - len(kept)
    assert f"their {n_out} training examples held out of the gold rows too" in capsys.readouterr().out
    # without a holdout every training example gives its gold rows, as before
    dm.grm_samples = GRMSamples(steps="covered")
    assert len(build_grm_rows(dm, corrupt_prob=0.5)) == 3 * len(dm.splits["train"]) + 2 * len(dm.splits["train"])


# ---------------------------------------------------------------- 2. samples of other splits are not trained on
def _mixed(tmp_path, dm) -> str:
    """4 training rows, 1 training row without a split field, 3 test rows, 2 validation examples
    labelled train (samples of other data)."""
    train = dm.splits["train"]
    return _write_samples(tmp_path / "mixed.jsonl", [(train[:4], "train"), (train[4:5], None),
                                                      (dm.splits["test"][:3], "test"), (dm.splits["val"][:2], "train")])


def test_grm_view_reads_only_the_training_examples_samples(tmp_path, dm, capsys):
    dm.samples_path = _mixed(tmp_path, dm)
    dm.grm_samples = GRMSamples(steps="covered")
    rows = build_grm_rows(dm)
    train = {_key(ex) for ex in dm.splits["train"]}
    assert all(_key(ex) in train for ex, _, _ in rows)
    assert len(rows) == 3 * len(dm.splits["train"]) + 2 * 5  # two distinct samples of each of the 5 kept rows
    out = capsys.readouterr().out
    assert (f"taosr: GRM view: kept 5/10 sampled prompts of {dm.samples_path} (3 of split 'test'; 2 whose example "
            "is not in data.train were left out") in out


def test_dpo_pairs_come_only_from_training_examples(tmp_path, dm, capsys):
    dm.samples_path = _mixed(tmp_path, dm)
    pairs = build_pairs(dm)
    assert sorted(ex.id for ex, _, _ in pairs) == sorted(ex.id for ex in dm.splits["train"][:5])
    out = capsys.readouterr().out
    assert "taosr: DPO view: kept 5/10 sampled prompts" in out
    # how many training examples the pairs cover (an audit: DPO said nothing of the 86 of 134 without samples)
    assert f"taosr: DPO view: {len(pairs)} preference pairs from 5 of the {len(dm.splits['train'])} training examples" in out


@pytest.mark.parametrize("view", ["grm", "dpo"])
def test_a_samples_file_of_no_training_example_is_refused(tmp_path, dm, view):
    dm.samples_path = path = _write_samples(tmp_path / "test.jsonl", [(dm.splits["test"], "test")])
    dm.grm_samples = GRMSamples()
    with pytest.raises(ConfigError) as err:
        build_grm_rows(dm) if view == "grm" else build_pairs(dm)
    msg = str(err.value)
    assert msg.startswith(f"data.samples_path: {path} has no sample of a training example (6 of split 'test')")
    assert "\n" not in msg and "taosr sample --split train" in msg


# ---------------------------------------------------------------- 3. the GRM input fits data.max_length
def _long(ex, n=120):
    return dataclasses.replace(ex, item=dataclasses.replace(ex.item, description=" ".join(["durable stainless design"] * n)))


def _reference(model, ids, positions, tok):
    """P(right) at each slot from the model's own full forward on ``ids`` (what training reads)."""
    _, right, wrong = verdict_slot(tok)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return torch.softmax(logits[positions][:, [right, wrong]], -1)[:, 0]


def test_a_long_description_is_cut_so_every_verdict_is_trained(dm):
    tok = dm.tokenizer
    ex = dm.splits["train"][0]
    long_ex = _long(ex)
    assert len(encode_candidate(tok, long_ex, long_ex.steps)[0]) > 3 * dm.max_length  # whole: far past the budget
    verdicts = {k: True for k in STEP_KEYS}
    batch = collate_grm(dm, [(long_ex, dict(long_ex.steps), verdicts), (ex, dict(ex.steps), verdicts)])
    assert batch["loss_mask"].sum(1).tolist() == [5, 5]  # was [0, 5]: every slot of the long row lay past the cut
    assert batch["input_ids"].shape[1] <= dm.max_length
    text = tok.decode(batch["input_ids"][0].tolist(), skip_special_tokens=True)
    assert "Description: durable stainless design" in text and "..." in text  # cut, not dropped
    for k in STEP_KEYS:
        assert long_ex.steps[k].split(" | ")[0] in text  # the steps are kept whole
    # the default rows are untouched
    ids = encode_candidate(tok, ex, ex.steps)[0]
    assert batch["input_ids"][1][: len(ids)].tolist() == ids and batch["loss_mask"][1].sum() == 5


def test_scoring_fits_the_input_as_training_does(dm_model):
    dm, model = dm_model
    from taosr.rl.grm import GRMScorer

    tok = dm.tokenizer
    ex = dm.splits["train"][1]
    long_ex = _long(ex)
    batch = collate_grm(dm, [(long_ex, dict(long_ex.steps), {k: True for k in STEP_KEYS})])
    train_ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    positions = (batch["loss_mask"][0].nonzero().flatten() - 1).tolist()
    scorer = GRMScorer(model, tok, batch_size=4, max_length=dm.max_length)
    ids, pos = scorer._encode(long_ex, dict(long_ex.steps))
    assert ids == train_ids[: len(ids)] and pos == positions  # the scorer reads the training tokens
    got = scorer.score_steps([long_ex, ex], [dict(long_ex.steps), dict(ex.steps)])
    want = _reference(model, ids, pos, tok)
    assert torch.allclose(got[0], want, atol=1e-5), (got[0], want)
    assert torch.isfinite(got).all() and scorer.cut == 0
    # without max_length (an export that records none): data.max_length's default, within the model's positions
    assert GRMScorer(model, tok).max_length == dm.max_length == 384 < model.config.max_position_embeddings


def test_slots_past_the_budget_are_not_scored_and_not_trained(dm_model, capsys):
    """Steps so long that the shortest prompt leaves room for three slots only: training trains on
    those three (counted), scoring scores those three on the same tokens and gives the rest NaN."""
    from taosr.rl.grm import GRMScorer
    from taosr.reasoning.grm_layout import fit_candidate

    dm, model = dm_model
    tok = dm.tokenizer
    long_ex = _long(dm.splits["train"][2])
    _, pos, _ = fit_candidate(tok, long_ex, long_ex.steps, 10)  # the shortest prompt
    budget = pos[2] + 2  # the third slot's decision token is the last inside it
    d = RelevanceDataModule(synth=dm.synth, data_dir=dm.data_dir, max_length=budget)
    d.setup("fit")
    d.attach_tokenizer(tok)
    batch = collate_grm(d, [(long_ex, dict(long_ex.steps), {k: True for k in STEP_KEYS})])
    assert batch["loss_mask"].sum().item() == 3 and len(d.targets_cut["train"]) == 1
    capsys.readouterr()
    scorer = GRMScorer(model, tok, max_length=budget)
    got = scorer.score_steps([long_ex, long_ex], [dict(long_ex.steps), dict(long_ex.steps)])
    assert torch.isnan(got[:, 3:]).all() and torch.isfinite(got[:, :3]).all()
    want = _reference(model, batch["input_ids"][0].tolist(), pos[:3], tok)
    assert torch.allclose(got[0, :3], want, atol=1e-5)
    assert scorer.cut == 2
    assert capsys.readouterr().out.count(f"verdict slots lie beyond max_length={budget}") == 1


def test_an_export_records_the_budget_the_scorer_reads(tmp_path, dm_model):
    from taosr.reasoning.grm_layout import check_layout, recorded_max_length, write_layout
    from taosr.rl.grm import GRMScorer

    dm, model = dm_model
    model.save_pretrained(str(tmp_path))
    dm.tokenizer.save_pretrained(str(tmp_path))
    write_layout(str(tmp_path), max_length=256)
    check_layout(str(tmp_path))
    assert recorded_max_length(str(tmp_path)) == 256
    assert GRMScorer.load(str(tmp_path)).max_length == 256  # SRPO's scorer fits to the GRM's training budget
    assert GRMScorer.load(str(tmp_path), max_length=300).max_length == 300
    write_layout(str(tmp_path))  # (an export written without it: the scorer takes data.max_length's default)
    assert recorded_max_length(str(tmp_path)) is None


def test_a_grm_fit_records_its_training_budget_for_the_scorer(tmp_path, cache_dir, sft_run, samples):
    """The export of a GRM fit records data.max_length, so SRPO's scorer fits inputs as training did."""
    from taosr.reasoning.grm_layout import recorded_max_length
    from tests.conftest import fit

    root = fit("configs/grm.yaml", str(tmp_path / "grm"), cache_dir, "--model.init_args.model.name_or_path",
               os.path.join(sft_run, "export"), "--data.samples_path", samples, "--data.max_length", "320")
    assert recorded_max_length(os.path.join(root, "export")) == 320


def test_kept_rows_carry_the_runs_example_not_the_files_copy(tmp_path, dm):
    """The samples file embeds its example with the annotations it was sampled with; the run's
    settings (a held-out annotation regime, a lower share) decide what is trained on: a gold chosen
    from the file's steps put steps the run must not see into DPO."""
    from taosr.data.pairs import training_samples
    from taosr.data.samples import load_samples

    dm.samples_path = _write_samples(tmp_path / "s.jsonl", [(dm.splits["train"][:3], "train")])
    rows = training_samples(dm, load_samples(dm.samples_path), "DPO view")
    assert [r["example"] for r in rows] == dm.splits["train"][:3]
    assert all(r["example"] is ex for r, ex in zip(rows, dm.splits["train"][:3]))


def test_a_grm_validated_on_a_file_without_reasoning_skips_its_verdict_metrics(tmp_path, cache_dir, sft_run, samples, capsys):
    """A user's labelled val file has no gold steps: the GRM's validation crashed ("The size of tensor a
    (0) must match the size of tensor b (5)"), in a fit and in taosr validate; now its verdict metrics
    are skipped with a note."""
    from taosr.schema import write_jsonl
    from tests.conftest import fit

    dm = RelevanceDataModule(synth=SynthConfig(n_train=48, n_val=6, n_test=6), data_dir=os.path.join(cache_dir, "data"))
    dm.setup("fit")
    val = str(tmp_path / "val-labels-only.jsonl")
    write_jsonl(val, [dataclasses.replace(ex, steps=None) for ex in dm.splits["val"]])
    fit("configs/grm.yaml", str(tmp_path / "grm"), cache_dir, "--model.init_args.model.name_or_path",
        os.path.join(sft_run, "export"), "--data.samples_path", samples, "--data.val", val)
    assert "no val example has the five gold steps" in capsys.readouterr().err


class _CountingTokenizer:
    """A tokenizer that counts the texts it tokenises (everything else is the real one's)."""

    def __init__(self, tok):
        self._tok, self.texts, self.calls = tok, [], []

    def __call__(self, text, **kw):
        self.calls.append(text)
        self.texts += text if isinstance(text, list) else [text]
        return self._tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_the_scoring_memo_tokenises_each_prompt_and_step_line_once_and_changes_no_id(dm):
    """A rollout group: G candidates of one example that differ in one step. With the memo each
    example's prompt (and its fitted prompt, for a long description) and each distinct step line
    are tokenised once per call, and every candidate's ids and slot positions are the ones it gets
    alone."""
    tok = dm.tokenizer
    examples = [dm.splits["train"][3], _long(dm.splits["train"][4])]
    cands = []
    for ex in examples:
        for g in range(4):
            steps = dict(ex.steps)
            steps["attribute"] = f"{steps['attribute']} {('good', 'bad')[g % 2]}"
            cands.append((ex, steps))
    # (both variants tokenise to equal lengths here, so the long prompt is fitted to one budget)
    assert len({len(_steps_ids(tok, st)[0]) for ex, st in cands if ex is examples[1]}) == 1
    alone = [encode_candidate(tok, ex, st, dm.max_length) for ex, st in cands]
    verdict_slot(tok)  # (cached per tokenizer)

    def prompt_texts(counter):
        return [t for t in counter.texts if t.startswith("Judge each reasoning step")]

    once = _CountingTokenizer(tok)  # one candidate per example: the prompt work (fitting included) of one
    verdict_slot(once)
    for ex, st in cands[::4]:
        encode_candidate(once, ex, st, dm.max_length)
    counting = _CountingTokenizer(tok)
    verdict_slot(counting)
    counting.texts.clear()
    memo: dict = {}
    shared = [encode_candidate(counting, ex, st, dm.max_length, memo) for ex, st in cands]
    assert shared == alone
    assert len(prompt_texts(once)) > len(examples)  # the long one's prompt is fitted by trial cuts
    assert prompt_texts(counting) == prompt_texts(once)  # per example, not per candidate
    step_lines = [t for t in counting.texts if not t.startswith("Judge each reasoning step")]
    assert len(step_lines) == len(set(step_lines)) == len(examples) * (len(STEP_KEYS) - 1 + 2)  # 4 shared + 2 variants
    # the scorer's memo: every distinct line and prompt in one batched call each, the same ids
    batched = _CountingTokenizer(tok)
    verdict_slot(batched)
    batched.calls.clear()
    memo = candidates_memo(batched, [ex for ex, _ in cands], [st for _, st in cands])
    assert sorted(map(len, batched.calls)) == [len(examples), len(step_lines)]
    batched.texts.clear()
    assert [encode_candidate(batched, ex, st, dm.max_length, memo) for ex, st in cands] == alone
    assert batched.texts and all(t.startswith("Judge each") for t in batched.texts)  # only the long one's fitting


def test_the_scoring_memo_keeps_each_fit_apart(dm):
    """Fitted prompts are kept per example and budget: candidates of one long example whose steps
    differ in length are fitted to their own budgets, and two items that render the same prompt
    text from different fields (an attribute value holding "; size=...") are each cut by their own
    fields."""
    tok = dm.tokenizer
    base = _long(dm.splits["train"][5])
    one = dataclasses.replace(base, item=dataclasses.replace(base.item, attributes={"color": "red; size=" + "x" * 300}))
    two = dataclasses.replace(base, item=dataclasses.replace(base.item, attributes={"color": "red", "size": "x" * 300}))
    from taosr.reasoning.grm_layout import grm_prompt_text

    assert grm_prompt_text(one) == grm_prompt_text(two)
    cands = []
    for ex in (one, two):
        for extra in ("", " and more words" * 3, " and more words" * 6):
            steps = dict(ex.steps)
            steps["attribute"] = steps["attribute"] + extra
            cands.append((ex, steps))
    assert len({len(_steps_ids(tok, st)[0]) for _, st in cands}) == 3  # three budgets
    budget = len(_steps_ids(tok, base.steps)[0]) + 120  # room for a prompt cut into its attributes
    alone = [encode_candidate(tok, ex, st, budget) for ex, st in cands]
    prompts = [ids[:len(ids) - len(_steps_ids(tok, st)[0])] for (ids, _), (_, st) in zip(alone, cands)]
    assert len({tuple(x) for x in prompts[:3]}) > 1 and len({tuple(x) for x in prompts[3:]}) > 1  # per budget
    assert any(prompts[i] != prompts[i + 3] for i in range(3))  # per item, at one budget
    memo = candidates_memo(tok, [ex for ex, _ in cands], [st for _, st in cands])
    assert [encode_candidate(tok, ex, st, budget, memo) for ex, st in cands] == alone
