"""The reference policy of DPO and GRPO/SRPO: which kind a run gets and how its log-probs are run.

Three kinds (:func:`reference_kind`):

- ``adapter_disabled``: the policy with its LoRA adapter disabled. Right when the adapter was added
  fresh on the start model (:func:`~taosr.models.factory.starts_at_base`): no extra memory.
- ``adapter``: the policy is a previous stage's adapter-only export (``merge_lora_on_export: false``),
  trained on as it is; without its adapter it is the model before that stage. Its adapter is loaded a
  second time under :data:`REFERENCE_ADAPTER`, frozen, on the same base weights, and made the active
  adapter for the reference's forward passes only (as TRL's ``ref_adapter_name``): the memory of one
  adapter instead of a second copy of the base model.
- ``copy``: a frozen deep copy of the policy (a model without LoRA, or GRPO's ``reference: copy``).

peft's ``set_adapter`` also moves ``requires_grad`` (the adapter it activates becomes trainable unless
``inference_mode``, every other one frozen) and ``load_adapter(is_trainable=False)`` puts the whole
model in eval mode: :func:`add_reference_adapter` and :func:`reference_model` put back every
parameter's ``requires_grad`` and every module's train/eval mode as they found them, so the
optimizer only ever sees the policy's adapter and a training forward stays a training forward.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch

from taosr.errors import ConfigError
from taosr.models.factory import REFERENCE_ADAPTER, disable_dropout  # (REFERENCE_ADAPTER: never exported)

KINDS = ("adapter_disabled", "adapter", "copy")
CHOICES = ("auto", "adapter_disabled", "copy")  # the user's option (model.init_args.reference)


def check_choice(choice: str, key: str = "model.init_args.reference") -> None:
    """Refuse an unknown ``reference`` option in one line (at construction: before any work)."""
    if choice not in CHOICES:
        raise ConfigError(f"{key}: {choice!r} is unknown; expected one of {', '.join(CHOICES)}")


def loaded_adapter(model) -> str | None:
    """The adapter-only export ``model`` was loaded from (:func:`~taosr.models.factory.load_model_and_tokenizer`), else None."""
    return getattr(model, "_taosr_loaded_adapter", None)


def reference_kind(model, choice: str = "auto", key: str = "model.init_args.reference") -> str:
    """The kind of reference ``model``'s run gets for the user's ``choice`` (auto, adapter_disabled, copy).

    ``auto``: the adapter disabled for a fresh adapter, the second adapter for a loaded adapter-only
    export, else a copy. ``adapter_disabled`` on a loaded export is taken as asked (the model before
    that export's stage); without any adapter it is refused in one line."""
    has_adapter = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
    if choice == "copy":
        return "copy"
    if choice == "adapter_disabled":
        if not has_adapter:
            raise ConfigError(f"{key}: adapter_disabled needs a LoRA policy (model.lora), and this one has "
                              "no adapter (reference: auto or copy keeps a frozen copy)")
        return "adapter_disabled"
    check_choice(choice, key)
    if not has_adapter:
        return "copy"
    return "adapter" if loaded_adapter(model) is not None else "adapter_disabled"


def build_reference(model, choice: str = "auto", key: str = "model.init_args.reference",
                    no_dropout: bool = True) -> tuple[str, torch.nn.Module | None]:
    """Set up ``model``'s reference for ``choice``: ``(kind, frozen copy or None)``. For ``adapter`` the
    second adapter is loaded into ``model`` (with ``no_dropout`` its LoRA dropout is zeroed as the
    policy's was: policy and reference log-probs of the same weights agree at step 0)."""
    kind = reference_kind(model, choice, key)
    if kind == "adapter":
        add_reference_adapter(model)
        if no_dropout:
            disable_dropout(model)
    return kind, frozen_copy(model) if kind == "copy" else None


def frozen_copy(model) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter frozen."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@contextlib.contextmanager
def _kept_state(model) -> Iterator[None]:
    """Put back every parameter's ``requires_grad`` and every module's ``training`` flag on exit."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for p, g in grads:
            p.requires_grad_(g)
        for m, t in modes:
            m.training = t


def add_reference_adapter(model, path: str | None = None, name: str = REFERENCE_ADAPTER) -> str:
    """Load ``model``'s adapter-only export (``path``; default: the one it was loaded from) a second
    time under ``name``, frozen and inactive; the policy's adapter stays active and trainable.
    Idempotent: a second call (setup runs again for test after fit) loads nothing."""
    if name in getattr(model, "peft_config", {}):
        return name
    path = path or loaded_adapter(model)
    if path is None or not hasattr(model, "load_adapter"):
        raise ConfigError("model.name_or_path: a reference adapter needs an adapter-only export "
                          "(merge_lora_on_export: false) to load again")
    active = model.active_adapter
    before = {id(m) for m in model.modules()}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # load_adapter(is_trainable=False) puts the whole model in eval mode, and peft draws an initial
    # adapter (then overwritten) from the global generator: the run's random stream (its rollouts)
    # must be the one a frozen copy left
    with _kept_state(model), torch.random.fork_rng(devices=devices):
        try:
            model.load_adapter(path, adapter_name=name, is_trainable=False)
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"model.name_or_path: cannot load {path!r} again as the reference adapter: {first}") from None
    for m in model.modules():  # the new adapter's modules follow the model's mode (Lightning warns of eval ones)
        if id(m) not in before:
            m.training = model.training
    if model.active_adapter != active:
        model.set_adapter(active)
    for n, p in model.named_parameters():  # frozen whatever the peft version did
        if f".{name}." in n:
            p.requires_grad_(False)
    return name


@contextlib.contextmanager
def reference_adapter_active(model, name: str = REFERENCE_ADAPTER) -> Iterator[torch.nn.Module]:
    """``model`` with the frozen reference adapter active and in eval mode (as a frozen copy was);
    on exit, even on an exception, the policy's adapter is active again and every ``requires_grad``
    and train/eval flag is what it was."""
    active = model.active_adapter
    with _kept_state(model):
        try:
            model.set_adapter(name, inference_mode=True)
            model.eval()
            yield model
        finally:
            model.set_adapter(active)  # (then _kept_state puts the flags back exactly)


@contextlib.contextmanager
def reference_model(model, kind: str | None, ref_copy: torch.nn.Module | None = None) -> Iterator[torch.nn.Module]:
    """The module to run for reference log-probs of ``kind`` (use under ``torch.no_grad()``); None
    (a module whose fit setup did not choose one) is the copy when there is one, else the disabled adapter."""
    if kind is None:
        kind = "copy" if ref_copy is not None else "adapter_disabled"
    if kind == "copy":
        if ref_copy is None:
            raise RuntimeError("reference: copy without a copy (setup did not run)")
        yield ref_copy
    elif kind == "adapter":
        with reference_adapter_active(model) as m:
            yield m
    elif kind == "adapter_disabled":
        with model.disable_adapter():
            yield model
    else:
        raise ValueError(f"unknown reference kind {kind!r}; expected one of {', '.join(KINDS)}")
