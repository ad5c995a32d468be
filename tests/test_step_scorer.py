"""SRPO's step scorer examines only the rows the update keeps: the GRM scores kept groups (one call
per group, so a kept row's scores do not depend on the other groups), dropped rows get no GRM score
and no token map, and ``train/steps/*`` are means over the examined rows."""
import pytest
import torch

from taosr.data.datamodule import RelevanceDataModule
from taosr.data.synth import SynthConfig
from taosr.eval.generation import GenerationSpec
from taosr.models.factory import ModelSpec, load_model_and_tokenizer
from taosr.reasoning.format import parse_reasoning, render_reasoning, token_step_index
from taosr.rl.examiner import SOURCE_GRM, ExaminerSpec
from taosr.rl.rollout import Rollout
from taosr.rl.step_scorer import StepScorer

G = 4


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    d = tmp_path_factory.mktemp("scorer")
    dm = RelevanceDataModule(synth=SynthConfig(n_train=12, n_val=2, n_test=2, seed=5), data_dir=str(d / "data"),
                             batch_size=4)
    dm.setup("fit")
    _, tok = load_model_and_tokenizer(ModelSpec(name_or_path="micro", cache_dir=str(d / "models")), dm.corpus)
    dm.attach_tokenizer(tok)
    return dm


def _grm(dm):
    from transformers import LlamaConfig, LlamaForCausalLM

    from taosr.rl.grm import GRMScorer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(dm.tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=1024)).eval()
    return GRMScorer(model, dm.tokenizer, batch_size=32)


def _rollout(dm, n_prompts=3):
    """G completions per prompt: the gold reasoning with other labels and query steps (some repeated,
    one without its judgment step), parsed and tokenised as the reward callback leaves them."""
    tok = dm.tokenizer
    texts, examples = [], []
    for p in range(n_prompts):
        ex = dm.splits["train"][p]
        for j in range(G):
            steps = dict(ex.steps, query=ex.steps["query"] + " extra" * (j % 2) + f" p{p}" * (j == 3))
            text = render_reasoning(steps, 1 + (p + j) % 4)
            if (p, j) == (1, 2):  # the judgment line left out
                text = "\n".join(line for line in text.split("\n") if not line.startswith("Judgment"))
            texts.append(text)
            examples.append(ex)
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    T = max(map(len, ids))
    comp = torch.full((len(ids), T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(comp)
    for i, x in enumerate(ids):
        comp[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
    N = len(ids)
    spec = GenerationSpec(max_new_tokens=T, do_sample=True, temperature=1.0, num_return_sequences=G)
    r = Rollout(spec=spec, prompt_ids=torch.ones(N, 3, dtype=torch.long), prompt_mask=torch.ones(N, 3, dtype=torch.long),
                completion_ids=comp, completion_mask=mask, texts=texts,
                example_index=torch.arange(n_prompts).repeat_interleave(G), clipped=torch.zeros(N, dtype=torch.bool))
    r.examples, r.parsed = examples, [parse_reasoning(t) for t in texts]
    return r


def test_grm_scores_only_kept_groups_and_kept_rows_are_unchanged(dm, monkeypatch):
    grm = _grm(dm)
    scorer = StepScorer(ExaminerSpec(mode="grm"), grm)
    r = _rollout(dm)
    full = scorer(r, dm.tokenizer)
    calls = []
    orig = grm.score
    monkeypatch.setattr(grm, "score", lambda exs, parsed: calls.append(len(exs)) or orig(exs, parsed))
    keep = torch.tensor([True] * G + [False] * G + [True] * G)
    part = scorer(r, dm.tokenizer, keep)
    assert calls == [G, G]  # one call per kept group; the dropped group's candidates are never run
    assert torch.equal(part.rewards[keep], full.rewards[keep]) and torch.equal(part.token_step[keep], full.token_step[keep])
    assert torch.equal(part.verdict[keep].nan_to_num(-1), full.verdict[keep].nan_to_num(-1))
    assert (full.source[~keep] == SOURCE_GRM).any() and not (part.source[~keep] == SOURCE_GRM).any()
    assert (part.token_step[~keep] == -1).all() and part.examined.tolist() == keep.tolist()
    # a kept row's scores are its group's alone: the same whichever other groups are kept
    only_last = scorer(r, dm.tokenizer, torch.tensor([False] * 2 * G + [True] * G))
    assert torch.equal(only_last.rewards[2 * G:], full.rewards[2 * G:])
    # the token map of an examined row is the one token_step_index gives
    i = 2 * G + 1
    n = int(r.completion_mask[i].sum())
    assert part.token_step[i, :n].tolist() == token_step_index(r.completion_ids[i, :n].tolist(), dm.tokenizer,
                                                               r.parsed[i], r.texts[i])


def test_step_stats_are_means_over_examined_rows(dm):
    """The dropped group holds the only completion without a judgment step: it no longer moves
    steps/per_response or steps/missing; with no row examined nothing is logged (a gap, not 0)."""
    scorer = StepScorer(ExaminerSpec(mode="verifier"))
    r = _rollout(dm)
    keep = torch.tensor([True] * G + [False] * G + [True] * G)
    every, kept = scorer(r, dm.tokenizer).stats, scorer(r, dm.tokenizer, keep).stats
    assert every["steps/missing"] == 1.0 and every["steps/per_response"] == pytest.approx(5 - 1 / (3 * G))
    assert kept["steps/missing"] == 0.0 and kept["steps/per_response"] == 5.0
    st = scorer(r, dm.tokenizer)
    assert kept["steps/mean_reward"] == pytest.approx(float(st.rewards[keep][st.present[keep]].mean()))
    assert scorer(r, dm.tokenizer, torch.zeros(3 * G, dtype=torch.bool)).stats == {}


def test_srpo_examines_the_rows_it_keeps():
    """examined_rows is the keep mask (GRPO's rule on the outcome rewards, known before the step
    scores); with keep_step_only_groups the keep rule reads the step scores, so every row is examined;
    without dynamic sampling every row is kept."""
    from taosr.methods.srpo import SRPOModule

    spec = GenerationSpec(max_new_tokens=2, do_sample=True, num_return_sequences=2)
    r = Rollout(spec=spec, prompt_ids=torch.ones(6, 1, dtype=torch.long), prompt_mask=torch.ones(6, 1, dtype=torch.long),
                completion_ids=torch.ones(6, 2, dtype=torch.long), completion_mask=torch.ones(6, 2, dtype=torch.long),
                texts=[""] * 6, example_index=torch.arange(3).repeat_interleave(2), clipped=torch.zeros(6, dtype=torch.bool))
    r.reward = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.2])
    mod = SRPOModule()
    assert mod.examined_rows(r).tolist() == mod.keep_mask(r).tolist() == [True, True, False, False, True, True]
    assert SRPOModule(keep_step_only_groups=True).examined_rows(r).all()
    assert SRPOModule(dynamic_sampling=False).examined_rows(r).all()
    # rewards changed after the scorer examined the rows: a kept row without step scores is refused
    # (its advantages would be the outcome's alone, without a word)
    from taosr.rl.rollout import StepScores

    z = torch.zeros(6, 5)
    r.steps = StepScores(rewards=z, source=z.long(), present=z.bool(), verdict=z, token_step=torch.zeros(6, 2).long(),
                         examined=mod.examined_rows(r))
    r.reward = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.2])
    with pytest.raises(RuntimeError, match="keeps rows the step scorer did not examine"):
        mod.keep_mask(r)
