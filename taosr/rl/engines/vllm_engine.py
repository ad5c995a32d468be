"""vLLM engine colocated with training on the same GPU (optional extra ``taosr[vllm]``).

Before each rollout the trainer's weights are pushed into the engine (LoRA merged into base
names, computed as new tensors so the trainer's weights are never changed, or adapter-only as a
vLLM LoRA request); with ``sleep_level`` > 0 the engine sleeps
between rollouts so training gets the memory back. vLLM is imported only when this engine is
built; without it installed, asking for it raises a one-line ConfigError. Rollouts (:meth:`VLLMEngine.sample`)
ask vLLM for the log-prob of each sampled token after its temperature / top-k / top-p
(``logprobs_mode="processed_logprobs"``), for the importance-sampling correction of its mismatch
with the trainer's forward (:mod:`taosr.rl.sampler_correction`). vLLM reads an empty generation
config instead of the model's (:func:`plain_generation_config`), so a row stops where the HF
engine's would: at the tokenizer's eos or its budget.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from typing import Iterable, Iterator

import torch

from taosr.errors import ConfigError
from taosr.eval.generation import GenerationSpec


def vllm_weight_items(named_tensors: Iterable[tuple[str, torch.Tensor]], *, peft: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Map trainer parameter names to the base model's names that vLLM's ``load_weights`` expects.

    For a peft model whose LoRA was merged in place: strip ``base_model.model.`` and
    ``.base_layer``, drop the ``lora_*`` tensors and any ``modules_to_save`` originals.
    """
    for name, t in named_tensors:
        if peft:
            if "lora_" in name or ".original_module." in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            name = name.replace(".modules_to_save.default.", ".")
        yield name, t


def merged_lora_state(model) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.state_dict()`` with each LoRA layer's base weight replaced by a new tensor holding it
    plus its active adapters' update (``get_delta_weight``; added in float32, cast back): what
    ``merge_adapter()`` would leave there, without changing the model. Merging and unmerging in
    place (as this engine did) added and subtracted the update in the weights' dtype: in bf16 each
    sync rounded the frozen base weights, so the policy and the adapter-disabled reference drifted
    from the start (a relative 4e-3 after 100 syncs of a moderate update)."""
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        lora = set(module.lora_A) | set(getattr(module, "lora_embedding_A", {}))
        for adapter in module.active_adapters:
            if adapter in lora and adapter not in module.merged_adapters:
                d = module.get_delta_weight(adapter).float()
                key = f"{name}.base_layer.weight"
                deltas[key] = deltas[key] + d if key in deltas else d
    for name, t in model.state_dict().items():
        if name in deltas:
            t = (t.float() + deltas[name].to(t.device)).to(t.dtype)
        yield name, t


def _chunks(items: Iterable[tuple[str, torch.Tensor]], max_bytes: int = 1 << 29) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``items`` in lists of at most ``max_bytes`` (one tensor more when a single one is larger), so the
    merged copies of one list are freed before the next is made (vLLM loads weights by name, in any
    groups: TRL's colocated sync loads one tensor at a time)."""
    chunk, size = [], 0
    for name, t in items:
        chunk.append((name, t))
        size += t.numel() * t.element_size()
        if size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class AdapterVersions:
    """The policy's LoRA adapter for vLLM, one folder per weight sync (vLLM caches a LoRA request by
    its id, so each version gets a new id and folder) under one temporary root; the previous
    version's folder is removed when the next is written (a run wrote ~20 MB a step for SmolLM2 r16
    and kept them all), and the root when the process exits."""

    def __init__(self):
        self.root: str | None = None
        self.version, self.path = 0, None

    def save(self, model) -> str:
        if self.root is None:
            self.root = tempfile.mkdtemp(prefix=f"taosr_vllm_adapter_{os.getpid()}_")
            atexit.register(shutil.rmtree, self.root, True)
        previous = self.path
        self.version += 1
        self.path = os.path.join(self.root, f"v{self.version}")
        from taosr.models.factory import policy_adapters

        model.save_pretrained(self.path, selected_adapters=policy_adapters(model))  # not the reference adapter
        if previous:
            shutil.rmtree(previous, ignore_errors=True)
        return self.path


def completions_from_outputs(outs, pad_token_id: int, logprobs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """vLLM ``RequestOutput`` s (each with ``.outputs``: one ``CompletionOutput`` per sample, holding
    ``token_ids`` and, when asked, ``logprobs``: one ``{token_id: Logprob}`` per position) -> ids
    (N, L) right padded with ``pad_token_id``, the samples of a prompt contiguous, and with
    ``logprobs`` the (N, L) log-prob of each sampled token (0 past a row's end; NaN where vLLM gave
    none or a NaN), else None."""
    seqs = [c for o in outs for c in o.outputs]
    L = max(1, max((len(c.token_ids) for c in seqs), default=0))
    ids = torch.full((len(seqs), L), pad_token_id, dtype=torch.long)
    lps = torch.zeros(len(seqs), L) if logprobs else None
    for i, c in enumerate(seqs):
        toks = list(c.token_ids)
        ids[i, :len(toks)] = torch.tensor(toks, dtype=torch.long)
        if lps is None:
            continue
        per_pos = c.logprobs if c.logprobs is not None else [None] * len(toks)
        row = [float("nan")] * len(toks)
        for t, (tok, at) in enumerate(zip(toks, per_pos)):
            entry = at.get(tok) if at is not None else None
            if entry is not None and entry.logprob is not None:
                row[t] = float(entry.logprob)
        lps[i, :len(toks)] = torch.tensor(row, dtype=torch.float32)
    return ids, lps


def plain_generation_config() -> str:
    """A folder holding an empty ``generation_config.json``, for vLLM's ``generation_config``. vLLM adds
    every ``eos_token_id`` of the model's generation config to a request's stop tokens ("auto" and
    "vllm" both read the model's file); taosr's samplers and the update stop a completion at the
    tokenizer's eos only, so from that file vLLM cut rows at Qwen's ``<|endoftext|>`` (also its pad
    token), which then read as clipped. With this folder vLLM stops at its tokenizer's eos (and
    ``max_tokens``) only. Removed when the process exits."""
    folder = tempfile.mkdtemp(prefix=f"taosr_vllm_generation_{os.getpid()}_")
    atexit.register(shutil.rmtree, folder, True)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        f.write("{}\n")
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMEngine:
    def __init__(self, model_path: str | None = None, gpu_memory_utilization: float = 0.3,
                 max_model_len: int = 1024, sleep_level: int = 1, lora_sync: str = "merge",
                 max_num_seqs: int = 256, tensor_parallel_size: int = 1, dtype: str = "bfloat16"):
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ConfigError("rollout engine 'vllm' needs vLLM: pip install 'taosr[vllm]' on a CUDA machine") from None
        if lora_sync not in ("merge", "adapter"):
            raise ConfigError(f"vllm.lora_sync must be 'merge' or 'adapter', got {lora_sync!r}")
        self.model_path = model_path
        self.kw = dict(gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       max_num_seqs=max_num_seqs, tensor_parallel_size=tensor_parallel_size, dtype=dtype)
        self.sleep_level, self.lora_sync = sleep_level, lora_sync
        self.llm = None
        self.adapters = AdapterVersions()
        self.ragged = True  # rows padded to the longest (a row stops at the tokenizer's eos or max_tokens)

    def _build(self, model) -> None:
        from vllm import LLM

        # a single process outside torch.distributed: vLLM's external launcher needs these; a free
        # port, so that two such runs on one machine (compare --jobs) do not both bind one
        for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(k, v)
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(_free_port())
        path = self.model_path or getattr(model, "name_or_path", None) or model.config._name_or_path
        self.llm = LLM(model=path, distributed_executor_backend="external_launcher",
                       enable_sleep_mode=self.sleep_level > 0, enable_lora=self.lora_sync == "adapter",
                       logprobs_mode="processed_logprobs",  # the sampled distribution's: temperature, top-k/p applied
                       generation_config=plain_generation_config(),  # stop at the tokenizer's eos only, as taosr's samplers
                       **self.kw)

    def _load_weights(self, items: list[tuple[str, torch.Tensor]]) -> None:
        def load(worker, items=items):  # runs inside the (in-process) worker
            worker.model_runner.model.load_weights(items)

        self.llm.collective_rpc(load)
        self.llm.reset_prefix_cache()

    def sync_weights(self, model) -> None:
        if self.llm is None:
            self._build(model)
        if self.sleep_level:
            self.llm.wake_up(tags=["weights"])
        is_peft = hasattr(model, "peft_config")
        if is_peft and self.lora_sync == "adapter":
            self.adapters.save(model)
        else:
            with torch.no_grad():
                state = merged_lora_state(model) if is_peft else model.state_dict().items()
                for chunk in _chunks(vllm_weight_items(state, peft=is_peft)):  # a merged copy at a time, not all
                    self._load_weights(chunk)
        if self.sleep_level:
            self.llm.wake_up(tags=["kv_cache"])

    def generate(self, model, tokenizer, input_ids, attention_mask, spec: GenerationSpec) -> torch.Tensor:
        return self._run(tokenizer, input_ids, attention_mask, spec, logprobs=False)[0]

    def sample(self, model, tokenizer, input_ids, attention_mask, spec: GenerationSpec):
        """The ids and vLLM's log-prob of each sampled token (:func:`completions_from_outputs`)."""
        return self._run(tokenizer, input_ids, attention_mask, spec, logprobs=True)

    def _run(self, tokenizer, input_ids, attention_mask, spec: GenerationSpec, logprobs: bool):
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(input_ids, attention_mask)]
        sp = SamplingParams(n=spec.num_return_sequences, max_tokens=spec.max_new_tokens,
                            temperature=spec.temperature if spec.do_sample else 0.0, top_p=spec.top_p,
                            top_k=spec.top_k or 0, logprobs=0 if logprobs else None)  # top_k 0: off
        kwargs = {}
        if self.adapters.path:
            from vllm.lora.request import LoRARequest

            v = self.adapters.version
            kwargs["lora_request"] = LoRARequest(f"policy{v}", v, self.adapters.path)
        outs = self.llm.generate(prompts, sp, use_tqdm=False, **kwargs)
        if self.sleep_level:
            self.llm.sleep(level=self.sleep_level)
        ids, lps = completions_from_outputs(outs, tokenizer.pad_token_id, logprobs=logprobs)
        return ids.to(input_ids.device), (lps.to(input_ids.device) if lps is not None else None)
