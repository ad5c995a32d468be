"""Thirteenth stop, GRM/DPO data: the policy samples a GRM view leaves unused are counted in its
line (``steps: all`` used 40 of the quick start's 2400 without a word), and a samples row is
matched to its example by id (two examples sharing a query and title no longer take each other's
samples; a row without an id that names several examples is refused)."""
import dataclasses
import json
import re

import pytest

from taosr.data.datamodule import RelevanceDataModule
from taosr.data.grm import GRMSamples, build_grm_rows
from taosr.data.pairs import build_pairs
from taosr.data.synth import SynthConfig
from taosr.errors import ConfigError
from taosr.labels import STEP_KEYS
from taosr.reasoning.format import conclusion, render_reasoning


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("stop13")
    dm = RelevanceDataModule(view="grm", synth=SynthConfig(n_train=40, n_val=6, n_test=6, seed=9), data_dir=str(d / "data"))
    return {s: list(dm.splits[s]) for s in ("train", "val", "test")}


def _annotate(ex, keys):
    return dataclasses.replace(ex, annotations={k: conclusion(ex.steps[k]) for k in keys})


def _row(ex, texts, split="train"):
    row = {"index": 0, "pass_rate": 0.5, "example": ex.to_dict(),
           "samples": [{"text": t, "correct": "unrelated-on-purpose" not in t} for t in texts]}
    return row if split is None else {**row, "split": split}


def _wrong_category(ex):
    steps = dict(ex.steps)
    steps["category"] = steps["category"].rsplit("=>", 1)[0] + "=> unrelated-on-purpose"
    return render_reasoning(steps, ex.label)


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _dm(tmp_path, train, val=(), **kw) -> RelevanceDataModule:
    files = {}
    for split, exs in (("train", train), ("val", val)):
        if exs:
            files[split] = _write(tmp_path / f"{split}.jsonl", [ex.to_dict() for ex in exs])
    return RelevanceDataModule(view="grm", train=files["train"], val=files.get("val"), test=None, **kw)


# ---------------------------------------------------------------- 1. unused policy samples are counted
def _partly_covered(tmp_path, train) -> tuple[str, list]:
    """2 prompts annotated on all five steps, 4 on category and query only; each with its gold
    reasoning twice and once with a wrong category conclusion (18 sampled completions). Returns the
    samples file and the training split with those annotations (the run's data decides them)."""
    rows, train = [], list(train)
    for n, ex in enumerate(train[:6]):
        ex = train[n] = _annotate(ex, STEP_KEYS if n < 2 else ("category", "query"))
        gold = render_reasoning(ex.steps, ex.label)
        rows.append(_row(ex, [gold, gold, _wrong_category(ex)]))
    return _write(tmp_path / "samples.jsonl", rows), train


def test_steps_all_says_how_many_samples_it_leaves_unused(tmp_path, synth, capsys):
    path, train = _partly_covered(tmp_path, synth["train"])
    dm = _dm(tmp_path, train, samples_path=path)
    rows = build_grm_rows(dm)
    assert len(rows) == 3 * len(synth["train"]) + 6  # every sampled copy of the 2 fully covered prompts
    out = capsys.readouterr().out
    assert ("taosr: GRM view: policy samples (steps: all): 6 of 18 sampled completions (2 of 6 training prompts) "
            "used; 12 unused: 12 not all five steps covered by the verifier (`--data.grm_samples.steps covered` "
            "would use 12 distinct samples, each on its covered steps); 6 training rows (30 verified step "
            f"verdicts) x 1 beside {3 * len(synth['train'])} gold rows") in out


def test_steps_covered_counts_repeats_and_samples_with_no_covered_step(tmp_path, synth, capsys):
    train, rows = list(synth["train"]), []
    for n, ex in enumerate(train[:4]):
        ex = train[n] = _annotate(ex, ("category",) if n < 3 else ())  # the 4th prompt: nothing the verifier covers
        gold = render_reasoning(ex.steps, ex.label)
        rows.append(_row(ex, [gold, gold, _wrong_category(ex)]))
    dm = _dm(tmp_path, train, samples_path=_write(tmp_path / "s.jsonl", rows), grm_samples=GRMSamples(steps="covered"))
    build_grm_rows(dm)
    line = next(x for x in capsys.readouterr().out.splitlines() if "GRM view: policy samples" in x)
    assert ("policy samples (steps: covered): 6 of 12 sampled completions (3 of 4 training prompts) used; "
            "6 unused: 4 repeats, 2 no covered step; 6 training rows (6 verified step verdicts)") in line
    assert "would use" not in line


# ---------------------------------------------------------------- 2. samples matched by id
def _twins(synth):
    """The training split with two examples sharing a query and title (ids, label and price differ),
    and a validation example with a training example's query and title under its own id."""
    train = list(synth["train"][:10])
    a = train[0]
    b = dataclasses.replace(a, id="twin-b", label=5 - a.label, item=dataclasses.replace(a.item, price=123.0))
    v = dataclasses.replace(synth["val"][0], id="val-twin", query=train[1].query, item=train[1].item)
    return train + [b], [v], a, b, v


def test_a_sample_of_another_example_with_the_same_query_and_title_is_not_trained_on(tmp_path, synth, capsys):
    train, val, a, b, v = _twins(synth)
    gold = render_reasoning(v.steps, v.label)
    rows = [_row(_annotate(a, ("category",)), [_wrong_category(a)]),
            _row(_annotate(v, ("category",)), [gold, _wrong_category(v)], split=None)]  # a validation example's
    dm = _dm(tmp_path, train, val, samples_path=_write(tmp_path / "s.jsonl", rows),
             grm_samples=GRMSamples(steps="covered"))
    policy = build_grm_rows(dm)[3 * len(train):]
    assert [ex.id for ex, _, _ in policy] == [a.id]
    out = capsys.readouterr().out
    assert f"taosr: GRM view: kept 1/2 sampled prompts of {dm.samples_path} (1 whose example is not in data.train" in out
    pairs = build_pairs(dm)  # DPO reads the file alike
    assert [ex.id for ex, _, _ in pairs] == [a.id]


def test_a_row_without_an_id_naming_several_examples_is_refused(tmp_path, synth):
    train, val, a, b, v = _twins(synth)
    no_id = dataclasses.replace(_annotate(a, ("category",)), id=None)
    path = _write(tmp_path / "s.jsonl", [_row(_annotate(train[2], ("category",)), [_wrong_category(train[2])]),
                                         _row(no_id, [_wrong_category(a)])])
    dm = _dm(tmp_path, train, val, samples_path=path)
    for build in (build_grm_rows, build_pairs):
        with pytest.raises(ConfigError) as err:
            build(dm)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"data.samples_path: {path} (sampled prompt 2): a sampled example "
                                                  "without an id")
        assert re.search(r"matches 2 examples \(ids '[^']+', 'twin-b'\)", msg)


def test_a_row_without_an_id_still_matches_one_example(tmp_path, synth, capsys):
    """The documented fallback: a file without ids (from elsewhere) is matched by query and title."""
    train = list(synth["train"][:10])
    ex = dataclasses.replace(_annotate(train[3], ("category",)), id=None)
    dm = _dm(tmp_path, train, samples_path=_write(tmp_path / "s.jsonl", [_row(ex, [_wrong_category(ex)], split=None)]),
             grm_samples=GRMSamples(steps="covered"))
    assert len(build_grm_rows(dm)) == 3 * len(train) + 1
