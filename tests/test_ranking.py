"""Scores from P(tier) and ranking metrics on hand-made tensors and records (arithmetic in the comments)."""
import math

import pytest
import torch

from taosr.eval.metrics import compute_metrics
from taosr.eval.ranking import gain, grade_rmse, ndcg_at_k, ndcg_metrics, rank_order, tier_grade_means
from taosr.eval.scores import (cumulative_scores, expected_tier, label_prefix, scores_from_probs,
                               tier_distribution)


def test_distribution_renormalises_over_the_four_tiers():
    # log-probs of " 1".." 4" that leave mass on other tokens: 0.1, 0.1, 0.2, 0.4 (sum 0.8)
    logp = torch.tensor([[0.1, 0.1, 0.2, 0.4]]).log()
    p = tier_distribution(logp)
    assert p.dtype == torch.float64
    assert torch.allclose(p, torch.tensor([[0.125, 0.125, 0.25, 0.5]], dtype=torch.float64))
    assert torch.allclose(p.sum(-1), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        tier_distribution(torch.zeros(2, 3))


def test_confident_items_keep_distinct_scores():
    """Two items both near P(4) = 1 (as 16-25 queries a run had in the held-out files): in float32
    their expected tiers are equal and NDCG ranked them by file order; the float64 distribution
    keeps them apart, the item with less mass on tier 3 first."""
    logp = torch.tensor([[-16.0, -14.2, -12.0, -2.0e-6], [-16.0, -14.2, -12.01, -2.1e-6]])
    exp32 = expected_tier(torch.softmax(logp, -1))
    assert exp32[0] == exp32[1]  # the tie the float32 path had
    exp = expected_tier(tier_distribution(logp))
    assert exp[1] > exp[0]


def test_expected_tier_and_cumulative_scores():
    p = torch.tensor([[0.125, 0.125, 0.25, 0.5], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    # 1*.125 + 2*.125 + 3*.25 + 4*.5 = 3.125
    assert torch.allclose(expected_tier(p), torch.tensor([3.125, 1.0, 4.0]))
    # P(>=2) = .875, P(>=3) = .75, P(>=4) = .5
    assert torch.allclose(cumulative_scores(p)[0], torch.tensor([0.875, 0.75, 0.5]))
    assert torch.allclose(cumulative_scores(p)[1], torch.zeros(3))
    s = scores_from_probs(p)
    assert s[0]["pred"] == 4 and s[1]["pred"] == 1 and s[0]["p_ge"] == pytest.approx({2: 0.875, 3: 0.75, 4: 0.5})
    assert s[0]["score"] == pytest.approx(3.125) and sum(s[0]["p_tier"]) == pytest.approx(1.0)


def test_label_prefix_takes_the_label_line_up_to_its_colon():
    text = "Query understanding: a\nItem understanding: b\nLabel: 3"
    assert label_prefix(text) == "Query understanding: a\nItem understanding: b\nLabel:"
    assert label_prefix("Label: 2") == "Label:"
    assert label_prefix("label : 4 extra") == "label :"
    assert label_prefix("Query understanding: a\nno label here") is None
    assert label_prefix("") is None


def test_gain_and_rank_order():
    assert [gain(t) for t in (1, 2, 3, 4)] == [0.0, 1.0, 3.0, 7.0]
    # missing (None/NaN) last, ties in input order
    assert rank_order([2.0, None, 3.0, 2.0, float("nan"), 3.0]) == [2, 5, 0, 3, 1, 4]
    # with golds, records without a score go worst first (input order must not rank for them)
    assert rank_order([2.0, None, 3.0, 2.0, float("nan"), 3.0], [1, 4, 1, 1, 2, 1]) == [2, 5, 0, 3, 4, 1]
    # a numpy or torch NaN is missing too (it sorted first: -nan compares false both ways)
    import numpy as np
    import torch

    assert rank_order([np.float32("nan"), 1.0]) == rank_order([torch.tensor(float("nan")), 1.0]) == [1, 0]


def test_ndcg_hand_computed():
    # ranked golds 3, 4, 1: DCG = 3/log2(2) + 7/log2(3) + 0 = 3 + 4.4165 = 7.4165
    # ideal 4, 3, 1: 7 + 3/log2(3) = 8.8928; NDCG = 0.83398
    v = ndcg_at_k([4, 3, 1], [2.5, 3.0, 1.0])
    assert v == pytest.approx((3 + 7 / math.log2(3)) / (7 + 3 / math.log2(3)))
    assert ndcg_at_k([4, 3, 1], [3.0, 2.0, 1.0]) == pytest.approx(1.0)
    assert ndcg_at_k([1, 1], [1.0, 2.0]) is None  # no gain anywhere
    # a tie keeps input order: [1, 4] tied -> gold 1 first: 7/log2(3) / 7
    assert ndcg_at_k([1, 4], [2.0, 2.0]) == pytest.approx(1 / math.log2(3))
    # a missing score ranks last even below a low one
    assert ndcg_at_k([4, 1], [None, 1.0]) == pytest.approx(1 / math.log2(3))
    # cut at k: only the first k ranks count
    assert ndcg_at_k([1, 4], [2.0, 1.0], k=1) == 0.0


def test_ndcg_matches_sklearn_without_ties():
    sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(2, 15, (1,), generator=g))
        golds = torch.randint(1, 5, (n,), generator=g).tolist()
        if max(golds) == 1:
            continue
        scores = torch.rand(n, generator=g).tolist()  # distinct: no ties
        ref = sk.ndcg_score([[gain(t) for t in golds]], [scores], k=10)
        assert ndcg_at_k(golds, scores) == pytest.approx(ref)


def test_ndcg_metrics_average_over_queries_with_gain():
    recs = [{"query": "a", "gold": 4, "score": 3.0}, {"query": "a", "gold": 1, "score": 3.5},
            {"query": "b", "gold": 3, "score": 2.0}, {"query": "b", "gold": 2, "score": 1.0},
            {"query": "c", "gold": 1, "score": 1.0}]
    m = ndcg_metrics(recs)
    # a: 7/log2(3)/7 = 0.63093; b: 1.0; c skipped (ideal 0)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    assert m["ndcg@10_queries"] == 2 and m["ndcg@10_skipped_queries"] == 1
    assert ndcg_metrics([{"query": "a", "gold": 4}]) == {}  # unscored records: no ranking metric
    # a model that scored nothing ranks nothing: NaN, not the input order's NDCG (here 1.0)
    none = ndcg_metrics([{"query": "a", "gold": 4, "score": None}, {"query": "a", "gold": 1, "score": None}])
    assert math.isnan(none["ndcg@10"]) and none["ndcg@10_queries"] == 0
    # unscored records of a query rank worst first: [4, 1] both unscored -> gold 1 first
    partial = [{"query": "a", "gold": 4, "score": None}, {"query": "a", "gold": 1, "score": None},
               {"query": "b", "gold": 4, "score": 3.0}]
    assert ndcg_metrics(partial)["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)
    # records without a query text were ranked together as one query "None"
    with pytest.raises(ValueError, match=r"^ndcg@10: record 1 has no query text \(got None\)"):
        ndcg_metrics([{"query": "a", "gold": 4, "score": 1.0}, {"gold": 1, "score": 2.0}])


def test_grade_mapping_and_rmse():
    recs = [{"gold": 4, "grade": 3.0, "p_tier": [0, 0, 0, 1.0]},
            {"gold": 4, "grade": 2.0, "p_tier": [0, 0, 0.5, 0.5]},
            {"gold": 2, "grade": 1.0, "p_tier": [0, 1.0, 0, 0]},
            {"gold": 1, "grade": 0.0, "p_tier": None}]  # no label line: left out of the RMSE
    means = tier_grade_means(recs)
    # tier 4 -> 2.5, tier 2 -> 1.0, tier 1 -> 0.0, tier 3 (none) -> nearest: 2 and 4 tie -> the lower (1.0)
    assert means == {1: 0.0, 2: 1.0, 3: 1.0, 4: 2.5}
    # predictions 2.5, 0.5*1 + 0.5*2.5 = 1.75, 1.0 vs grades 3, 2, 1: errors .5, .25, 0
    m = grade_rmse(recs)
    assert m["rmse_grade"] == pytest.approx(math.sqrt((0.25 + 0.0625 + 0) / 3)) and m["rmse_grade_n"] == 3
    assert grade_rmse([{"gold": 4, "p_tier": [0, 0, 0, 1.0]}]) == {}
    assert grade_rmse([{"gold": 4, "grade": True, "p_tier": [0, 0, 0, 1.0]}]) == {}  # a bool is no grade


def rec(query, gold, pred, score, qt="brand", grade=None, p=None):
    r = {"query": query, "gold": gold, "pred": pred, "query_type": qt, "format_error": pred is None,
         "step_verdicts": {}, "score": score, "p_tier": p}
    if grade is not None:
        r["grade"] = grade
    return r


def test_compute_metrics_adds_ranking_without_changing_other_figures():
    recs = [rec("q1", 4, 4, 3.9, grade=3.0, p=[0, 0, 0.1, 0.9]), rec("q1", 2, 3, 3.1, grade=1.0, p=[0, 0.2, 0.5, 0.3]),
            rec("q2", 3, 3, 2.8, qt="negation", grade=2.0, p=[0, 0.3, 0.6, 0.1]),
            rec("q2", 1, None, None, qt="negation", grade=0.0)]
    plain = [{k: v for k, v in r.items() if k not in ("score", "p_tier", "grade")} for r in recs]
    with_rank, without = compute_metrics(recs), compute_metrics(plain)
    assert all(with_rank[k] == without[k] or (math.isnan(with_rank[k]) and math.isnan(without[k])) for k in without)
    extra = set(with_rank) - set(without)
    assert {"ndcg@10", "ndcg@10_queries", "rmse_grade", "by_type/negation/ndcg@10", "long_tail/ndcg@10",
            "long_tail/rmse_grade"} <= extra
    assert with_rank["ndcg@10"] == pytest.approx(1.0) and with_rank["ndcg@10_queries"] == 2
    assert not any("rmse_grade" in k for k in compute_metrics([{**r, "grade": None} for r in recs]))
