"""Allow taosr's config dataclasses in checkpoints loaded with ``torch.load(weights_only=True)``
(the default since PyTorch 2.6): hyperparameters saved by ``save_hyperparameters`` include them."""
from __future__ import annotations

import torch


def register_safe_globals() -> None:
    from taosr.data.datamodule import ReaderOptions
    from taosr.data.hooks import Curriculum, CurriculumStage, DiverseSampling, RejectionSampling
    from taosr.data.synth import SynthConfig
    from taosr.eval.generation import GenerationSpec
    from taosr.models.factory import LoraSpec, ModelSpec
    from taosr.rl.advantages import StepAdvantageSpec
    from taosr.rl.examiner import ExaminerSpec
    from taosr.rl.rewards import OutcomeRewardSpec

    torch.serialization.add_safe_globals([
        ModelSpec, LoraSpec, GenerationSpec, SynthConfig, ReaderOptions, Curriculum, CurriculumStage,
        DiverseSampling, RejectionSampling, ExaminerSpec, OutcomeRewardSpec, StepAdvantageSpec])
