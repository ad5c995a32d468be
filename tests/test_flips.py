"""Where two arms of a comparison disagree (taosr/eval/flips.py), on hand-made prediction records."""
import json
import math
import os

import pytest

from taosr.errors import ConfigError
from taosr.eval.flips import (flip_counts, flipped_steps, is_right, predictions_path, read_predictions, scored_seeds,
                              stable_flips)


def rec(i, gold, pred, qt="brand", verdicts=None):
    return {"index": i, "id": f"h-{i}", "query": f"q{i}", "title": f"t{i}", "query_type": qt, "gold": gold,
            "pred": pred, "reasoning": "...", "step_verdicts": verdicts or {}}


def by_id(*records):
    return {r["id"]: r for r in records}


def test_right_needs_the_gold_tier_and_a_format_error_is_wrong():
    assert is_right(rec(0, 4, 4)) and not is_right(rec(0, 4, 3)) and not is_right(rec(0, 4, None))


def test_flip_counts_by_outcome_slice_and_long_tail():
    a = by_id(rec(0, 4, 4), rec(1, 3, 3, "negation"), rec(2, 2, 4, "negation"), rec(3, 1, 2, "qa"), rec(4, 1, 1, "qa"))
    b = by_id(rec(0, 4, 4), rec(1, 3, 2, "negation"), rec(2, 2, 2, "negation"), rec(3, 1, None, "qa"), rec(4, 1, 2, "qa"))
    c = flip_counts(a, b)
    assert c["overall"] == {"both right": 1, "a only": 2, "b only": 1, "both wrong": 1}
    assert c["long_tail"] == {"a only": 2, "b only": 1, "both wrong": 1}  # brand is not long tail
    assert c["negation"] == {"a only": 1, "b only": 1} and c["brand"] == {"both right": 1}


def test_flipped_steps_sets_each_arms_verdicts_where_one_alone_was_right():
    right = {"query": 1, "item": 1, "category": 1, "attribute": 1, "judgment": 1}
    a = by_id(rec(0, 2, 4, verdicts={**right, "item": 0, "attribute": 0, "judgment": 0}),
              rec(1, 2, 3, verdicts={**right, "item": 0.0, "attribute": None, "judgment": 0}),
              rec(2, 4, 4, verdicts=right))
    b = by_id(rec(0, 2, 2, verdicts=right), rec(1, 2, 2, verdicts={**right, "query": 0.5}), rec(2, 4, 4, verdicts=right))
    f = flipped_steps(a, b, "b only")
    assert f["n"] == 2
    assert f["a"]["item"] == 0 and f["a"]["attribute"] == 0 and f["a"]["category"] == 1  # one attribute verdict: None
    assert f["b"]["query"] == pytest.approx(0.75) and f["b"]["item"] == 1
    empty = flipped_steps(a, b, "a only")
    assert empty["n"] == 0 and math.isnan(empty["a"]["query"])
    with pytest.raises(ValueError, match="which must be one of"):
        flipped_steps(a, b, "b wins")


def test_stable_flips_rank_the_examples_one_arm_wins_on_most_seeds():
    a = {0: by_id(rec(0, 2, 4), rec(1, 4, 4), rec(2, 3, 3)), 1: by_id(rec(0, 2, 4), rec(1, 4, 2), rec(2, 3, 3)),
         7: by_id(rec(0, 2, 2), rec(1, 4, 4), rec(2, 3, 3))}  # seed 7: a only
    b = {0: by_id(rec(0, 2, 2), rec(1, 4, 4), rec(2, 3, 1)), 1: by_id(rec(0, 2, 2), rec(1, 4, 4), rec(2, 3, 1))}
    rows = stable_flips(a, b)
    assert [(r["id"], r["a_right"], r["b_right"], r["seeds"]) for r in rows] == \
        [("h-0", 0, 2, 2), ("h-1", 1, 2, 2), ("h-2", 2, 0, 2)]
    assert stable_flips(a, {3: b[0]}) == []


def test_two_sets_of_other_examples_and_bad_files_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not of the same examples .*2 and 1 records, 1 shared"):
        flip_counts(by_id(rec(0, 4, 4), rec(1, 4, 4)), by_id(rec(0, 4, 4)))
    with pytest.raises(ConfigError, match="prediction file not found"):
        read_predictions(str(tmp_path / "none.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rec(0, 4, 4)) + "\n\n" + '{"index": 1}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:3: not a prediction record \(KeyError"):
        read_predictions(str(bad))
    bad.write_text(json.dumps(rec(0, 4, 4)) + "\n" + json.dumps(rec(0, 4, 3)) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: example 'h-0' appears twice"):
        read_predictions(str(bad))


def test_a_compare_folders_runs_are_found_by_arm_and_seed(tmp_path):
    out = str(tmp_path)
    for arm, seed in (("grpo", 0), ("grpo", 2), ("start", None)):
        path = predictions_path(out, arm, seed)
        os.makedirs(os.path.dirname(path))
        open(path, "w").write(json.dumps(rec(0, 4, 4)) + "\n")
    os.makedirs(os.path.join(out, "grpo", "seed1"))  # started, not scored
    assert scored_seeds(out, "grpo") == [0, 2] and scored_seeds(out, "srpo") == []
    assert predictions_path(out, "start", None) == os.path.join(out, "start", "heldout", "eval", "test-predictions.jsonl")
    assert list(read_predictions(predictions_path(out, "grpo", 2))) == ["h-0"]
