"""Pure losses on hand-made tensors."""
import math

import pytest
import torch

from taosr.losses.dpo import dpo_loss, dpo_metrics
from taosr.losses.policy import LOSS_AGGREGATIONS, k3_kl, policy_loss
from taosr.losses.sft import gather_logprobs, sequence_logprobs, sft_loss, token_entropy


def test_sft_loss_masks_prompt_tokens():
    # vocab 2, uniform logits -> every target has log p = log 0.5
    logits = torch.zeros(1, 4, 2)
    ids = torch.tensor([[0, 1, 1, 0]])
    mask = torch.tensor([[0, 0, 1, 1]])  # only the last two tokens are targets
    assert sft_loss(logits, ids, mask).item() == pytest.approx(math.log(2))
    # make the prompt position badly predicted: the loss must not change
    logits[0, 0, 1] = -50.0
    assert sft_loss(logits, ids, mask).item() == pytest.approx(math.log(2))
    # a confident correct prediction for target 2 (predicted at position 1) halves the loss
    logits[0, 1, 1] = 50.0
    assert sft_loss(logits, ids, mask).item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    assert sequence_logprobs(logits, ids, mask).item() == pytest.approx(-math.log(2), abs=1e-6)


def test_gather_logprobs_matches_log_softmax():
    x = torch.randn(2, 3, 5)
    t = torch.randint(0, 5, (2, 3))
    assert torch.allclose(gather_logprobs(x, t), torch.log_softmax(x, -1).gather(-1, t[..., None]).squeeze(-1), atol=1e-6)


def test_token_entropy_by_hand_and_in_chunks():
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestVocabTensor(TorchDispatchMode):
        """The most values of any new (.., V) tensor an op makes (a view or an in-place result shares
        an input's storage: no new memory)."""

        def __init__(self, vocab):
            super().__init__()
            self.vocab, self.most = vocab, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if (isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == self.vocab
                        and t.untyped_storage().data_ptr() not in inputs):
                    self.most = max(self.most, t.numel())
            return out

    # uniform over 4: log 4; one certain token: 0; two equal of a near-impossible rest: log 2
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [60.0, 0.0, 0.0, 0.0], [30.0, 30.0, -30.0, -30.0]]])
    assert token_entropy(logits)[0].tolist() == pytest.approx([math.log(4), 0.0, math.log(2)], abs=1e-5)
    # any chunking gives the definition's numbers; bf16 logits are read in float32; the input is
    # untouched; no op makes a vocabulary-wide tensor larger than the budget (one position at least)
    x = (torch.randn(7, 5, 11) * 4).to(torch.bfloat16).requires_grad_()
    before = x.detach().clone()
    logp = torch.log_softmax(x.detach().float(), -1)
    want = -(logp.exp() * logp).sum(-1)
    for budget in (1, 11 * 2, 11 * 5, 11 * 5 * 3, 10 ** 6):  # 1 and 2 positions, a row, 3 rows, all at once
        with LargestVocabTensor(11) as seen:
            got = token_entropy(x, max_elements=budget)
        assert seen.most <= max(budget, 11) if budget < 10 ** 6 else seen.most == 7 * 5 * 11, (budget, seen.most)
        assert got.dtype == torch.float32 and got.shape == (7, 5) and got.grad_fn is None
        assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(x.detach(), before)
    assert token_entropy(torch.zeros(0, 5, 11)).shape == (0, 5)
    assert token_entropy(torch.zeros(2, 0, 11), max_elements=1).shape == (2, 0)

def test_dpo_loss_hand_computed():
    # logits = (pc - pr) - (rc - rr) = (-1 - -3) - (-2 - -2) = 2; beta .5 -> loss = -log sigmoid(1)
    losses, rc, rr = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))))
    assert rc.item() == pytest.approx(0.5) and rr.item() == pytest.approx(-0.5)
    m = dpo_metrics(rc, rr)
    assert m == {"rewards/chosen": 0.5, "rewards/rejected": -0.5, "rewards/accuracies": 1.0, "rewards/margins": 1.0}
    # conservative label smoothing mixes in the flipped preference
    ls, _, _ = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5,
                        label_smoothing=0.1)
    want = -0.9 * math.log(1 / (1 + math.exp(-1))) - 0.1 * math.log(1 / (1 + math.exp(1)))
    assert ls.item() == pytest.approx(want)


def test_policy_loss_clipping_hand_computed():
    old = torch.zeros(1, 3)
    # ratios e^0.5=1.65 (A>0: clipped at 1.28), e^-0.5=0.61 (A<0: clipped at 0.8), 1.0
    logps = torch.tensor([[0.5, -0.5, 0.0]])
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, m = policy_loss(logps, old, adv, mask, eps_low=0.2, eps_high=0.28)
    # per token: -min(1.6487*1, 1.28*1) = -1.28 ; -min(0.6065*-1, 0.8*-1) = 0.8 ; -2
    assert loss.item() == pytest.approx((-1.28 + 0.8 - 2.0) / 3, abs=1e-4)
    assert m["clip_ratio/high_mean"] == pytest.approx(1 / 3)
    assert m["clip_ratio/low_mean"] == pytest.approx(1 / 3)
    assert m["clip_ratio/region_mean"] == pytest.approx(2 / 3)


def test_k3_kl_zero_at_equal_and_positive():
    lp = torch.tensor([[-1.0, -2.0]])
    assert torch.allclose(k3_kl(lp, lp), torch.zeros(1, 2))
    d = 0.3
    assert k3_kl(lp, lp + d)[0, 0].item() == pytest.approx(math.exp(d) - d - 1)


def test_unknown_aggregation():
    from taosr.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^model.init_args.loss_agg: 'bogus' is unknown"):
        policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2), loss_agg="bogus")


@pytest.mark.parametrize("agg", sorted(LOSS_AGGREGATIONS))
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_micro_batches_give_the_same_gradient(agg, beta):
    """One batch of 8 == the sum of 8 micro-batches of 1 when the whole batch's counts normalise."""
    g = torch.Generator().manual_seed(0)
    B, T, H, V = 8, 6, 4, 5
    feats = torch.randn(B, T, H, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[:, 0] = 1
    adv = torch.randn(B, generator=g)
    W0 = torch.randn(H, V, generator=g)

    def logps(W, rows):
        return torch.log_softmax(feats[rows] @ W, -1).gather(-1, targets[rows][..., None]).squeeze(-1)

    old = logps(W0, slice(None)).detach() + 0.1 * torch.randn(B, T, generator=g)
    ref = old - 0.05
    kw = dict(eps_low=0.2, eps_high=0.28, beta=beta, loss_agg=agg, num_tokens=mask.sum(), num_sequences=B,
              max_completion_length=T)

    W = W0.clone().requires_grad_(True)
    loss, _ = policy_loss(logps(W, slice(None)), old, adv, mask, ref_logps=ref, **kw)
    loss.backward()
    full = W.grad.clone()

    W = W0.clone().requires_grad_(True)
    total = 0.0
    for i in range(B):
        rows = slice(i, i + 1)
        li, _ = policy_loss(logps(W, rows), old[rows], adv[rows], mask[rows], ref_logps=ref[rows], **kw)
        li.backward()
        total += li.item()
    assert total == pytest.approx(loss.item(), abs=1e-6)
    assert torch.allclose(W.grad, full, atol=1e-6)


def test_dual_clip_bounds_negative_advantage_loss():
    """Dual clip (delta): for A < 0 a token's loss is at most delta * |A| however large the ratio."""
    lp, old = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])  # ratios e^2 ~ 7.39 and 1
    adv, mask = torch.tensor([-1.0]), torch.ones(1, 2)
    loss, _ = policy_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.28, delta=3.0)
    assert loss.item() == pytest.approx((3.0 + 1.0) / 2)
    loss, _ = policy_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert loss.item() == pytest.approx((math.exp(2.0) + 1.0) / 2)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "dr_grpo"])
def test_padding_positions_never_turn_the_loss_into_nan(agg):
    """Old / ref log-probs past a row's end may be anything (zeros past the width they were computed
    at); a very unlikely pad token there (log-prob -200: exp(200) overflows) must not reach the loss
    or its gradient, which equal those with the padding positions made harmless."""
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    lp = torch.tensor([[-0.5, -1.0, -200.0, -200.0], [-0.3, -0.2, -0.9, -1.1]], requires_grad=True)
    old = torch.tensor([[-0.6, -0.9, 0.0, 0.0], [-0.3, -0.25, -0.8, -1.0]])
    ref = old.clone()
    adv = torch.tensor([1.0, -1.0])
    loss, m = policy_loss(lp, old, adv, mask, ref_logps=ref, beta=0.04, loss_agg=agg)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all() and math.isfinite(m["kl"])
    lp2 = lp.detach().clone().masked_fill(mask == 0, 0.0).requires_grad_()
    want, _ = policy_loss(lp2, old, adv, mask, ref_logps=ref, beta=0.04, loss_agg=agg)
    want.backward()
    assert float(loss) == pytest.approx(float(want)) and torch.allclose(lp.grad, lp2.grad)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "dr_grpo"])
def test_weights_count_a_rows_copies(agg):
    """A row of weight 2 is the batch with that row twice, default normalisers included."""
    torch.manual_seed(0)
    lp, old = torch.randn(3, 4) * 0.1 - 1, torch.randn(3, 4) * 0.1 - 1
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv = torch.tensor([0.5, -1.0, 2.0])
    got, gm = policy_loss(lp, old, adv, mask, loss_agg=agg, weights=torch.tensor([2.0, 1.0, 1.0]),
                          ref_logps=old, beta=0.1)
    rows = torch.tensor([0, 0, 1, 2])
    want, wm = policy_loss(lp[rows], old[rows], adv[rows], mask[rows], loss_agg=agg, ref_logps=old[rows], beta=0.1)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert gm == pytest.approx(wm, rel=1e-6)
