"""Which budgets ``taosr quickstart --model NAME`` runs with: a YAML file per model, not code.

``configs/quickstart/<name>.yaml`` holds, for one model, a ``full`` and a ``small`` variant
(``--small``); each has ``budgets`` (data sizes, epochs and steps per stage; the keys of
:data:`BUDGET_KEYS`) and optional ``stages``: extra ``taosr fit/test`` overrides per stage, written
as ``dotted.key: value`` (a mapping value, e.g. a LoRA spec, is passed as one JSON value).
Top-level ``stages`` apply to both variants; a variant's own merge over them key by key. Stage
names: ``fit`` (every training stage), ``sft``, ``dpo``, ``grm``, ``grpo``, ``srpo``, ``test``
(test split and held-out set), ``sample`` (``taosr sample`` flags without the dashes). A top-level
``cuda`` mapping is added to every fit/test when ``torch.cuda.is_available()`` (not with ``--cpu``).

Resolution of ``--model``: a name with a file (``tiny``, ``smollm2-135m``) uses it; any other
Hugging Face id or local model folder is "pretrained" and uses :data:`PRETRAINED_DEFAULT`'s file;
``--model-budgets FILE`` replaces the file whatever the model. The embedded ``tiny`` runs with its
config's own model (no ``name_or_path`` override), so its commands are the ones it always ran.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import yaml

from taosr.errors import ConfigError

DEFAULT_MODEL = "tiny"
PRETRAINED_DEFAULT = "smollm2-135m"
BUDGET_KEYS = ("n_train", "n_test", "sft_epochs", "sample_prompts", "samples", "rl_steps", "rl_prompts",
               "grm_steps", "dpo_epochs", "rejection_band", "heldout")
OPTIONAL_BUDGET_KEYS = ("max_new_tokens", "data_dir")
FIT_STAGES = ("sft", "dpo", "grm", "grpo", "srpo")
STAGE_KEYS = ("fit", *FIT_STAGES, "test", "sample")
VARIANTS = ("full", "small")


@dataclass
class QuickstartPlan:
    model: str                      # as given to --model
    budgets_file: str
    variant: str                    # full | small
    budgets: dict
    stages: dict[str, dict] = field(default_factory=dict)
    cuda: dict = field(default_factory=dict)

    @property
    def model_args(self) -> list[str]:
        """SFT's start model: none for the embedded default (its config's own), else ``--model``."""
        return [] if self.model == DEFAULT_MODEL else ["--model.init_args.model.name_or_path", self.model]

    def stage_args(self, stage: str) -> list[str]:
        """The budgets file's overrides of one stage (``fit`` ones first for a training stage)."""
        over = {**self.stages.get("fit", {}), **self.stages.get(stage, {})} if stage in FIT_STAGES \
            else dict(self.stages.get(stage, {}))
        return cli_args(over, prefix="--")

    def device_args(self, cpu: bool = False, cuda_available: bool | None = None,
                    bf16_supported: bool | None = None) -> list[str]:
        """``--cpu``: the CPU accelerator; else the file's ``cuda`` overrides when CUDA is there
        (``bf16-mixed`` becomes ``16-mixed`` on a GPU without bfloat16: a T4, a V100)."""
        import torch

        if cpu:
            return ["--trainer.accelerator", "cpu"]
        if cuda_available is None:
            cuda_available = torch.cuda.is_available()
        if not cuda_available:
            return []
        over = dict(self.cuda)
        if over.get("trainer.precision") == "bf16-mixed":
            if bf16_supported is None:
                bf16_supported = not torch.cuda.is_available() or torch.cuda.is_bf16_supported(including_emulation=False)
            if not bf16_supported:
                over["trainer.precision"] = "16-mixed"
                print("taosr: note: this GPU has no bfloat16: the quick start trains in 16-mixed", file=sys.stderr)
        return cli_args(over, prefix="--")

    def describe(self) -> dict:
        return {"model": self.model, "budgets_file": self.budgets_file, "variant": self.variant,
                "budgets": self.budgets, "stages": self.stages, "cuda": self.cuda}


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def cli_args(mapping: dict, prefix: str = "--") -> list[str]:
    """``{a.b: 1, c: {r: 2}}`` -> ``["--a.b", "1", "--c", '{"r": 2}']``."""
    out: list[str] = []
    for k, v in mapping.items():
        out += [prefix + str(k), _value(v)]
    return out


def budgets_file_for(model: str, configs: str = "configs") -> str:
    """The budgets file of ``model`` (see the module docstring); a ConfigError naming --model otherwise."""
    folder = os.path.join(configs, "quickstart")
    own = os.path.join(folder, f"{model}.yaml")
    if "/" not in model and os.path.exists(own):
        return own
    from taosr.models.factory import looks_like_hub_id

    if os.path.isdir(model) or looks_like_hub_id(model):
        return os.path.join(folder, f"{PRETRAINED_DEFAULT}.yaml")
    if not os.path.isdir(folder):
        from taosr.configfiles import not_found

        raise ConfigError(not_found(folder, "folder of per-model budgets"))
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(".yaml"))
    raise ConfigError(f"--model: {model!r} is not a model with budgets in {folder} ({', '.join(names) or 'none'}), "
                      "an existing model folder or a Hugging Face id (owner/name)")


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def load_plan(model: str = DEFAULT_MODEL, small: bool = False, budgets_file: str | None = None,
              configs: str = "configs") -> QuickstartPlan:
    """Read and check the budgets file of ``model`` (or ``budgets_file``) for one variant."""
    path = budgets_file or budgets_file_for(model, configs)
    if not os.path.isfile(path):
        raise ConfigError(f"--model-budgets: {path!r} does not exist")
    try:
        with open(path) as fh:
            doc = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    doc = _mapping(doc, path)
    unknown = set(doc) - {"stages", "cuda", *VARIANTS}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected stages, cuda, full, small")
    variant = "small" if small else "full"
    var = _mapping(doc.get(variant), f"{path}: {variant}")
    if "budgets" not in var:
        raise ConfigError(f"{path}: {variant}.budgets is missing")
    if set(var) - {"budgets", "stages"}:
        raise ConfigError(f"{path}: {variant}: unknown key(s) {sorted(set(var) - {'budgets', 'stages'})}; expected budgets, stages")
    budgets = _mapping(var["budgets"], f"{path}: {variant}.budgets")
    missing = [k for k in BUDGET_KEYS if k not in budgets]
    extra = sorted(set(budgets) - set(BUDGET_KEYS) - set(OPTIONAL_BUDGET_KEYS))
    if missing or extra:
        raise ConfigError(f"{path}: {variant}.budgets: " + "; ".join(
            ([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])))
    band = budgets["rejection_band"]
    if not (isinstance(band, (list, tuple)) and len(band) == 2):
        raise ConfigError(f"{path}: {variant}.budgets.rejection_band: expected [low, high], got {band!r}")
    budgets = {**budgets, "rejection_band": tuple(band)}
    stages: dict[str, dict] = {}
    for src, where in ((doc.get("stages"), "stages"), (var.get("stages"), f"{variant}.stages")):
        src = _mapping(src, f"{path}: {where}")
        bad = sorted(set(src) - set(STAGE_KEYS))
        if bad:
            raise ConfigError(f"{path}: {where}: unknown stage(s) {bad}; expected {', '.join(STAGE_KEYS)}")
        for stage, over in src.items():
            stages[stage] = {**stages.get(stage, {}), **_mapping(over, f"{path}: {where}.{stage}")}
    return QuickstartPlan(model=model, budgets_file=path, variant=variant, budgets=budgets, stages=stages,
                          cuda=_mapping(doc.get("cuda"), f"{path}: cuda"))
