"""The DataModule's training views, one registry entry each (``data.view``).

A view turns the DataModule's training pool into (rows, collate function):

- ``sft``: prompt -> the target's gold completion (``data.target``: reasoning + label, or the label
  line alone; prompt tokens masked out of the loss);
- ``dpo``: prompt, chosen, rejected (pairs built from ``taosr sample`` output, :mod:`taosr.data.pairs`);
- ``rl``: (index, example) prompts with label and step annotations (rollouts come from the
  RolloutCallback; ``dm.train_rows_cache`` holds the examples the indices point into);
- ``grm``: GRM training text (:mod:`taosr.data.grm`).
"""
from __future__ import annotations

from typing import Callable

from taosr.registry import Registry

VIEWS: Registry = Registry("data view", "data.view")

# The training-pool hooks each view reads (dpo trains on the pairs of its samples file, grm on its own
# rows): an enabled hook a view does not read would do nothing, silently.
HOOKS_READ = {"sft": ("rejection_sampling", "diverse_sampling", "curriculum"),
              "rl": ("rejection_sampling", "diverse_sampling", "curriculum"), "dpo": (), "grm": ()}
# Options one view reads (changed from their default in another view, they would do nothing)
VIEW_OPTIONS = {"pairs_per_prompt": "dpo", "gold_as_chosen": "dpo", "grm_corrupt_prob": "grm", "grm_corrupt_evidence": "grm",
                "grm_samples": "grm"}


def check_view_options(dm, callbacks=None) -> None:
    """Refuse, when training starts, what the view would silently not read: another view's option
    changed from its default, an enabled data hook the view does not apply, and a curriculum of
    several stages that no callback advances (``callbacks``: the trainer's; None outside a trainer)."""
    import inspect

    from taosr.errors import ConfigError

    defaults = {k: p.default for k, p in inspect.signature(type(dm).__init__).parameters.items()}
    for name, view in VIEW_OPTIONS.items():
        value, default = getattr(dm, name, None), defaults.get(name)
        if name == "grm_samples":
            from taosr.data.grm import GRMSamples

            default = GRMSamples()
        if view != dm.view and value != default:
            raise ConfigError(f"data.{name}: an option of the {view!r} view, and this run trains on the {dm.view!r} "
                              "view (remove it)")

    for name in ("rejection_sampling", "diverse_sampling", "curriculum"):
        hook = getattr(dm, name, None)
        if hook is None or not hook.enabled:
            continue
        if name not in HOOKS_READ.get(dm.view, (name,)):
            raise ConfigError(f"data.{name}: the {dm.view!r} view does not read it (it filters the sft and rl views' "
                              f"training prompts); remove it or set data.{name}.enabled: false")
        if name == "curriculum":
            # (one stage is a fixed filter: nothing to advance); a callback that advances the stages
            # says so (CurriculumCallback.advances_curriculum: this layer imports no callback)
            if len(hook.stages) > 1 and callbacks is not None and not any(getattr(c, "advances_curriculum", False)
                                                                          for c in callbacks):
                raise ConfigError("data.curriculum: no taosr.callbacks.curriculum.CurriculumCallback in "
                                  "trainer.callbacks advances its stages (configs/_base/rl.yaml lists it)")


@VIEWS.register("sft")
def sft_view(dm) -> tuple[list, Callable]:
    rows = dm.train_rows()
    if dm.heldout_regime():
        # Only the annotated share of the training queries teaches the reasoning; the rest are RL prompts.
        kept = [ex for ex in rows if ex.steps]
        print(f"taosr: data.synth.annotation_regime=heldout: SFT trains on the {len(kept)} annotated of "
              f"{len(rows)} training examples (the unannotated ones serve only as RL prompts)")
        rows = kept
    missing = [ex for ex in rows if dm.target_spec.gold(ex) is None]
    if missing:  # before the first step, with the count (the collate found one example at its batch)
        from taosr.errors import ConfigError

        first = missing[0].id or repr(missing[0].query)
        raise ConfigError(f"data.train ({dm.paths.get('train')}): {len(missing)} of {len(rows)} examples have no gold "
                          f"reasoning steps (first: {first}); SFT with data.target: {dm.target} needs them (supply a "
                          "CoT file, add reasoning with `taosr reason`, or train on the labels alone with data.target: label)")
    return rows, dm.collate_sft


@VIEWS.register("dpo")
def dpo_view(dm) -> tuple[list, Callable]:
    from taosr.data.pairs import build_pairs, collate_dpo

    return build_pairs(dm), lambda b: collate_dpo(dm, b)


@VIEWS.register("rl")
def rl_view(dm) -> tuple[list, Callable]:
    dm.train_rows_cache = list(dm.train_rows())
    return list(enumerate(dm.train_rows_cache)), dm.collate_prompts


@VIEWS.register("grm")
def grm_view(dm) -> tuple[list, Callable]:
    from taosr.data.grm import build_grm_rows, collate_grm

    return (build_grm_rows(dm, corrupt_prob=dm.grm_corrupt_prob, evidence_prob=dm.grm_corrupt_evidence),
            lambda b: collate_grm(dm, b))
