"""The typed record of one RL step: :class:`Rollout`.

One rollout batch (prompts x G completions) is filled in a fixed order, each part by one owner:

1. :class:`~taosr.callbacks.rollout.RolloutCallback` (``on_train_batch_start``) samples with its
   engine and builds the Rollout: prompt and completion tensors, masks, ``texts``,
   ``example_index``, ``clipped``, the :class:`~taosr.eval.generation.GenerationSpec` it sampled
   with (``spec``: the loss reads the temperature and the completion budget from it) and
   whether the completions come from the trainer's current weights (``on_policy``), and the
   engine's own log-prob of each sampled token where it reports them (``sampler_logps``: vLLM);
   ``timings["rollout"]``, ``perf_tokens_per_s``.
2. :class:`~taosr.callbacks.reward.RewardModelCallback` (next callback) parses the texts
   (``parsed``), looks up the ``examples``, sets the outcome rewards (``reward``, ``correct``,
   ``format``), then, when the module has a step scorer (SRPO), the step scores (``steps``:
   :class:`StepScores`); ``timings["reward"]``.
3. The module's ``training_step`` fills ``old_logps`` / ``ref_logps`` (when its objective needs
   them; ``timings["old_logps"]``) and, with ``sampler_logps``, the importance-sampling weights of
   the sampler's mismatch (``is_weights``), computes advantages and updates the policy.

Every tensor lives on the device of ``completion_ids``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from taosr.eval.generation import GenerationSpec


@dataclass
class StepScores:
    """Step-level examination of every completion (K = number of reasoning steps)."""
    rewards: torch.Tensor      # (N, K) in [0, 1]; 0 for missing steps
    source: torch.Tensor       # (N, K) long, taosr.rl.examiner.SOURCE_* codes
    present: torch.Tensor      # (N, K) bool: the completion contains the step
    verdict: torch.Tensor      # (N, K) float hard verdicts: 1 right, 0 wrong, NaN none
    token_step: torch.Tensor   # (N, T) long: step of each completion token (K after the last step, -1 padding)
    stats: dict[str, float] = field(default_factory=dict)  # logged as train/steps/... (means over examined rows)
    examined: torch.Tensor | None = None  # (N,) bool: rows examined in full (GRM, token map); None: all


@dataclass
class Rollout:
    # 1. the rollout callback
    spec: GenerationSpec           # what was sampled with (num_return_sequences = group size)
    prompt_ids: torch.Tensor       # (N, P) left padded, each prompt repeated G times
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor   # (N, T) right padded with pad_token_id
    completion_mask: torch.Tensor  # (N, T) long
    texts: list[str]
    example_index: torch.Tensor    # (N,) index into the DataModule's training rows
    clipped: torch.Tensor          # (N,) bool: no eos within the budget
    on_policy: bool = True         # sampled from the trainer's current weights (HF engine)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: rollout, reward, old_logps
    perf_tokens_per_s: float | None = None
    sampler_logps: torch.Tensor | None = None  # (N, T) the engine's log-prob of each token (NaN unknown, 0 padding)
    # 2. the reward callback
    parsed: list[Any] | None = None        # taosr.reasoning.format.ParsedReasoning per completion
    examples: list[Any] | None = None      # taosr.schema.Example per completion
    reward: torch.Tensor | None = None     # (N,) outcome reward
    correct: torch.Tensor | None = None    # (N,) float 1/0
    format: torch.Tensor | None = None     # (N,) float 1/0
    steps: StepScores | None = None
    # 3. the module
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None  # (N, T) taosr.rl.sampler_correction weights of the policy term

    @property
    def group_size(self) -> int:
        return int(self.spec.num_return_sequences)

    @property
    def temperature(self) -> float:
        """The temperature the tokens were drawn at (1 for greedy): the update scores them under it."""
        return float(self.spec.temperature) if self.spec.do_sample and self.spec.temperature else 1.0

    @property
    def max_new_tokens(self) -> int:
        """The completion budget (Dr. GRPO's constant divisor)."""
        return int(self.spec.max_new_tokens)

    @property
    def device(self) -> torch.device:
        return self.completion_ids.device

    def __len__(self) -> int:
        return int(self.completion_ids.shape[0])
