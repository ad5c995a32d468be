"""Advantages (pure): GRPO's group-normalised outcome advantage and a registry of step-level
estimators for SRPO (:data:`STEP_ADVANTAGES`). Rows are grouped contiguously: N = prompts x G.

Step-level estimators return per-token advantages (N, T) from:
``outcome_rewards`` (N,), ``step_rewards`` (N, K) in [0, 1] (missing steps already 0),
``correct`` (N,) bool, ``token_step`` (N, T) long (0..K-1 = step of the token, K = after the last
step e.g. the label line, -1 = padding), ``group_size``, ``scale_std`` (the module's: the outcome
advantage is GRPO's, divided by the group std or not), optionally ``step_present`` (N, K) bool
(steps the completion contains; all when omitted) and ``step_verdict`` (N, K) float: the examiner's
hard verdicts, 1 right / 0 wrong / NaN no verdict (``step_rewards >= 0.5`` when omitted).

Each estimator declares the options it takes (``lam``, ``clamp``, ...); :class:`StepAdvantageSpec`
passes only the options a config sets, and the registry refuses one the estimator does not take.
No estimator ever changes the outcome advantage: with ``lam = 0`` (or ``outcome_weight = 1`` and
flat step rewards) SRPO's advantages are GRPO's exactly, clamp or not.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from taosr.registry import Registry


def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) / (group std + eps), std unbiased as TRL; without ``scale_std`` (Dr. GRPO)
    only the mean is removed."""
    g = rewards.float().view(-1, group_size)
    adv = g - g.mean(1, keepdim=True)
    if scale_std:
        std = g.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
        adv = adv / (std + eps)
    return adv.view(-1)


def zero_spread_mask(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """True for every completion whose group's rewards all equal (no learning signal)."""
    g = rewards.view(-1, group_size)
    flat = (g.max(1).values - g.min(1).values) <= 1e-8
    return flat.repeat_interleave(group_size)


def frac_zero_std(rewards: torch.Tensor, group_size: int) -> float:
    return float(zero_spread_mask(rewards, group_size).view(-1, group_size)[:, 0].float().mean())


def critical_step_mask(step_verdict: torch.Tensor, correct: torch.Tensor,
                       centred: torch.Tensor | None = None) -> torch.Tensor:
    """Critical steps: a step judged right inside a wrong answer, or one judged wrong inside a right
    answer. ``step_verdict`` holds hard verdicts (1 right, 0 wrong, NaN none: never critical).

    With ``centred`` (the step's reward minus its group mean at that step) a step is critical only
    when its centred score has the sign its verdict implies (right: above the group mean, so the
    extra weight amplifies a bonus; wrong: below it, amplifying a penalty). A step judged right
    (e.g. GRM 0.6) but below its group's mean inside a wrong answer is therefore not critical: its
    weight must not double the penalty it gets."""
    right, wrong = step_verdict == 1, step_verdict == 0
    c = correct.bool().unsqueeze(1)
    crit = (right & ~c) | (wrong & c)
    if centred is not None:
        crit = crit & torch.where(right, centred > 0, centred < 0)
    return crit


def _broadcast(per_seq_or_step: torch.Tensor, token_step: torch.Tensor, K: int) -> torch.Tensor:
    """Map (N, K+1) values (index K = after the last step) onto tokens; 0 at padding."""
    idx = token_step.clamp(min=0, max=K)
    out = per_seq_or_step.gather(1, idx)
    return out.masked_fill(token_step < 0, 0.0)


def _clamp_around(table: torch.Tensor, outcome: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """Clamp ``table`` (N, K+1) to +-``clamp``, widened per row to include ``outcome`` (N,): the
    clamp bounds what the step term adds and never cuts the outcome advantage itself (GRPO does not
    clamp, so a lone outlier's |A_out| = (G-1)/sqrt(G) > clamp survives)."""
    if clamp is None:
        return table
    o = outcome.unsqueeze(1)
    return torch.maximum(torch.minimum(table, o.clamp(min=clamp)), o.clamp(max=-clamp))


@dataclass
class StepAdvantageSpec:
    """Which step-level estimator SRPO uses (``name``) and the options a config sets; an option left
    unset (null) takes the estimator's default, and one the estimator does not take is refused
    (``model.init_args.step_advantage.<option>``). The outcome advantage's std scaling is the
    module's ``scale_std`` (one source for GRPO and SRPO)."""
    name: str = "outcome_plus_step"
    lam: float | None = None              # outcome_plus_step (default 0.5)
    critical_weight: float | None = None  # outcome_plus_step (default 2.0)
    clamp: float | None = None            # outcome_plus_step, process_sum (default 2.0; .inf: no clamp)
    outcome_weight: float | None = None   # process_sum (default 1.0)
    step_scale_std: bool | None = None    # outcome_plus_step (default false)

    KEY = "model.init_args.step_advantage"

    def options(self) -> dict:
        """The options set (not None)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name" and getattr(self, f.name) is not None}

    def check(self) -> Callable[..., torch.Tensor]:
        """Validate the name and the options once (ConfigError naming the key); return the estimator."""
        return STEP_ADVANTAGES.check(self.name, self.options(), key=f"{self.KEY}.name", option_key=self.KEY)


STEP_ADVANTAGES: Registry[Callable[..., torch.Tensor]] = Registry("step advantage estimator",
                                                                  "model.init_args.step_advantage.name")


def compute_step_advantages(name: str, **kwargs) -> torch.Tensor:
    """Call the estimator ``name`` (inputs and options as keywords; no validation of the options:
    :meth:`StepAdvantageSpec.check` does that once, at construction)."""
    return STEP_ADVANTAGES.get(name)(**kwargs)


@STEP_ADVANTAGES.register("outcome", options=())
def outcome_advantage(*, outcome_rewards, step_rewards, correct, token_step, group_size, scale_std: bool = True,
                      eps: float = 1e-4, step_present=None, step_verdict=None) -> torch.Tensor:
    """GRPO's sequence advantage on every token (SRPO with this estimator is GRPO)."""
    a = group_advantages(outcome_rewards, group_size, scale_std, eps)
    K = step_rewards.shape[1]
    return _broadcast(a.unsqueeze(1).expand(-1, K + 1).contiguous(), token_step, K)


def step_centred(step_rewards: torch.Tensor, group_size: int, step_present: torch.Tensor | None = None,
                 scale_std: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """(N, K) s_hat: each step's reward minus the mean of the group's completions that have that
    step (divided by their std with ``scale_std``); 0 where fewer than two of them differ, and 0 for
    a missing step (its reward 0 would otherwise pull the mean down and give the completions that
    wrote the step a bonus for writing it: rewards 1, 1, 0 and a missing one are +1/3, +1/3, -2/3)."""
    N, K = step_rewards.shape
    s = step_rewards.float().view(-1, group_size, K)
    here = torch.ones_like(s, dtype=torch.bool) if step_present is None else step_present.bool().view(-1, group_size, K)
    cnt = here.sum(1, keepdim=True).float()
    centred = (s - (s * here).sum(1, keepdim=True) / cnt.clamp(min=1.0)) * here
    inf = torch.tensor(float("inf"), device=s.device)
    spread = (torch.where(here, s, -inf).max(1, keepdim=True).values
              - torch.where(here, s, inf).min(1, keepdim=True).values) > 1e-8  # false below two present
    if scale_std and group_size > 1:  # (torch.std's own rounding where every step is present)
        std = s.std(1, keepdim=True) if bool(here.all()) else \
            ((centred ** 2).sum(1, keepdim=True) / (cnt - 1).clamp(min=1.0)).sqrt()
        centred = centred / (std + eps)
    return torch.where(spread, centred, torch.zeros_like(centred)).view(N, K)


@STEP_ADVANTAGES.register("outcome_plus_step", options=("lam", "critical_weight", "clamp", "step_scale_std"))
def outcome_plus_step(*, outcome_rewards, step_rewards, correct, token_step, group_size, lam: float = 0.5,
                      critical_weight: float = 2.0, clamp: float | None = 2.0, scale_std: bool = True,
                      step_scale_std: bool = False, eps: float = 1e-4, step_present=None,
                      step_verdict=None) -> torch.Tensor:
    """A(i,k) = A_out(i) + lam * w(i,k) * s_hat(i,k); s_hat = step k's reward minus its group mean
    at the same step over the completions that wrote it (:func:`step_centred`; 0 where those rewards
    do not vary, and for a missing step), divided by the group std only
    with ``step_scale_std`` (off by default: soft GRM scores that differ by a few hundredths would
    otherwise become full-size advantages); w = critical_weight on critical steps
    (:func:`critical_step_mask` on the hard verdicts and s_hat), else 1. Tokens after the last step
    get A_out. ``clamp`` bounds the table to +-clamp but never cuts A_out (see :func:`_clamp_around`),
    so lam = 0 gives GRPO's advantages exactly."""
    N, K = step_rewards.shape
    a_out = group_advantages(outcome_rewards, group_size, scale_std, eps)
    s_hat = step_centred(step_rewards, group_size, step_present, step_scale_std, eps)
    verdict = step_verdict if step_verdict is not None else (step_rewards >= 0.5).float()
    crit = critical_step_mask(verdict, correct, s_hat)
    w = torch.where(crit, torch.full_like(s_hat, critical_weight), torch.ones_like(s_hat))
    per_step = a_out.unsqueeze(1) + lam * w * s_hat
    table = torch.cat([per_step, a_out.unsqueeze(1)], 1)
    return _broadcast(_clamp_around(table, a_out, clamp), token_step, K)


@STEP_ADVANTAGES.register("process_sum", options=("outcome_weight", "clamp"))
def process_sum(*, outcome_rewards, step_rewards, correct, token_step, group_size, outcome_weight: float = 1.0,
                clamp: float | None = 2.0, eps: float = 1e-4, scale_std: bool = True,
                step_present: torch.Tensor | None = None, step_verdict=None) -> torch.Tensor:
    """DeepSeekMath process supervision: normalise the rewards of all steps present in a group
    together (missing steps of malformed output take no part and contribute 0); a token's
    advantage is the sum of the normalised rewards of its step and of every step that comes after
    it *in the completion's own order* (the order of ``token_step``, which may differ from the
    canonical one in malformed output), plus ``outcome_weight`` x A_out (process rewards alone get
    hacked); a token in no step (an unreadable line between steps, the label line) sums the steps
    that start after it. ``clamp`` as in :func:`outcome_plus_step` (never cuts the outcome term)."""
    N, K = step_rewards.shape
    a_out = group_advantages(outcome_rewards, group_size, scale_std, eps)
    present = torch.ones_like(step_rewards, dtype=torch.bool) if step_present is None else step_present.bool()
    s = step_rewards.float().view(-1, group_size * K)
    pm = present.view(-1, group_size * K).float()
    cnt = pm.sum(1, keepdim=True)
    mean = (s * pm).sum(1, keepdim=True) / cnt.clamp(min=1.0)
    norm = (s - mean) * pm
    if scale_std:
        std = ((norm ** 2).sum(1, keepdim=True) / (cnt - 1).clamp(min=1.0)).sqrt()  # unbiased, as torch.std
        norm = norm / (std + eps)
    norm = norm.view(N, K)
    # rank of each step in the completion: the position of its first token (steps without tokens:
    # after every step that has some, in canonical order, so the canonical case is unchanged)
    T = token_step.shape[1]
    pos = torch.arange(T, device=token_step.device).expand(N, T)
    pos = torch.where(token_step >= 0, pos, torch.full_like(pos, T))  # padding places no step
    first = torch.full((N, K + 1), T, dtype=torch.long, device=token_step.device)
    first = first.scatter_reduce(1, token_step.clamp(min=0, max=K), pos, reduce="amin", include_self=True)[:, :K]
    key = first * (K + 1) + torch.arange(K, device=token_step.device)
    later = key.unsqueeze(1) >= key.unsqueeze(2)  # later[i, k, j]: step j comes at or after step k
    suffix = (later.to(norm.dtype) * norm.unsqueeze(1)).sum(-1)
    out_term = outcome_weight * a_out.unsqueeze(1)
    table = torch.cat([suffix, torch.zeros(N, 1, dtype=suffix.dtype, device=suffix.device)], 1) + out_term
    per_token = _broadcast(_clamp_around(table, outcome_weight * a_out, clamp), token_step, K)
    # a token in no step (an unreadable line, the label line) sums the steps that start after it
    # (none after the last step: the label line keeps the outcome term alone)
    t = torch.arange(T, device=token_step.device).view(1, T, 1)
    after = ((first.unsqueeze(1) > t) & (first.unsqueeze(1) < T)).to(norm.dtype)  # (N, T, K)
    outside = _clamp_around((after * norm.unsqueeze(1)).sum(-1) + out_term, outcome_weight * a_out, clamp)
    return torch.where(token_step == K, outside, per_token)
