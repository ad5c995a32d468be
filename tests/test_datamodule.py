"""DataModule views (SFT, eval prompts, DPO pairs, GRM rows) and the training-pool hooks."""
import dataclasses
import json
import os

import pytest
import torch

from taosr.data.datamodule import RelevanceDataModule
from taosr.data.hooks import Curriculum, CurriculumStage, DiverseSampling, RejectionSampling
from taosr.data.pairs import pairs_from_samples
from taosr.data.synth import SynthConfig
from taosr.errors import ConfigError, DataError
from taosr.labels import STEP_KEYS
from taosr.models.factory import ModelSpec, load_model_and_tokenizer
from taosr.reasoning.format import conclusion, render_reasoning
from taosr.data.samples import load_samples


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    d = tmp_path_factory.mktemp("dm")
    dm = RelevanceDataModule(synth=SynthConfig(n_train=40, n_val=6, n_test=6, seed=9), data_dir=str(d / "data"), batch_size=4)
    dm.setup("fit")
    _, tok = load_model_and_tokenizer(ModelSpec(name_or_path="micro", cache_dir=str(d / "models")), dm.corpus)
    dm.attach_tokenizer(tok)
    return dm


def test_sft_view_masks_prompt(dm):
    batch = dm.collate_sft(dm.splits["train"][:3])
    tok = dm.tokenizer
    for row in range(3):
        ids, lm, att = batch["input_ids"][row], batch["loss_mask"][row], batch["attention_mask"][row]
        target = tok.decode(ids[lm.bool()].tolist(), skip_special_tokens=True)
        ex = dm.splits["train"][row]
        assert target == render_reasoning(ex.steps, ex.label)  # exactly the reasoning (+ eos) is learned
        assert ids[0].item() == tok.bos_token_id and lm[: 5].sum() == 0
        assert (lm <= att).all()


def test_eval_view_left_pads_with_index(dm):
    loader = dm.val_dataloader()
    b = next(iter(loader))
    assert b["index"].tolist() == list(range(len(b["index"])))
    assert (b["attention_mask"][:, -1] == 1).all()  # left padded: every prompt ends at the last column


def test_seeded_order_is_reproducible(dm):
    a = [b["input_ids"].sum().item() for b in dm.train_dataloader()]
    b = [b["input_ids"].sum().item() for b in dm.train_dataloader()]
    assert a == b


def _samples_file(path, dm, rates):
    rows = []
    for ex, (good, bad) in zip(dm.splits["train"], rates):
        gold = render_reasoning(ex.steps, ex.label)
        wrong = gold.replace(f"Label: {ex.label}", f"Label: {5 - ex.label if ex.label != 2 else 1}")
        samples = [{"text": gold, "pred": ex.label, "correct": True} for _ in range(good)]
        samples += [{"text": wrong + " " * i, "pred": 0, "correct": False} for i in range(bad)]
        rows.append({"index": 0, "split": "train", "pass_rate": good / (good + bad), "example": ex.to_dict(), "samples": samples})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_dpo_pairs(tmp_path, dm):
    path = _samples_file(tmp_path / "s.jsonl", dm, [(2, 2), (0, 3), (3, 0)])
    rows = load_samples(path)
    pairs = pairs_from_samples(rows, pairs_per_prompt=2, gold_as_chosen=True)
    # prompt 0: 2 pairs of (correct, incorrect); prompt 1: gold stands in as chosen; prompt 2: never wrong -> none
    assert len(pairs) == 4
    assert all(c.strip() != r.strip() for _, c, r in pairs)
    assert len(pairs_from_samples(rows, pairs_per_prompt=2, gold_as_chosen=False)) == 2
    dm.samples_path = path
    from taosr.data.pairs import build_pairs, collate_dpo

    batch = collate_dpo(dm, build_pairs(dm)[:2])
    assert batch["input_ids"].shape[0] == 4  # chosen rows then rejected rows


def test_bad_samples_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_samples(str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"samples": [], "pass_rate": 0.5, "example": {}}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'samples'"):
        load_samples(str(bad))
    with pytest.raises(DataError, match="not found"):
        load_samples(str(tmp_path / "missing.jsonl"))


def test_grm_rows_verdicts_match_corruptions(dm):
    from taosr.data.grm import build_grm_rows, collate_grm

    dm.samples_path = None
    rows = build_grm_rows(dm)
    assert len(rows) == 3 * len(dm.splits["train"])
    n_wrong = 0
    for ex, steps, verdicts in rows:
        for k in STEP_KEYS:
            same = conclusion(steps[k]) == conclusion(ex.steps[k])
            assert verdicts[k] == same
            n_wrong += not verdicts[k]
    assert n_wrong > 0
    from taosr.reasoning.grm_layout import verdict_slot

    batch = collate_grm(dm, rows[:4])
    assert batch["loss_mask"].sum(1).tolist() == [5, 5, 5, 5]  # one decision token per step
    _, right, wrong = verdict_slot(dm.tokenizer)
    for r, (_, _, verdicts) in enumerate(rows[:4]):
        picked = batch["targets"][r][batch["loss_mask"][r].bool()].tolist()
        assert picked == [right if verdicts[k] else wrong for k in STEP_KEYS]
    # Outside the decision tokens the targets are the inputs; the inputs do not depend on the verdicts.
    off = ~batch["loss_mask"].bool()
    assert torch.equal(batch["targets"][off], batch["input_ids"][off])
    ex = rows[0][0]
    pair = collate_grm(dm, [(ex, dict(ex.steps), {k: True for k in STEP_KEYS}),
                            (ex, dict(ex.steps), {k: False for k in STEP_KEYS})])
    assert torch.equal(pair["input_ids"][0], pair["input_ids"][1])
    assert pair["targets"][0][pair["loss_mask"][0].bool()].tolist() == [right] * 5
    assert pair["targets"][1][pair["loss_mask"][1].bool()].tolist() == [wrong] * 5


def test_rejection_and_diverse_sampling(tmp_path, dm):
    path = _samples_file(tmp_path / "s.jsonl", dm, [(2, 2), (0, 3), (3, 0), (1, 3)])
    dm.samples_path = path
    rs = RejectionSampling(low=0.0, high=1.0)
    kept = rs.filter(dm.splits["train"], dm)
    assert [e.query for e in kept] == [dm.splits["train"][0].query, dm.splits["train"][3].query]
    assert rs.stats == {"input": 40, "kept": 2, "unsampled": 36, "dropped": 2}
    with pytest.raises(ConfigError, match="kept no prompt"):
        RejectionSampling(low=0.9, high=1.0).filter(dm.splits["train"], dm)
    ds = DiverseSampling(max_prompts=8)
    out = ds.filter(dm.splits["train"], dm)
    assert len(out) == 8 and len({(e.label, e.query_type) for e in out}) >= min(8, len({(e.label, e.query_type) for e in dm.splits["train"]}))
    assert not RejectionSampling(enabled=False).filter(dm.splits["train"], dm) is None
    # without a cap it keeps half the pool (keeping all would change nothing: the sampler shuffles)
    assert len(DiverseSampling().filter(dm.splits["train"], dm)) == 20
    assert len(DiverseSampling(share=0.25).filter(dm.splits["train"], dm)) == 10
    for kw, msg in ((dict(share=0.0), "data.diverse_sampling.share"), (dict(max_prompts=0), "data.diverse_sampling.max_prompts"),
                    (dict(rank_by="entropy"), "data.diverse_sampling.rank_by: 'entropy' is unknown"),
                    (dict(seed="x"), "data.diverse_sampling.seed")):
        with pytest.raises(ConfigError, match=msg):
            DiverseSampling(**kw)


def test_diverse_sampling_random_control(tmp_path, dm, monkeypatch, capsys):
    """rank_by: random keeps as many prompts, over the same tier x type cells, in random order:
    the diverse prompts (those with several sampled labels) are not preferred."""
    train = dm.splits["train"]
    # the first 10 prompts disagree (two labels among their samples), the other 30 do not
    dm.samples_path = _samples_file(tmp_path / "s.jsonl", dm, [(2, 2)] * 10 + [(4, 0)] * 30)
    diverse = DiverseSampling(share=0.25).filter(train, dm)
    draws = [DiverseSampling(share=0.25, rank_by="random", seed=s).filter(train, dm) for s in range(4)]
    assert "random order, seed 3" in capsys.readouterr().out
    cells = lambda rows: sorted((e.label, e.query_type) for e in rows)  # noqa: E731
    first10 = {id(e) for e in train[:10]}
    n_div = [sum(id(e) in first10 for e in d) for d in draws]
    assert sum(id(e) in first10 for e in diverse) > max(n_div), n_div
    for d in draws:
        assert len(d) == len(diverse) == 10 and cells(d) == cells(diverse)
    assert len({tuple(id(e) for e in d) for d in draws}) > 1  # the seed draws the subset
    # seed null: the run's seed (seed_everything sets PL_GLOBAL_SEED)
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    ds = DiverseSampling(share=0.25, rank_by="random", seed=None)
    assert [id(e) for e in ds.filter(train, dm)] == [id(e) for e in draws[3]] and ds.stats["seed"] == 3
    resumed = DiverseSampling(share=0.25, rank_by="random", seed=None)
    monkeypatch.delenv("PL_GLOBAL_SEED")
    resumed.load_state_dict(ds.state_dict())  # the checkpoint's draw, whatever the environment says
    assert [id(e) for e in resumed.filter(train, dm)] == [id(e) for e in draws[3]]
    with pytest.warns(RuntimeWarning, match="none was set"):
        DiverseSampling(share=0.25, rank_by="random", seed=None).filter(train, dm)


def test_curriculum_stages_filter_and_advance(dm, capsys):
    dm.samples_path = None
    cur = Curriculum(stages=[CurriculumStage(max_difficulty=0.5, until_step=3), CurriculumStage(max_difficulty=1.0)])
    easy = cur.filter(dm.splits["train"], dm)
    assert easy and all(e.query_type in ("category", "brand", "attribute") for e in easy)
    assert f"curriculum stage 1/2 keeps {len(easy)}/40 prompts (difficulty <= 0.5)" in capsys.readouterr().out
    none = Curriculum(stages=[CurriculumStage(query_types=["no_such_type"])])
    assert len(none.filter(dm.splits["train"], dm)) == 40  # an empty stage trains on the whole pool, and says so
    assert "keeps none of the 40 prompts" in capsys.readouterr().out
    assert not cur.should_advance(2, {}) and cur.should_advance(3, {})
    cur.advance(3)
    assert len(cur.filter(dm.splits["train"], dm)) == 40
    assert cur.state_dict() == {"stage": 1, "history": [{"stage": 1, "step": 3}]}
    by_metric = Curriculum(stages=[CurriculumStage(until_metric=0.5), CurriculumStage()])
    assert by_metric.should_advance(0, {"val/macro_f1": 0.6}) and not by_metric.should_advance(0, {"val/macro_f1": 0.4})


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_training_sampler_shards_itself_under_ddp(world):
    """Each rank takes every world-th allowed index, padded to the longest rank's count (equal steps
    on every rank), with a curriculum's filter and a resume's skip applied to its own share (Lightning's
    wrapper of a sampler that yields fewer than its length failed with IndexError)."""
    from torch.utils.data import DistributedSampler

    from taosr.data.datamodule import ResumableSampler

    def allowed(i):
        return i % 3 != 0

    def shard(rank, skip=0):
        s = ResumableSampler(11, seed=4, allowed=allowed, num_replicas=world, rank=rank)
        s.set_epoch(2)
        s.skip = skip
        return list(s)

    order = ResumableSampler(11, seed=4, allowed=allowed)
    order.set_epoch(2)
    kept = list(order)
    assert kept == [i for i in torch.randperm(11, generator=torch.Generator().manual_seed(4 * 100_003 + 2)).tolist()
                    if allowed(i)]  # one process: the permutation, filtered, as before
    shards = [shard(r) for r in range(world)]
    longest = -(-len(kept) // world)
    for r, sh in enumerate(shards):  # disjoint shares, nothing left out; one short repeats the epoch's first
        assert sh == kept[r::world] + [kept[0]] * (longest - len(kept[r::world]))
    assert all(shard(r, skip=2) == shards[r][2:] for r in range(world))  # a resume skips the rank's own examples
    assert isinstance(order, DistributedSampler) and len(ResumableSampler(11, 0, num_replicas=world)) == -(-11 // world)


def test_sharded_epochs_stay_disjoint_and_equal_when_the_curriculum_changes_mid_epoch():
    """A curriculum stage that changes after some steps: each rank pulls its next index at the same
    step, and every rank must see the same filter for the same indices (a lazy per-rank filter let
    ranks disagree: duplicated examples and unequal batch counts, i.e. a DDP hang)."""
    from taosr.data.datamodule import ResumableSampler

    for n, world, batch, switch in [(59, 4, 2, 3), (23, 2, 1, 5), (40, 3, 4, 1), (17, 4, 3, 2)]:
        stage = {"s": 0}

        def allowed(i):
            return i % 3 == 0 if stage["s"] == 0 else True

        iters = [iter(ResumableSampler(n, seed=1, allowed=allowed, num_replicas=world, rank=r)) for r in range(world)]
        shares, step = [[] for _ in range(world)], 0
        while True:
            if step == switch:
                stage["s"] = 1
            got = [[x for _, x in zip(range(batch), it)] for it in iters]  # one batch per rank, rank by rank
            if not any(got):
                break
            assert all(len(g) == len(got[0]) for g in got), (n, world, batch, switch, got)  # equal batches
            for r, g in enumerate(got):
                shares[r] += g
            step += 1
        flat = [i for sh in shares for i in sh]
        assert len(flat) - len(set(flat)) < world, (n, world, shares)  # only the short last round's padding repeats


def test_a_stage_reads_only_its_splits_and_stops_at_a_limit(tmp_path, capsys):
    """`taosr test` of 8 rows read the whole training file first (62 s for 1M rows), and data.limit_val
    cut a user's file after reading all of it, silently."""
    import json

    good = [{"query": f"q{i}", "item": {"title": f"item {i}"}, "label": 1 + i % 4} for i in range(6)]
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"query": "q", "item": {"title": "t"}, "label": 9}\n')  # would fail the whole read
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"query": "q", "label": 9}\n')  # bad after the limit
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in good))
    dm = RelevanceDataModule(train=str(bad), val=str(val), test=str(test), limit_val=4, data_dir=str(tmp_path / "c"))
    dm.setup("test")
    assert len(dm.splits["test"]) == 6 and set(dict.keys(dm.splits)) == {"test"}
    dm.setup("validate")
    assert [e.query for e in dm.splits["val"]] == ["q0", "q1", "q2", "q3"]
    assert f"data.val: the first 4 examples of {val} (data.limit_val / data.reader.limit)" in capsys.readouterr().out
    # a reader limit of its own still counts (the split's limit must not replace it)
    from taosr.data.readers import ReaderSpec

    own = RelevanceDataModule(train=str(test), val=None, test=None, reader=ReaderSpec(limit=3), data_dir=str(tmp_path / "c"))
    assert len(own.splits["train"]) == 3
    from taosr.errors import DataError

    with pytest.raises(DataError, match="train.jsonl:1: field 'label'"):
        dm.setup("fit")  # the training file is read when fitting


def test_a_validation_file_sharing_training_queries_is_flagged(tmp_path, capsys):
    """A user's val file cut from the same pairs as train (an ESCI-style split column left unread)
    gave validation figures on training queries, silently."""
    import json

    rows = [{"query": f"q{i % 3}", "item": {"title": f"item {i}"}, "label": 1 + i % 4} for i in range(9)]
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[5:] + [{**rows[7], "query": "fresh"}]))
    RelevanceDataModule(train=str(train), val=str(val), test=None, data_dir=str(tmp_path / "c")).setup("fit")
    err = capsys.readouterr().err
    assert f"data.val: 3 of 4 queries of {val} (1 of 5 pairs) also occur in {train}: its figures are not held out" in err


def test_unknown_view():
    with pytest.raises(ConfigError, match="unknown view"):
        RelevanceDataModule(view="ppo")


def test_grm_corruptions_keep_the_step_format():
    """Corrupted GRM training steps keep their evidence and change only the conclusion; the verdict
    is wrong exactly where the conclusion changed."""
    import random

    from taosr.data.grm import corrupt_steps
    from taosr.data.synth import SynthConfig, generate
    from taosr.labels import STEP_KEYS
    from taosr.reasoning.format import conclusion

    train = generate(SynthConfig(n_train=200, n_val=5, n_test=5, seed=1))["train"]
    pool = {k: sorted({conclusion(ex.steps[k]) for ex in train}) for k in STEP_KEYS}
    rng, wrong = random.Random(0), 0
    for ex in train:
        steps, verdicts = corrupt_steps(ex, pool, rng, corrupt_prob=0.5)
        for k in STEP_KEYS:
            changed = conclusion(steps[k]) != conclusion(ex.steps[k])
            assert verdicts[k] == (not changed)
            if "=>" in ex.steps[k]:
                assert steps[k].rsplit("=>", 1)[0].strip() == ex.steps[k].rsplit("=>", 1)[0].strip()
            wrong += changed
    assert wrong > 200


def test_grm_scorer_reads_the_training_tokens(dm):
    """The scorer's input is the training input (whatever the verdicts), and it reads P(right) one
    position before each token the training loss is on."""
    from taosr.data.grm import collate_grm
    from taosr.rl.grm import GRMScorer

    ex = dm.splits["train"][0]
    verdicts = {k: i % 2 == 0 for i, k in enumerate(STEP_KEYS)}
    batch = collate_grm(dm, [(ex, dict(ex.steps), verdicts)])
    ids, positions = GRMScorer(None, dm.tokenizer)._encode(ex, dict(ex.steps))
    assert batch["input_ids"][0][: len(ids)].tolist() == ids
    assert batch["loss_mask"][0].nonzero().flatten().tolist() == [p + 1 for p in positions]


def _grm_judge(dm):
    """A tiny untrained Llama over the DataModule's vocabulary, as a GRM to score with (seed 0)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(dm.tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=1024)).eval()


def test_grm_verdict_on_a_step_reads_no_later_step(dm):
    """Causal in the steps: changing step k+1.. leaves the scores of steps 1..k unchanged, in a batch
    with rows of other lengths; the changed steps' scores move."""
    from taosr.rl.grm import GRMScorer

    model = _grm_judge(dm)
    ex = dm.splits["train"][0]
    a = dict(ex.steps)
    b = dict(a, attribute="brand adidas vs brand puma => violated", judgment="mismatch => irrelevant")
    c = dict(a, query=a["query"] + " and a much longer query understanding " * 3)
    got = GRMScorer(model, dm.tokenizer, batch_size=8).score_steps([ex, ex, ex], [a, b, c])
    assert torch.allclose(got[0, :3], got[1, :3], atol=1e-6)
    assert not torch.allclose(got[0, 3:], got[1, 3:], atol=1e-4)


def test_grm_scores_match_a_full_forward_per_row(dm):
    """Batched, left-padded scoring from the decoder's hidden states at the verdict slots and the LM
    head's two verdict rows gives the same P(right) as a plain full forward of each row alone."""
    from taosr.rl.grm import GRMScorer

    model = _grm_judge(dm)
    exs = dm.splits["train"][:3]
    steps = [dict(ex.steps) for ex in exs]
    steps[1]["query"] = "something much longer than the gold query step " * 3  # rows of different lengths
    # more candidates of the first example: they share its prompt (run once), one its query step too
    exs = exs + [exs[0], exs[0]]
    steps += [dict(steps[0], attribute="brand adidas vs brand puma => violated"),
              dict(steps[0], query="a query step that differs from the first token on")]
    scorer = GRMScorer(model, dm.tokenizer, batch_size=8)
    got = scorer.score_steps(exs, steps)
    right, wrong = scorer.pair_ids.tolist()
    for n, (ex, st) in enumerate(zip(exs, steps)):
        ids, pos = scorer._encode(ex, st)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, pos]
        assert torch.allclose(got[n], torch.softmax(logits[:, [right, wrong]], -1)[:, 0], atol=1e-5)


def test_grm_scores_repeated_candidates_once_in_their_own_order(dm, monkeypatch):
    """Repeated candidates are scored once (the decoder sees each distinct input once) and every
    candidate gets its own scores back, with batches smaller than the set."""
    from taosr.rl.grm import GRMScorer

    model = _grm_judge(dm)
    exs = dm.splits["train"][:3]
    steps = [dict(ex.steps) for ex in exs]
    steps[1]["query"] = "something much longer than the gold query step " * 3
    short = dict(steps[0])
    del short["judgment"]  # a missing step: NaN
    cands = [(exs[0], steps[0]), (exs[1], steps[1]), (exs[0], steps[0]), (exs[2], steps[2]), (exs[0], short),
             (exs[1], steps[1]), (exs[0], steps[0])]
    rows = []
    decoder = model.get_decoder()
    orig = type(decoder).forward
    def counting(self, *a, **k):  # rows of the calls that continue from a shared prompt's cache
        if k.get("cache") is not None or k.get("past_key_values") is not None:
            rows.append(len(k["input_ids"]))
        return orig(self, *a, **k)

    monkeypatch.setattr(type(decoder), "forward", counting)
    got = GRMScorer(model, dm.tokenizer, batch_size=2).score_steps([e for e, _ in cands], [s for _, s in cands])
    assert sum(rows) == 4 and max(rows) == 2  # 4 distinct inputs, batches of 2
    alone = GRMScorer(model, dm.tokenizer, batch_size=1)
    for n, (ex, st) in enumerate(cands):
        want = alone.score_steps([ex], [st])[0]
        assert torch.allclose(got[n], want, atol=1e-5, equal_nan=True)
    assert torch.equal(got[0], got[2]) and torch.equal(got[0], got[6]) and torch.equal(got[1], got[5])
    assert torch.isnan(got[4, -1]) and not torch.isnan(got[4, :-1]).any()


def _long_rows_file(tmp_path, dm):
    """Four training rows: one with a 100,000-character title, one with a 5,000-character query."""
    rows = [ex.to_dict() for ex in dm.splits["train"][:4]]
    rows[1]["item"]["title"] = "Extra Long Title " * 6000
    rows[2]["query"] = "a very long query " * 280
    p = tmp_path / "long.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_long_prompts_are_cut_by_rule_and_counted(tmp_path, dm, capsys):
    """A row longer than max_length keeps its whole target (the prompt's item fields, then its query,
    are cut); evaluation prompts are capped too; every cut row is counted and reported."""
    path = _long_rows_file(tmp_path, dm)
    d = RelevanceDataModule(train=path, val=None, test=path, batch_size=2, max_length=dm.max_length)
    d.setup("fit")
    d.attach_tokenizer(dm.tokenizer)
    tok = dm.tokenizer
    batch = d.collate_sft(d.splits["train"])
    assert batch["input_ids"].shape[1] <= d.max_length
    for row, ex in enumerate(d.splits["train"]):
        lm = batch["loss_mask"][row].bool()
        assert tok.decode(batch["input_ids"][row][lm].tolist(), skip_special_tokens=True) == render_reasoning(ex.steps, ex.label)
    prompt1 = tok.decode(batch["input_ids"][1][~batch["loss_mask"][1].bool() & batch["attention_mask"][1].bool()].tolist(),
                         skip_special_tokens=True)
    assert "Extra Long Title" in prompt1 and "..." in prompt1 and d.splits["train"][1].query in prompt1
    # rows that fit are encoded exactly as before
    same = dm.collate_sft([dm.splits["train"][0], dm.splits["train"][3]])
    again = d.collate_sft([d.splits["train"][0], d.splits["train"][3]])
    assert torch.equal(same["input_ids"], again["input_ids"]) and torch.equal(same["loss_mask"], again["loss_mask"])
    assert len(d.truncated["train"]) == 2 and not d.targets_cut["train"]
    # a cut row is encoded once, not again at every epoch (its search re-encodes the prompt many times)
    encodes = []
    real = d.encode_prompt
    d.encode_prompt = lambda text: encodes.append(text) or real(text)
    assert torch.equal(d.collate_sft(d.splits["train"])["input_ids"], batch["input_ids"])
    assert len(encodes) == 2  # the two rows that fit; the cut ones come from the cache
    del d.encode_prompt
    d.attach_tokenizer(dm.tokenizer)
    assert d._fitted  # the same tokenizer keeps them; another one's ids would be stale
    d.attach_tokenizer(type("OtherTokenizer", (), {})())
    assert not d._fitted
    d.attach_tokenizer(dm.tokenizer)
    first = capsys.readouterr().out
    assert first.count("does not fit data.max_length") == 1 and "item fields are cut" in first  # once per split
    # evaluation prompts are capped (no prompt of 100,000 characters reaches generate)
    ev = d.collate_prompts(list(enumerate(d.splits["test"])))
    assert ev["input_ids"].shape[1] <= d.max_length and len(d.truncated["test"]) == 2
    d.teardown("fit")
    report = capsys.readouterr().out
    assert "train: 2 of 4 prompts shortened, 0 targets cut" in report and "test: 2 of 4 prompts shortened" in report
    # a budget smaller than the target: the target is cut at its end, counted
    small = RelevanceDataModule(train=path, val=None, test=None, max_length=48)
    small.setup("fit")
    small.attach_tokenizer(tok)
    b = small.collate_sft(small.splits["train"])
    assert b["input_ids"].shape[1] <= 48 and len(small.targets_cut["train"]) == 4


def test_dpo_chosen_and_rejected_share_a_cut_prompt(tmp_path, dm):
    from taosr.data.pairs import collate_dpo

    path = _long_rows_file(tmp_path, dm)
    d = RelevanceDataModule(train=path, val=None, test=None, max_length=dm.max_length)
    d.setup("fit")
    d.attach_tokenizer(dm.tokenizer)
    ex = d.splits["train"][1]
    gold = render_reasoning(ex.steps, ex.label)
    batch = collate_dpo(d, [(ex, gold, gold + " and a much longer rejected tail" * 5)])
    prompts = [batch["input_ids"][r][~batch["loss_mask"][r].bool() & batch["attention_mask"][r].bool()].tolist() for r in (0, 1)]
    assert prompts[0] == prompts[1] and batch["input_ids"].shape[1] <= d.max_length


def test_views_are_a_registry():
    from taosr.data.views import VIEWS

    assert VIEWS.names() == ["sft", "dpo", "rl", "grm"]
    with pytest.raises(ValueError, match="already registered"):
        VIEWS.register("sft", lambda dm: None)


def test_default_synth_cache_key_is_unchanged(tmp_path):
    """The settings added to SynthConfig later (the annotation regime, the price, category and
    description shares) do not move the default data's cache folder; another value does, an int or a float alike."""
    import dataclasses
    import hashlib

    from taosr.data.synth import SYNTH_VERSION

    c = SynthConfig()
    old = {k: v for k, v in dataclasses.asdict(c).items() if k not in ("annotation_regime", "price_share", "category_share",
                                                                  "description_share")}
    digest = hashlib.sha1(json.dumps({"v": SYNTH_VERSION, **old}, sort_keys=True, default=str).encode()).hexdigest()[:10]
    assert RelevanceDataModule(data_dir=str(tmp_path)).synth_dir().endswith(digest)
    held = RelevanceDataModule(data_dir=str(tmp_path), synth=SynthConfig(annotation_regime="heldout"))
    assert held.synth_dir() != RelevanceDataModule(data_dir=str(tmp_path)).synth_dir()
    assert digest == "3584c87b1e"  # the key of the data generated before these settings existed
    shown = [RelevanceDataModule(data_dir=str(tmp_path), synth=SynthConfig(category_share=v)).synth_dir() for v in (1, 1.0)]
    assert shown[0] == shown[1] != RelevanceDataModule(data_dir=str(tmp_path)).synth_dir()
    assert RelevanceDataModule(data_dir=str(tmp_path), synth=SynthConfig(price_share=1)).synth_dir().endswith(digest)
    assert RelevanceDataModule(data_dir=str(tmp_path), synth=SynthConfig(description_share=0)).synth_dir().endswith(digest)
    described = RelevanceDataModule(data_dir=str(tmp_path), synth=SynthConfig(description_share=0.5)).synth_dir()
    assert not described.endswith(digest) and described not in shown
    assert RelevanceDataModule(data_dir=str(tmp_path), synth=SynthConfig(description_share=1)).synth_dir() == \
        RelevanceDataModule(data_dir=str(tmp_path), synth=SynthConfig(description_share=1.0)).synth_dir()


def test_heldout_regime_views(tmp_path, dm, capsys):
    """Heldout regime: SFT and the GRM learn only from annotated examples; RL prompts include the
    unannotated ones (no annotations: the GRM judges all their steps)."""
    synth = SynthConfig(n_train=60, n_val=6, n_test=6, seed=9, annotation_regime="heldout")
    d = RelevanceDataModule(view="sft", synth=synth, data_dir=str(tmp_path / "data"), batch_size=4)
    d.setup("fit")
    d.attach_tokenizer(dm.tokenizer)
    annotated = [ex for ex in d.splits["train"] if ex.steps]
    assert 0 < len(annotated) < 60
    rows = d.train_dataloader().dataset.rows
    assert rows == annotated and "SFT trains on the" in capsys.readouterr().out
    next(iter(d.train_dataloader()))  # collates: no step-less example reaches SFT
    d.view = "grm"
    grm_rows = d.train_dataloader().dataset.rows
    assert {id(ex) for ex, _, _ in grm_rows} == {id(ex) for ex in annotated}
    d.view = "rl"
    rl = d.train_dataloader().dataset.rows
    assert len(rl) == 60 and sum(ex.annotations is None for _, ex in rl) == 60 - len(annotated)


def test_reader_options_reach_the_files(tmp_path):
    """data.reader (one ReaderSpec) reads a latin-1 CSV with a column and label map."""
    p = tmp_path / "d.csv"
    p.write_bytes("q,name,esci\ncaf\xe9 chair,Caf\xe9 Chair,E\nsofa,Sofa,I\n".encode("latin-1"))
    from taosr.data.readers import ReaderSpec

    d = RelevanceDataModule(train=str(p), val=None, test=None,
                            reader=ReaderSpec(column_map={"query": "q", "item.title": "name", "label": "esci"},
                                              label_map={"E": 4, "I": 1}))
    d.setup("fit")
    assert [(e.query, e.item.title, e.label) for e in d.splits["train"]] == [("caf\xe9 chair", "Caf\xe9 Chair", 4), ("sofa", "Sofa", 1)]
    from taosr.data.datamodule import ReaderOptions

    assert ReaderOptions is ReaderSpec  # the old name is the same type


def test_reader_joins_products_and_queries_files(tmp_path, capsys):
    """data.reader.items / queries (a ReaderSpec's join) reach the split files; the counts are printed."""
    from taosr.data.readers import ReaderSpec

    (tmp_path / "pairs.csv").write_text("qid,pid,grade\n1,P1,3.0\n1,P2,0.4\n2,P1,2.5\n")
    (tmp_path / "products.csv").write_text("pid,name,features,blurb\nP1,Trail Shoes,color:red|size:42,Grippy soles.\n"
                                           "P2,Shoe Laces,,\nP3,Unused Sock,,\n")
    (tmp_path / "queries.jsonl").write_text('{"qid": 1, "query": "red trail shoes"}\n{"qid": 2, "query": "shoes"}\n')
    d = RelevanceDataModule(train=str(tmp_path / "pairs.csv"), val=None, test=None,
                            reader=ReaderSpec(column_map={"label": "grade"}, label_thresholds=[1.0, 2.0, 2.75],
                                              items=str(tmp_path / "products.csv"), item_key="pid",
                                              items_column_map={"item.title": "name", "item.attributes": "features",
                                                                "item.description": "blurb"},
                                              queries=str(tmp_path / "queries.jsonl"), query_key="qid"))
    d.setup("fit")
    rows = d.splits["train"]
    assert [(e.query, e.item.title, e.label, e.grade) for e in rows] == [
        ("red trail shoes", "Trail Shoes", 4, 3.0), ("red trail shoes", "Shoe Laces", 1, 0.4), ("shoes", "Trail Shoes", 3, 2.5)]
    assert rows[0].item.attributes == {"color": "red", "size": "42"} and rows[0].item.description == "Grippy soles."
    assert "Description: Grippy soles." in d.prompt_text(rows[0])
    out = capsys.readouterr().out
    assert "3 of 3 pairs joined a row of" in out and "1 of 3 product rows joined no pair" in out


def test_a_long_description_is_cut_first(tmp_path, dm, capsys):
    """A product description of thousands of characters is what the budget cuts: the title, the
    other fields and the target stay whole; the row is counted."""
    rows = [ex.to_dict() for ex in dm.splits["train"][:2]]
    rows[0]["item"]["description"] = "Soft velvet upholstery with a solid wood frame. " * 120
    p = tmp_path / "desc.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = RelevanceDataModule(train=str(p), val=None, test=None, batch_size=2, max_length=dm.max_length)
    d.setup("fit")
    d.attach_tokenizer(dm.tokenizer)
    tok, ex = dm.tokenizer, d.splits["train"][0]
    batch = d.collate_sft(d.splits["train"])
    assert batch["input_ids"].shape[1] <= d.max_length
    lm = batch["loss_mask"][0].bool()
    assert tok.decode(batch["input_ids"][0][lm].tolist(), skip_special_tokens=True) == render_reasoning(ex.steps, ex.label)
    prompt = tok.decode(batch["input_ids"][0][~lm & batch["attention_mask"][0].bool()].tolist(), skip_special_tokens=True)
    whole = d.prompt_text(dataclasses.replace(ex, item=dataclasses.replace(ex.item, description=None)))
    assert prompt.startswith(tok.decode(tok(whole.split("\nReasoning:")[0], add_special_tokens=False).input_ids,
                                        skip_special_tokens=True))  # everything before the description is whole
    assert "Description: Soft velvet" in prompt and "..." in prompt and len(d.truncated["train"]) == 1
    assert "item fields are cut" in capsys.readouterr().out


def test_grm_rows_cut_short_are_counted(tmp_path, dm, capsys):
    """A GRM row whose verdict slots fall beyond max_length trains on fewer verdicts: counted, said once."""
    from taosr.data.grm import collate_grm

    d = RelevanceDataModule(synth=SynthConfig(n_train=40, n_val=6, n_test=6, seed=9), data_dir=dm.data_dir, max_length=40)
    d.setup("fit")
    d.attach_tokenizer(dm.tokenizer)
    rows = [(ex, dict(ex.steps), {k: True for k in STEP_KEYS}) for ex in d.splits["train"][:3]]
    batch = collate_grm(d, rows)
    assert batch["input_ids"].shape[1] <= 40 and (batch["loss_mask"].sum(1) < 5).all()
    assert len(d.targets_cut["train"]) == 3
    assert capsys.readouterr().out.count("GRM verdicts beyond the budget") == 1


# ---------------------------------------------------------------- data.target: label (issue #14)
def _label_only_file(tmp_path, dm, n=4):
    """Rows as real users have them: tiers, no reasoning steps or annotations."""
    rows = [{k: v for k, v in ex.to_dict().items() if k not in ("steps", "annotations")} for ex in dm.splits["train"][:n]]
    p = tmp_path / "labels.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_label_target_learns_exactly_the_label_line(tmp_path, dm):
    """data.target: label trains on rows without steps: the loss covers exactly the tokens of
    `Label: N` and eos, after a prompt that ends with the label target's cue line."""
    path = _label_only_file(tmp_path, dm)
    d = RelevanceDataModule(train=path, val=None, test=None, target="label", batch_size=2)
    d.setup("fit")
    d.attach_tokenizer(dm.tokenizer)
    tok = dm.tokenizer
    batch = next(iter(d.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2
    batch = d.collate_sft(d.splits["train"])
    for row, ex in enumerate(d.splits["train"]):
        assert ex.steps is None
        ids, lm, att = batch["input_ids"][row], batch["loss_mask"][row].bool(), batch["attention_mask"][row].bool()
        assert ids[lm].tolist() == tok(f"Label: {ex.label}", add_special_tokens=False).input_ids + [tok.eos_token_id]
        assert tok.decode(ids[lm].tolist(), skip_special_tokens=True) == f"Label: {ex.label}"
        prompt = tok.decode(ids[att & ~lm].tolist(), skip_special_tokens=True)
        assert prompt.startswith(f"Query: {ex.query}\n") and prompt.endswith("\nAnswer:\n")
    # evaluation prompts end with the same cue
    ev = d.collate_prompts([(0, d.splits["train"][0])])
    assert tok.decode(ev["input_ids"][0].tolist(), skip_special_tokens=True).endswith("\nAnswer:\n")


def test_reasoning_target_names_the_file_and_the_way_out_for_rows_without_steps(tmp_path, dm):
    path = _label_only_file(tmp_path, dm)
    d = RelevanceDataModule(train=path, val=None, test=None)
    d.setup("fit")
    d.attach_tokenizer(dm.tokenizer)
    with pytest.raises(ConfigError) as err:
        d.collate_sft(d.splits["train"][:2])
    msg = str(err.value)
    assert msg.startswith(f"data.train ({path}): example train-0 has no gold reasoning steps") and "\n" not in msg
    assert "data.target: label" in msg and "`taosr reason`" in msg and "CoT file" in msg
    # before the first step, with the count: the training loader is refused at once
    n = len(d.splits["train"])
    with pytest.raises(ConfigError, match=rf"^data.train \({path}\): {n} of {n} examples have no gold reasoning steps "
                                          r"\(first: train-0\); SFT with data.target: reasoning needs them"):
        d.train_dataloader()


def test_unknown_target_is_refused_at_construction():
    with pytest.raises(ConfigError, match=r"data.target: 'cot' is unknown; expected one of reasoning, label"):
        RelevanceDataModule(target="cot")


def test_label_target_dpo_pairs_and_samples_of_another_target(tmp_path, dm):
    """DPO on the label target: a prompt never answered correctly gets `Label: N` as chosen (no gold
    steps needed); a samples file drawn with another target is refused in one line."""
    from taosr.data.pairs import build_pairs, collate_dpo

    exs = dm.splits["train"][:2]
    bare = [{k: v for k, v in ex.to_dict().items() if k not in ("steps", "annotations")} for ex in exs]
    rows = [{"index": i, "split": "train", "pass_rate": 0.0, "example": bare[i],
             "sampler": {"model": "m", "target": "label"},
             "samples": [{"text": f"Label: {1 + ex.label % 4}", "pred": 1 + ex.label % 4, "correct": False},
                         {"text": "Label: 9", "pred": None, "correct": False}]} for i, ex in enumerate(exs)]
    p = tmp_path / "s.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = RelevanceDataModule(train=_label_only_file(tmp_path, dm), val=None, test=None, target="label",
                            samples_path=str(p), pairs_per_prompt=2)
    d.setup("fit")
    d.attach_tokenizer(dm.tokenizer)
    pairs = build_pairs(d)
    assert [(ex.id, c) for ex, c, _ in pairs] == [(ex.id, f"Label: {ex.label}") for ex in exs for _ in range(2)]
    assert {r for _, _, r in pairs} == {"Label: 9", *(f"Label: {1 + ex.label % 4}" for ex in exs)}
    batch = collate_dpo(d, pairs[:1])
    tok = dm.tokenizer
    chosen = batch["input_ids"][0][batch["loss_mask"][0].bool()].tolist()
    assert tok.decode(chosen, skip_special_tokens=True) == f"Label: {exs[0].label}"
    # the reasoning target has no stand-in for rows without steps, and refuses label samples
    assert pairs_from_samples(load_samples(str(p)), gold_as_chosen=True) == []
    r = RelevanceDataModule(train=_label_only_file(tmp_path, dm), val=None, test=None, samples_path=str(p))
    r.setup("fit")
    with pytest.raises(ConfigError, match=r"was sampled with --target label, but data.target is reasoning; "
                                          r"sample the policy with --target reasoning"):
        build_pairs(r)


def test_an_empty_training_file_is_named_with_its_likely_cause(tmp_path):
    """`taosr reason` that explained no pair writes an empty file; the fit names it and where to look."""
    empty = tmp_path / "reasoned.jsonl"
    empty.write_text("")
    dm = RelevanceDataModule(train=str(empty), val=None, test=None, data_dir=str(tmp_path / "d"))
    with pytest.raises(ConfigError, match=r"data.train: no training examples in .*reasoned.jsonl \(the file is empty: "
                                          r"if `taosr reason` wrote it"):
        dm.setup("fit")


def test_the_synthetic_split_beside_a_users_training_file_is_said(tmp_path, capsys):
    """`taosr test` on a config that names the user's data.train but no data.test scored the synthetic
    test split without a word."""
    train = tmp_path / "train.jsonl"
    dm0 = RelevanceDataModule(synth=SynthConfig(n_train=8, n_val=2, n_test=3, seed=1), data_dir=str(tmp_path / "d"),
                              val=None, test=None)
    dm0.setup("fit")
    from taosr.schema import write_jsonl

    write_jsonl(str(train), dm0.splits["train"])
    dm = RelevanceDataModule(train=str(train), val=None, synth=SynthConfig(n_train=8, n_val=2, n_test=3, seed=1),
                             data_dir=str(tmp_path / "d"))
    dm.setup("test")
    assert "warning: data.test is the synthetic test split (the config names no data.test), while data.train is " \
           f"{train}" in capsys.readouterr().err


def test_a_run_without_a_validation_split_does_not_warn_of_an_empty_list(tmp_path, cache_dir):
    """`data.val: null` (the your-data overlay): Lightning warned "Total length of `list` across
    ranks is zero" on every run."""
    import warnings

    from tests.conftest import fit

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit("configs/sft.yaml", str(tmp_path / "r"), cache_dir, "--data.val", "null", "--trainer.max_steps", "1",
            "--trainer.logger", "false")
    assert not [w for w in caught if "across ranks is zero" in str(w.message)]
