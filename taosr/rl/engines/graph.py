"""Decoding on a preallocated static cache, the one-token step captured as a CUDA graph on CUDA.

:class:`StaticDecoder` owns, per batch-size bucket (a :class:`_Slot`), a transformers
``StaticCache``, the static input/output buffers of the decode step and one CUDA graph per
sampling rule. A call prefills each prompt once, copies its keys and values G times into the
slot's cache, samples the first token from the prefill's logits, then runs the step
(forward of the last token -> logits warpers -> Gumbel-max or argmax -> write the token,
advance position, done flags) until every row has finished or ``max_new_tokens`` is reached.

- **CPU** (or ``cuda_graphs=False``): the step runs eagerly with exact batch and cache sizes and
  the all-finished check after every token: the same code path as the graph, minus capture. On
  CPU with one torch thread (what ``taosr compare --jobs`` gives each run), once a tenth of the rows
  being decoded have finished, the cache and the step's inputs are cut to the rows still running
  (``compact``; at least ``min_rows``): the step's cost follows the running rows, each row's
  numbers stay those of the whole batch where the CPU's matrix kernels compute a row alike in any
  batch of >= ``min_rows`` rows (measured: the tiny preset's tokens and scores are bit-identical;
  with two threads they split some small batches' sums otherwise, so it is off there), and the
  sampler still draws for every row, so the random stream is unchanged. A logits processor sees a finished row's last scores again (``generate`` recomputes
  them; no finished row's scores are used).
- **CUDA**: the batch is padded to a bucket (powers of 2 and 1.5x powers of 2; padding rows are
  copies of the first prompt, marked finished from the start), the cache length is rounded up
  to a multiple of 128 and only grows, so one slot serves every prompt length up to it. The
  first ``warmup`` steps of a new (slot, sampling rule) run eagerly on a side stream (real
  steps, their tokens are kept), the next one is captured and replayed from then on, across
  calls. The host synchronises only every ``sync_every`` tokens (the all-finished check) and
  once at the end (the output length).

Graphs read the live parameter storage, so optimizer updates (in place) are seen without
re-capture. Anything that *replaces* a parameter tensor (``.to()``, ``load_state_dict`` with
assign, re-wrapping) or changes which kernels run (LoRA merge/unmerge, adapters disabled or
switched) would leave a graph computing with stale weights: before each call a signature of
parameter data pointers and LoRA flags is compared with the one at capture, and every graph is
dropped (re-captured on use) when it changed. A capture that fails falls back to eager steps for
the rest of this decoder's life with a one-line warning. Sharded parameters (FSDP, DTensor,
DeepSpeed ZeRO-3) are never captured.
"""
from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from taosr.models.kvcache import cache_kwargs, cast_inputs, output_cache, static_cache, written_static_cache

CACHE_ROUND = 128   # cache-length granularity of a CUDA slot


def warpers(spec):
    """transformers' logits warpers for ``spec`` (temperature, top-k, top-p); empty when greedy."""
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList()
    if is_sampling(spec):
        if spec.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(spec.temperature))
        if spec.top_k:
            procs.append(TopKLogitsWarper(spec.top_k))
        if spec.top_p is not None and spec.top_p < 1.0:
            procs.append(TopPLogitsWarper(spec.top_p))
    return procs


def is_sampling(spec) -> bool:
    """``do_sample`` at a positive temperature; temperature 0 is greedy."""
    return bool(spec.do_sample) and float(spec.temperature) > 0


def gumbel_max_sample(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row drawn from softmax(scores): argmax(scores + G), G ~ Gumbel(0, 1) i.i.d.
    Masked entries (-inf) are never drawn."""
    u = torch.rand(scores.shape, dtype=scores.dtype, device=scores.device, generator=generator)
    return (scores - u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_().log_()).argmax(-1)


def make_sampler(spec) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits (N, V) -> next tokens (N,), on the logits' device, without host synchronisation."""
    procs = warpers(spec)
    if is_sampling(spec):
        return lambda logits: gumbel_max_sample(procs(None, logits.float()))
    return lambda logits: logits.float().argmax(-1)


def sampling_key(spec) -> tuple:
    """What a captured step bakes in as constants: a new key means a new graph."""
    if not is_sampling(spec):
        return ("greedy",)
    return ("sample", float(spec.temperature), int(spec.top_k or 0), float(spec.top_p if spec.top_p is not None else 1.0))


def batch_bucket(n: int) -> int:
    """Smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of 2 and 1.5x powers of 2) >= n."""
    p = 1 << max(0, (n - 1).bit_length() - 1)  # largest power of 2 < n (1 for n <= 2)
    for b in (p, p * 3 // 2 if p >= 2 else p, 2 * p):
        if b >= n:
            return b
    return 2 * p


def weights_signature(model) -> tuple:
    """Parameter data pointers and LoRA state: what a captured graph depends on besides its buffers."""
    ptrs = tuple(p.data_ptr() for p in model.parameters())
    lora = tuple((bool(getattr(m, "merged", False)), bool(getattr(m, "disable_adapters", False)),
                  tuple(getattr(m, "active_adapters", ()) or ()))
                 for m in model.modules() if hasattr(m, "merged_adapters"))
    return ptrs, lora


def graphable(model) -> bool:
    """False for sharded parameters (FSDP, DTensor, DeepSpeed ZeRO-3): their storage moves every forward
    and the forward runs collectives, so the step is not captured there."""
    if any(type(m).__name__.startswith(("FullyShardedDataParallel", "FSDP")) for m in model.modules()):
        return False
    return not any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in model.parameters())


def _cuda_capture(step: Callable[[], None], pool) -> Any:
    g = torch.cuda.CUDAGraph()
    stream = torch.cuda.current_stream()
    try:
        # thread_local: CUDA calls from other threads (NCCL's watchdog under DDP) do not invalidate
        # the capture, as in torch.compile's CUDA graphs
        with torch.cuda.graph(g, pool=pool, capture_error_mode="thread_local"):
            step()
    except BaseException:
        # an invalidated capture raises from capture_end inside the context's exit, before it gives
        # the current stream back: the caller's eager fallback must not run on the capture stream
        torch.cuda.set_stream(stream)
        raise
    return g


@dataclass
class _Slot:
    """One batch-size bucket: its static cache and the static buffers the decode step reads and writes."""
    batch: int
    cache_len: int
    cache: Any
    dtype: torch.dtype
    tok: torch.Tensor      # (Nb,) the token fed at the next step
    pos: torch.Tensor      # (Nb, 1) its position id
    att: torch.Tensor      # (Nb, L) attention mask over the cache
    done: torch.Tensor     # (Nb,) finished rows (padding rows from the start)
    length: torch.Tensor   # (Nb,) tokens up to and including eos, set when a row finishes
    t: torch.Tensor        # (1,) tokens written so far
    out: torch.Tensor      # (Nb, L) the completion tokens
    written: bool = False  # the cache hands attention only the written positions (eager steps)
    graphs: dict = field(default_factory=dict)


class StaticDecoder:
    """Prefill once, decode on a static cache; the step is a CUDA graph per batch bucket on CUDA."""

    def __init__(self, cuda_graphs: bool = True, sync_every: int = 8, warmup: int = 2,
                 compact: float | None = 0.1, min_rows: int = 4):
        self.cuda_graphs, self.sync_every, self.warmup = cuda_graphs, max(1, int(sync_every)), max(1, int(warmup))
        if compact is not None and not 0 < compact <= 1:
            raise ValueError(f"StaticDecoder: compact must be in (0, 1] or None, got {compact!r}")
        self.compact, self.min_rows = compact, max(1, int(min_rows))
        self.compactions = 0         # times the eager loop dropped finished rows
        self._compact_devices = ("cpu",)
        self.slots: dict[tuple, _Slot] = {}
        self.capture_failed = False
        self.captures = 0            # graphs captured so far (re-captures included)
        self.capture_s = 0.0         # seconds spent warming up and capturing
        self._signature = None
        self._pool = None
        self._capture = _cuda_capture   # (step, pool) -> an object with .replay(); tests swap in a stand-in
        self._new_pool = None           # () -> a pool id; None: torch.cuda.graph_pool_handle for real captures
        self._graph_devices = ("cuda",)

    # ------------------------------------------------------------------ slots
    def _graphs_on(self, device: torch.device, cuda_graphs: bool = True) -> bool:
        return cuda_graphs and self.cuda_graphs and not self.capture_failed and device.type in self._graph_devices

    def _slot(self, model, device, n: int, need_len: int, kv_dtype: torch.dtype, amp, graphs: bool,
              written: bool = False) -> _Slot:
        from transformers import StaticCache

        nb = batch_bucket(n) if graphs else n
        if written and not graphs:
            # a written-only cache is made for the call and freed with it (evaluation batches come one
            # at a time, between training steps: nothing of it stays allocated beside the model)
            cache = written_static_cache(model.config, need_len, amp)
            if cache is not None:
                return self._new_slot(nb, need_len, cache, kv_dtype, device, written=True)
        key = (device, nb if graphs else "eager", amp)  # eager decoding keeps one slot (exact sizes) per device
        s = self.slots.get(key)
        fits = s is not None and s.dtype == kv_dtype and s.batch == nb and (
            s.cache_len >= need_len if graphs else s.cache_len == need_len)
        if not fits:
            if s is not None:
                need_len = max(need_len, s.cache_len) if graphs else need_len
            L = CACHE_ROUND * math.ceil(need_len / CACHE_ROUND) if graphs else need_len
            cache = static_cache(model.config, L, amp)  # None: not plain static layers (decoded eagerly)
            if cache is None:
                cache = cast_inputs(StaticCache(config=model.config, max_cache_len=L), amp)
            s = self._new_slot(nb, L, cache, kv_dtype, device)
            self.slots[key] = s  # replaces the bucket's smaller slot (and its graphs)
        return s

    @staticmethod
    def _new_slot(nb: int, L: int, cache, kv_dtype: torch.dtype, device, written: bool = False) -> _Slot:
        return _Slot(batch=nb, cache_len=L, cache=cache, dtype=kv_dtype, written=written,
                     tok=torch.zeros(nb, dtype=torch.long, device=device),
                     pos=torch.zeros(nb, 1, dtype=torch.long, device=device),
                     att=torch.ones(nb, L, dtype=torch.long, device=device),
                     done=torch.zeros(nb, dtype=torch.bool, device=device),
                     length=torch.zeros(nb, dtype=torch.long, device=device),
                     t=torch.zeros(1, dtype=torch.long, device=device),
                     out=torch.zeros(nb, L, dtype=torch.long, device=device))

    def _check_weights(self, model) -> None:
        sig = weights_signature(model)
        if sig != self._signature:
            for s in self.slots.values():  # graphs would read replaced tensors or run the wrong kernels
                s.graphs.clear()
            self._signature = sig

    # ------------------------------------------------------------------ the step
    @staticmethod
    def _advance(s: _Slot, nt: torch.Tensor, eos: int, pad: int) -> None:
        """Write the sampled tokens at column t and update the done flags and lengths, in place."""
        nt = nt.masked_fill(s.done, pad)
        s.out.scatter_(1, s.t.view(1, 1).expand(s.batch, 1), nt[:, None])
        s.t.add_(1)
        newly = (nt == eos) & ~s.done
        s.length.copy_(torch.where(newly, s.t.expand(s.batch), s.length))
        s.done.logical_or_(newly)
        s.tok.copy_(nt)

    def _step_fn(self, model, s: _Slot, sampler, eos: int, pad: int, processors=None,
                 prompt_ids: torch.Tensor | None = None) -> Callable[[], None]:
        kw = cache_kwargs(model, s.cache)

        def step() -> None:
            # written-only cache: the mask covers the positions written so far and this token's
            att = s.att[:, :int(s.cache.layers[0].cumulative_length) + 1] if s.written else s.att
            out = model(input_ids=s.tok[:, None], attention_mask=att, position_ids=s.pos, use_cache=True, **kw)
            s.pos.add_(1)
            self._advance(s, sampler(self._process(out.logits[:, -1], s, processors, prompt_ids)), eos, pad)
        return step

    @staticmethod
    def _process(logits: torch.Tensor, s: _Slot, processors, prompt_ids) -> torch.Tensor:
        """Apply ``model.generate``-style logits processors (eager steps only): each is called with the
        ids so far (prompt + completion) and the scores, as ``generate`` calls them."""
        if not processors:
            return logits
        ids = torch.cat([prompt_ids, s.out[:prompt_ids.shape[0], :int(s.t)]], 1)
        for proc in processors:
            logits = proc(ids, logits)
        return logits

    # ------------------------------------------------------------------ eager decoding, finished rows dropped
    def _compacts(self, device: torch.device, n: int) -> bool:
        # with more than one thread the CPU's matrix kernels may split a small batch's sums another way
        # (measured: rows of 5-11-row batches differ at 2 threads), so rows would no longer be exact
        return (self.compact is not None and device.type in self._compact_devices and n > self.min_rows
                and torch.get_num_threads() == 1)

    def _decode_compacting(self, model, s: _Slot, sampler, eos: int, pad: int, processors, prompt_ids,
                           T: int, logits: torch.Tensor) -> int:
        """The eager decode loop (tokens 2..T) on the rows still decoding: once the finished rows are
        ``compact`` of the batch being decoded, the cache and the step's inputs keep only the others
        (and enough finished ones to make ``min_rows``). Each row's numbers are those of the whole
        batch where the CPU's matrix kernels give a row the same sums in any batch of >= ``min_rows``
        rows (measured for the tiny preset's shapes on a Zen 3; on a Zen 4 with AVX-512 a row's scores
        differ in the last bits, 2e-7, and a near-tie could then flip a token), and the sampler
        still draws for every row (finished rows see their last logits), so tokens and the random
        stream are unchanged. ``logits``: the prefill's, one row per slot row. Returns the number of
        steps written."""
        layers = s.cache.layers
        full = [(layer.keys, layer.values) for layer in layers]
        kw = cache_kwargs(model, s.cache)
        rows = None            # slot rows in the decoded batch (None: all of them)
        # logits (Nb, V): the last logits of every row (a finished row's are stale and never used)
        n = 1
        try:
            for t in range(1, T):
                live = (~s.done).nonzero().flatten()
                m, cur = len(live), s.batch if rows is None else len(rows)
                if m == 0:
                    break
                if cur - m >= self.compact * cur and cur > self.min_rows:
                    cur_rows = torch.arange(s.batch, device=live.device) if rows is None else rows
                    keep = ~s.done[cur_rows]
                    if m < self.min_rows:  # pad with the first finished rows: fewer rows change the sums
                        keep[(~keep).nonzero().flatten()[: self.min_rows - m]] = True
                    sel = keep.nonzero().flatten()
                    for layer in layers:
                        layer.keys, layer.values = layer.keys.index_select(0, sel), layer.values.index_select(0, sel)
                        layer.batch_size = len(sel)
                    rows = cur_rows[sel]
                    self.compactions += 1
                att = s.att if rows is None else s.att.index_select(0, rows)
                if s.written:
                    att = att[:, :int(layers[0].cumulative_length) + 1]
                tok = s.tok if rows is None else s.tok.index_select(0, rows)
                pos = s.pos if rows is None else s.pos.index_select(0, rows)
                out = model(input_ids=tok[:, None], attention_mask=att, position_ids=pos, use_cache=True, **kw)
                s.pos.add_(1)
                last = out.logits[:, -1]
                if rows is None:
                    logits = last
                else:
                    logits = logits.index_copy(0, rows, last)
                self._advance(s, sampler(self._process(logits, s, processors, prompt_ids)), eos, pad)
                n = t + 1
        finally:
            for layer, (k, v) in zip(layers, full):  # the slot's cache keeps its full-batch storage
                layer.keys, layer.values, layer.batch_size = k, v, k.shape[0]
        return n

    def _graph_pool(self):
        """The memory pool the next capture shares with the decoder's live graphs (one pool for every
        bucket). PyTorch keeps a pool's id after its last graph is freed but refuses to capture into it
        again (an internal assert of the caching allocator, seen on an H200 with torch 2.11), so with no
        graph alive (weights replaced, a bucket's slot outgrown) the next capture starts a new pool."""
        if self._pool is None or not any(s.graphs for s in self.slots.values()):
            new = self._new_pool or (torch.cuda.graph_pool_handle if self._capture is _cuda_capture else (lambda: None))
            self._pool = new()
        return self._pool

    def _graph(self, s: _Slot, key: tuple, step: Callable[[], None]):
        """Capture ``step`` (after ``warmup`` eager runs have been made on this slot); None on failure."""
        import time

        t0 = time.perf_counter()
        try:
            g = self._capture(step, self._graph_pool())
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager steps
            self.capture_failed = True
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            warnings.warn(f"rollout engine: CUDA graph capture failed ({type(e).__name__}: {first}); "
                          "decoding without graphs (set cuda_graphs: false to silence)", RuntimeWarning, stacklevel=3)
            return None
        self.captures += 1
        self.capture_s += time.perf_counter() - t0
        s.graphs[key] = g
        return g

    # ------------------------------------------------------------------ generate
    @torch.no_grad()
    def generate(self, model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, spec,
                 cuda_graphs: bool = True, written_only: bool = False, logits_processor: list | None = None) -> torch.Tensor:
        """Completion ids (B * G, n), right padded with pad_token_id, the G completions of a prompt contiguous.
        Graphs are used on CUDA unless this decoder, ``cuda_graphs`` or ``spec.cuda_graphs`` turns them off.

        Eager steps only (no graphs): ``written_only`` decodes on a cache that hands attention the
        written positions only (:func:`taosr.models.kvcache.written_static_cache`: the keys a growing
        cache gives, so greedy output matches ``model.generate``'s, at less memory traffic);
        ``logits_processor``: ``generate``-style processors applied to the scores of every step
        (e.g. :class:`taosr.eval.scores.LabelSlotCapture`); only with G = 1."""
        if written_static_cache(model.config, 1) is None and bool((attention_mask[:, 0] == 0).any()):
            raise ValueError("StaticDecoder: this model's cache keeps a sliding window (or is hybrid), whose "
                             "positions cannot line up with a left-padded prompt's mask: it would sample other "
                             "tokens than generate; decode it on a growing cache (HFEngine(static_cache=False), "
                             "model.generate), as taosr's rollouts and evaluation route such models")
        G = max(1, int(spec.num_return_sequences))
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        P, T = input_ids.shape[1], int(spec.max_new_tokens)
        device = input_ids.device
        was_training = model.training
        model.eval()
        amp = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        # inside graphs autocast must not cache casted weights (they would live in the graph's pool)
        ctx = torch.autocast(device.type, dtype=amp, cache_enabled=False) if amp is not None else contextlib.nullcontext()
        try:
            # slots outlive the call: made under Lightning's inference mode (validation) they would be
            # inference tensors that a later rollout (no_grad) may not update in place
            with torch.inference_mode(False), torch.no_grad(), ctx:
                graphs = self._graphs_on(device, cuda_graphs and getattr(spec, "cuda_graphs", True))
                if logits_processor and (graphs or G != 1):
                    raise ValueError("StaticDecoder: logits processors run with eager steps and one completion per prompt only")
                return self._generate(model, input_ids, attention_mask, G, P, T, eos, pad, spec, amp, graphs,
                                      written_only, logits_processor)
        finally:
            if was_training:
                model.train()

    def _generate(self, model, input_ids, attention_mask, G, P, T, eos, pad, spec, amp, graphs,
                  written_only=False, processors=None) -> torch.Tensor:
        device = input_ids.device
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        pre = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1)
        N = input_ids.shape[0] * G
        # a sliding-window (or hybrid) cache keeps Python-side positions a graph would freeze: eager steps
        graphs = graphs and graphable(model) and static_cache(model.config, 1) is not None
        if graphs:
            self._check_weights(model)
        layers = output_cache(pre).layers
        # keys and values in one dtype: autocast's where it is on (the slot's caches cast to it), else the model's
        kv_dtype = amp if amp is not None else layers[0].keys.dtype
        s = self._slot(model, device, N, P + T, kv_dtype, amp, graphs, written_only)
        nb = s.batch

        def rows(x: torch.Tensor) -> torch.Tensor:  # prompt rows -> G copies each, then padding rows
            x = x.repeat_interleave(G, 0)
            return torch.cat([x, x[:1].expand(nb - N, *x.shape[1:])]) if nb > N else x

        s.cache.reset()
        for dst, src in zip(s.cache.layers, layers):
            dst.update(rows(src.keys), rows(src.values))
        s.att[:, :P].copy_(rows(attention_mask))
        s.att[:, P:].fill_(1)  # every generated position is attended; causality hides those not written yet
        s.pos.copy_(rows(pos[:, -1:]) + 1)
        s.done.fill_(False)
        s.done[N:] = True
        s.length.zero_()
        s.t.zero_()
        sampler = make_sampler(spec)
        first = rows(pre.logits[:, -1])
        self._advance(s, sampler(self._process(first, s, processors, input_ids)), eos, pad)
        del pre, layers

        if not graphs and self._compacts(device, N):
            return self._output(s, N, self._decode_compacting(model, s, sampler, eos, pad, processors, input_ids,
                                                              T, first))
        step = self._step_fn(model, s, sampler, eos, pad, processors, input_ids)
        key = sampling_key(spec) + (eos, pad)  # constants the captured step bakes in
        g = s.graphs.get(key) if graphs else None
        every = self.sync_every if graphs else 1
        # warm-up steps before a capture run on a side stream, as capture needs (they are real steps)
        side = torch.cuda.Stream(device) if graphs and g is None and device.type == "cuda" else None
        warm, n = 0, 1
        for t in range(1, T):
            if t % every == 0:
                if side is not None:
                    torch.cuda.current_stream(device).wait_stream(side)
                if bool(s.done.all()):
                    break
            if g is None and graphs and warm >= self.warmup and not self.capture_failed:
                if side is not None:
                    torch.cuda.current_stream(device).wait_stream(side)
                    side = None
                g = self._graph(s, key, step)  # records the step; the replay below runs it
            if g is not None:
                g.replay()
            elif side is not None:
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    step()
                warm += 1
            else:
                step()
                warm += 1
            n = t + 1
        if side is not None:
            torch.cuda.current_stream(device).wait_stream(side)
        return self._output(s, N, n)

    @staticmethod
    def _output(s: _Slot, N: int, n: int) -> torch.Tensor:
        """The N real rows' completions after ``n`` steps, cut after the last row's eos."""
        done, length = s.done[:N], s.length[:N]
        n = int(torch.where(done, length, torch.full_like(length, n)).max()) if N else n
        return s.out[:N, :max(n, 1)].clone()


_DECODERS: "weakref.WeakKeyDictionary[Any, StaticDecoder]" = weakref.WeakKeyDictionary()


def decoder_for(model) -> StaticDecoder:
    """The decoder (with its caches and graphs) of ``model``, shared by rollouts, sampling and evaluation."""
    d = _DECODERS.get(model)
    if d is None:
        d = _DECODERS[model] = StaticDecoder()
    return d
