"""P(tier) at the label slot on a micro model: the one-row fast path against four rows, batching and
padding against single unpadded forwards, and a completion whose tier continuations take several
tokens."""
import pytest
import torch

from taosr.data.synth import SynthConfig, generate
from taosr.eval.scores import (CONTINUATIONS, DIRECT_PREFIX, label_logprobs, label_prefix, prompt_rows,
                               split_continuations, tier_scores)
from taosr.models.factory import ModelSpec, load_model_and_tokenizer
from taosr.prompts import encode_prompt, policy_prompt
from taosr.reasoning.format import render_reasoning


def build(tmp_path_factory, vocab_size):
    rows = generate(SynthConfig(n_train=40, n_val=0, n_test=0, seed=3, train_annotation_share=1.0))["train"]
    texts = [policy_prompt(ex) for ex in rows] + [render_reasoning(ex.steps, ex.label) for ex in rows]
    model, tok = load_model_and_tokenizer(
        ModelSpec(name_or_path="micro", cache_dir=str(tmp_path_factory.mktemp("models")), vocab_size=vocab_size),
        lambda: iter(texts))
    model.train()  # scoring must switch to eval mode and back
    prompts = [encode_prompt(tok, policy_prompt(ex)) for ex in rows[:6]]
    comps = [render_reasoning(ex.steps, ex.label) for ex in rows[:6]]
    return model, tok, prompts, comps


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """The micro preset with its default 2048-token vocabulary: " 1".." 4" are one token each."""
    return build(tmp_path_factory, 2048)


@pytest.fixture(scope="module")
def micro_small_vocab(tmp_path_factory):
    """A 400-token vocabulary: " 1" is one token but " 2".." 4" are a space and a digit."""
    return build(tmp_path_factory, 400)


def reference_logprob(model, prompt, prefix_ids, tail):
    """Log-probability of ``tail`` after prompt + prefix: one unpadded forward, no batching."""
    ids = torch.tensor([list(prompt) + list(prefix_ids) + list(tail)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    start = len(prompt) + len(prefix_ids)
    return sum(float(logp[start + j - 1, t]) for j, t in enumerate(tail))


def test_fast_path_equals_four_rows_and_unpadded_forwards(micro):
    model, tok, prompts, comps = micro
    prefixes = [label_prefix(c) for c in comps]
    shared, tails = split_continuations(tok, prefixes[0])
    assert all(len(t) == 1 for t in tails), "the micro tokenizer writes each tier as one token after 'Label:'"
    fast = label_logprobs(model, tok, prompts, prefixes, batch_size=4)  # left padded, mixed lengths
    rows = label_logprobs(model, tok, prompts, prefixes, batch_size=3, fast=False)
    assert torch.allclose(fast, rows, atol=1e-5)
    assert model.training  # the mode is restored
    for n in (0, 5):
        shared, tails = split_continuations(tok, prefixes[n])
        ref = torch.tensor([reference_logprob(model, prompts[n], shared, t) for t in tails])
        assert torch.allclose(fast[n], ref, atol=1e-5)


def test_multi_token_continuations_are_scored_as_rows(micro_small_vocab):
    model, tok, prompts, comps = micro_small_vocab
    prefixes = [label_prefix(c) for c in comps]
    shared, tails = split_continuations(tok, prefixes[0])
    assert [len(t) for t in tails] == [1, 2, 2, 2]
    got = label_logprobs(model, tok, prompts, prefixes, batch_size=4)
    assert torch.allclose(got, label_logprobs(model, tok, prompts, prefixes, batch_size=1, fast=False), atol=1e-5)
    for n in (0, 3):
        shared, tails = split_continuations(tok, prefixes[n])
        ref = torch.tensor([reference_logprob(model, prompts[n], shared, t) for t in tails])
        assert torch.allclose(got[n], ref, atol=1e-5)


def test_tier_scores_sum_to_one_and_skip_completions_without_label(micro):
    model, tok, prompts, comps = micro
    texts = [comps[0], "Query understanding: nothing else", None, DIRECT_PREFIX]
    out = tier_scores(model, tok, prompts[:4], texts)
    assert out[1] is None and out[2] is None
    for s in (out[0], out[3]):
        assert sum(s["p_tier"]) == pytest.approx(1.0, abs=1e-6)
        assert 1.0 <= s["score"] <= 4.0
        assert s["pred"] == 1 + max(range(4), key=lambda k: s["p_tier"][k])
        assert s["p_ge"][2] >= s["p_ge"][3] >= s["p_ge"][4]
    assert tier_scores(model, tok, prompts[:1], ["no label"]) == [None]


def test_prompt_rows_strip_left_and_right_padding():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 0]])
    att = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert prompt_rows(ids, att) == [[5, 6], [7, 8, 9]]
    assert CONTINUATIONS == (" 1", " 2", " 3", " 4")


class Force:
    """Test driver for ``model.generate``: makes row r write ``targets[r]`` token by token (after the
    capture has seen the model's own scores), so greedy generation writes a known reasoning."""

    def __init__(self, targets, pad):
        self.targets, self.pad, self.step = targets, pad, 0

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, float("-inf"))
        for r, t in enumerate(self.targets):
            out[r, t[self.step] if self.step < len(t) else self.pad] = 0.0
        self.step += 1
        return out


def test_generation_capture_equals_the_forward_pass(micro):
    from transformers import LogitsProcessorList

    from taosr.data.collate import pad_left
    from taosr.eval.generation import decode_completions
    from taosr.eval.scores import LabelSlotCapture

    model, tok, prompts, comps = micro
    model.eval()
    targets = [tok(c, add_special_tokens=False).input_ids + [tok.eos_token_id] for c in comps]
    batch = pad_left(prompts, tok.pad_token_id)
    cap = LabelSlotCapture.for_tokenizer(tok)
    assert cap is not None and cap.token_ids == [split_continuations(tok, "Label:")[1][k][0] for k in range(4)]
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max(map(len, targets)), do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             logits_processor=LogitsProcessorList([cap, Force(targets, tok.pad_token_id)]))
    ids = out[:, batch["input_ids"].shape[1]:]
    texts = decode_completions(tok, ids)
    assert texts == comps
    # every row is served by the capture: no forward pass, so no model is needed
    captured = tier_scores(None, tok, prompts, texts, generated=ids, capture=cap)
    forward = tier_scores(model, tok, prompts, texts)
    for a, b in zip(captured, forward):
        assert a["p_tier"] == pytest.approx(b["p_tier"], abs=1e-5)
    # a row whose generated tokens are not the prefix's own tokens falls back to the forward pass
    bad = ids.clone()
    bad[0, 0] = (bad[0, 0] + 1) % len(tok)
    with pytest.raises(AttributeError):
        tier_scores(None, tok, prompts, texts, generated=bad, capture=cap)
    mixed = tier_scores(model, tok, prompts, texts, generated=bad, capture=cap)
    assert mixed[0]["p_tier"] == pytest.approx(forward[0]["p_tier"], abs=1e-6)
