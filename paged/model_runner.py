"""Real execution: OPT and LLaMA forward passes over the paged KV cache (paged/real_executor.py drives it).

The weights and the per-layer modules (projections, norms, MLPs, rotary embedding) are those of a
transformers model (`from_pretrained` on a local directory, or random init from a config); only the
attention is replaced: every layer writes its new keys and values into the paged cache through the
step's slot mapping, then attends through the block tables (pagelab_kernels/). One KV tensor holds all layers:
`[num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]`, so a copy-on-write copies every
layer in one launch. A contiguous baseline's chunk is just consecutive blocks in the same tensor.

Imported only by the real engine: it needs torch, which the scheduler and the simulator do not.
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from paged.presets import kv_bytes_per_token
from paged.sequence import SequenceStatus
from paged.step import SchedulerOutput

_RUNNING = SequenceStatus.RUNNING
_NO_TIMER = nullcontext()


def kernel_ops(device: torch.device):
    """Triton kernels on CUDA; elsewhere the references' semantics batched for a CPU
    (pagelab_kernels/cpu_ops.py)."""
    if device.type == "cuda":
        from pagelab_kernels import triton_ops

        return triton_ops
    from pagelab_kernels import cpu_ops

    return cpu_ops


@dataclass
class StepInputs:
    """One step's flattened batch and attention metadata."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T]
    block_tables: torch.Tensor  # [B, max_blocks] int32
    is_prefill: bool
    cu_seqlens: torch.Tensor | None = None  # [B + 1] prefill: rows of each sequence
    cached_lens: torch.Tensor | None = None  # [B] prefill: tokens already in the cache
    context_lens: torch.Tensor | None = None  # [B] decode: tokens to attend to
    logit_rows: torch.Tensor | None = None  # [B] which row's hidden state gives each sequence's logits


def _native_available() -> bool:
    from pagelab_kernels import cpu_native

    return cpu_native.available()


PREFILL_CHUNK_TOKENS = 1024  # a CPU prefill's sub-batch, in tokens (ModelRunner.forward)


def split_prefill(inputs: StepInputs, limit: int) -> list[StepInputs]:
    """A prefill step's batch cut between sequences into parts of at most `limit` tokens each (a longer
    sequence is a part of its own); logit rows stay in order."""
    cu = inputs.cu_seqlens.tolist()
    rows = inputs.logit_rows.tolist()
    parts, first = [], 0
    for i in range(1, len(cu)):
        last = i == len(cu) - 1
        if last or cu[i + 1] - cu[first] > limit:
            a, b = cu[first], cu[i]
            parts.append(
                StepInputs(
                    input_ids=inputs.input_ids[a:b],
                    positions=inputs.positions[a:b],
                    slot_mapping=inputs.slot_mapping[a:b],
                    block_tables=inputs.block_tables[first:i],
                    is_prefill=True,
                    cu_seqlens=inputs.cu_seqlens[first : i + 1] - a,
                    cached_lens=inputs.cached_lens[first:i],
                    logit_rows=torch.tensor(rows[first:i], device=inputs.logit_rows.device) - a,
                )
            )
            first = i
    return parts


class ModelRunner:
    """Runs a transformers OPT or LLaMA model over a paged KV cache."""

    def __init__(
        self,
        hf_model,
        num_gpu_blocks: int,
        block_size: int,
        num_cpu_blocks: int = 0,
        tp_rank: int = 0,
        tp_size: int = 1,
    ) -> None:
        """With tp_size > 1 (torch.distributed initialised), this rank's shard of the model is cut here
        and its KV cache holds only its heads (paged/tensor_parallel.py)."""
        self.tp_rank, self.tp_size = tp_rank, tp_size
        if tp_size > 1:
            from paged.tensor_parallel import shard_model

            shard_model(hf_model, tp_rank, tp_size)
        self.model = hf_model.eval()
        cfg = hf_model.config
        self.family = cfg.model_type
        if self.family not in ("opt", "llama"):
            raise ValueError(f"unsupported model type {self.family!r}: pagelab runs OPT and LLaMA")
        if self.family == "opt" and (
            not cfg.do_layer_norm_before or cfg.word_embed_proj_dim != cfg.hidden_size
        ):
            raise ValueError("OPT-350m's post-norm layout is not supported")
        p = next(hf_model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.ops = kernel_ops(self.device)
        self.num_heads = cfg.num_attention_heads // tp_size  # this rank's heads
        self.num_kv_heads = (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) // tp_size
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.block_size = block_size
        self.num_layers = cfg.num_hidden_layers
        self.allocate_cache(num_gpu_blocks, num_cpu_blocks)
        self._head_buf = self._logits_buf = None
        # An object whose part(name) returns a context manager timing that part (harness/calib's
        # ForwardTimer); None in serving.
        self.timer = None
        if self.family == "opt":
            dec = hf_model.model.decoder
            self.layers, self.final_norm = dec.layers, dec.final_layer_norm
        else:
            self.layers, self.final_norm = hf_model.model.layers, hf_model.model.norm
        # CPU: LLaMA's RMSNorm, SwiGLU's silu * up and the rotary embedding as one native pass each
        # (pagelab_kernels/cpu_native.py), where the C kernel built; elsewhere transformers' modules.
        self._native = self.device.type == "cpu" and _native_available()
        self._silu = getattr(cfg, "hidden_act", None) == "silu"
        # CPU only: big prompt steps run in sub-batches (forward); a GPU wants the whole batch.
        self.prefill_chunk_tokens = PREFILL_CHUNK_TOKENS if self.device.type == "cpu" else None
        self._head_packed = None
        if self._pack_linears():
            # On a CPU, every projection and the LM head in oneDNN's packed layout, reordered once
            # here (pagelab_kernels/cpu_linear.py): batched decode GEMMs up to 1.85x, the LM head 2.4x.
            # The layers' nn.Linear modules are replaced in place (the model still runs as before).
            from pagelab_kernels import cpu_linear

            for layer in self.layers:  # q, k, v (and LLaMA's gate, up) as one GEMM each
                cpu_linear.fuse(layer.self_attn, ["q_proj", "k_proj", "v_proj"], "qkv")
                if self.family == "llama":
                    cpu_linear.fuse(layer.mlp, ["gate_proj", "up_proj"], "gate_up")
            cpu_linear.pack_linears(self.layers)  # the others
            self._head_packed = cpu_linear.packed_weight(hf_model.lm_head.weight)

    def _pack_linears(self) -> bool:
        """CPU, fp32 (any x86 oneDNN runs), or bf16 where the processor computes it natively."""
        if self.device.type != "cpu":
            return False
        from paged.cpu_features import native_bf16
        from pagelab_kernels import cpu_linear

        if self.dtype == torch.bfloat16 and not native_bf16():
            return False
        return self.dtype in cpu_linear.DTYPES and cpu_linear.enabled()

    @property
    def block_bytes(self) -> int:
        """Bytes of one block: keys and values of block_size tokens in every layer."""
        per_token = kv_bytes_per_token(self.num_layers, self.num_kv_heads, self.head_dim, self.dtype.itemsize)
        return per_token * self.block_size

    def allocate_cache(self, num_gpu_blocks: int, num_cpu_blocks: int) -> None:
        """(Re)allocate the device KV cache and the host swap space."""
        self.kv_cache = None  # free the old cache before allocating the new one
        shape = (self.num_layers, 2, num_gpu_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        host_shape = (self.num_layers, 2, num_cpu_blocks, *shape[3:])
        self.host_cache = torch.zeros(host_shape, dtype=self.dtype, pin_memory=self.device.type == "cuda")

    @torch.inference_mode()
    def profile_peak_bytes(self, num_tokens: int, max_len: int) -> int:
        """Peak device memory of the largest step the scheduler may run (num_tokens prompt tokens, as
        sequences of at most max_len) - vLLM's profiling run (paper section 5). CUDA only."""
        if self.device.type != "cuda":
            raise RuntimeError("memory profiling measures a CUDA device; on CPU give kv_cache_gib")
        bs = self.block_size
        lens = [max_len] * (num_tokens // max_len) + ([num_tokens % max_len] if num_tokens % max_len else [])
        blocks = -(-max(lens) // bs)
        self.allocate_cache(blocks, 0)  # every sequence writes the same few blocks: enough for a profile
        table = torch.arange(blocks, dtype=torch.int32, device=self.device)
        pos = torch.cat([torch.arange(n) for n in lens]).to(self.device)
        inputs = StepInputs(
            input_ids=torch.zeros(num_tokens, dtype=torch.long, device=self.device),
            positions=pos,
            slot_mapping=pos.clone(),
            block_tables=table.repeat(len(lens), 1),
            is_prefill=True,
            cu_seqlens=torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device=self.device),
            cached_lens=torch.zeros(len(lens), dtype=torch.int32, device=self.device),
            logit_rows=torch.tensor(list(itertools.accumulate(lens)), device=self.device) - 1,
        )
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self.forward(inputs)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - self.kv_cache.numel() * self.dtype.itemsize
        self.kv_cache = None
        torch.cuda.empty_cache()
        return peak

    @torch.inference_mode()
    def warmup(self) -> None:
        """Run a tiny prefill and decodes of one and of two sequences, so that the CPU path's compiled
        attention (pagelab_kernels/cpu_ops.py) is built before the first timed step, as vLLM warms up before
        serving. Writes only into block 0, which the block manager overwrites before any read."""
        if self.kv_cache.shape[2] == 0:
            return
        dev, bs = self.device, self.block_size
        for n in (1, 2):
            table = torch.zeros(n, 1, dtype=torch.int32, device=dev)
            ids = torch.zeros(n, dtype=torch.long, device=dev)
            pos = torch.zeros(n, dtype=torch.long, device=dev)
            common = dict(input_ids=ids, positions=pos, slot_mapping=pos % bs, block_tables=table)
            rows = torch.arange(n, device=dev)
            cu = torch.arange(n + 1, dtype=torch.int32, device=dev)
            zeros = torch.zeros(n, dtype=torch.int32, device=dev)
            self.forward(
                StepInputs(**common, is_prefill=True, cu_seqlens=cu, cached_lens=zeros, logit_rows=rows)
            )
            ones = torch.ones(n, dtype=torch.int32, device=dev)
            self.forward(StepInputs(**common, is_prefill=False, context_lens=ones, logit_rows=rows))

    def measure_preemption_costs(self, num_tokens: int = 128, repeats: int = 3):
        """The speeds preemption_mode="cost" weighs (paged/preemption.py), measured on this machine
        before serving: moving blocks to the host and back, and a prefill of `num_tokens` tokens (the
        best of `repeats` runs each). Writes only into blocks the block manager overwrites before any
        read; call it before the first request."""
        import time

        from paged.preemption import MeasuredCosts

        num_gpu, num_cpu = self.kv_cache.shape[2], self.host_cache.shape[2]
        bs, dev = self.block_size, self.device
        k = min(8, num_gpu, num_cpu)
        num_blocks = min(-(-num_tokens // bs), num_gpu)
        num_tokens = min(num_tokens, num_blocks * bs)
        if k == 0 or num_tokens == 0:
            raise ValueError("measuring preemption costs needs device and host KV blocks")
        pairs = [(i, i) for i in range(k)]
        pos = torch.arange(num_tokens, device=dev)
        prefill = StepInputs(
            input_ids=torch.zeros(num_tokens, dtype=torch.long, device=dev),
            positions=pos,
            slot_mapping=pos,  # blocks 0.. in order: slot = position
            block_tables=torch.arange(num_blocks, dtype=torch.int32, device=dev)[None],
            is_prefill=True,
            cu_seqlens=torch.tensor([0, num_tokens], dtype=torch.int32, device=dev),
            cached_lens=torch.zeros(1, dtype=torch.int32, device=dev),
            logit_rows=torch.tensor([num_tokens - 1], device=dev),
        )

        def best(fn) -> float:
            times = []
            for _ in range(repeats):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            return min(times)

        swap = best(lambda: (self.swap(pairs, to_host=True), self.swap(pairs, to_host=False)))
        forward = best(lambda: self.forward(prefill))
        return MeasuredCosts(swap_s_per_block=swap / k, prefill_s_per_token=forward / num_tokens)

    # ------------------------------------------------------------------ block operations
    def swap(self, pairs: list[tuple[int, int]], to_host: bool) -> None:
        """Move blocks between the device cache and the host cache (all layers, keys and values)."""
        if not pairs:
            return
        src = torch.tensor([s for s, _ in pairs])
        dst = torch.tensor([d for _, d in pairs])
        if to_host:
            self.host_cache[:, :, dst] = self.kv_cache[:, :, src.to(self.device)].to("cpu")
        else:
            self.kv_cache[:, :, dst.to(self.device)] = self.host_cache[:, :, src].to(self.device)

    def copy(self, pairs: list[tuple[int, int]]) -> None:
        if pairs:
            self.ops.copy_blocks(self.kv_cache, torch.tensor(pairs, dtype=torch.int64, device=self.device))

    # ------------------------------------------------------------------ the forward pass
    def _attention(self, layer_idx: int, q, k, v, inputs: StepInputs):
        """q: [T, H, D], k/v: [T, Hkv, D] -> [T, H * D]. Writes first, then reads (executor contract)."""
        kc, vc = self.kv_cache[layer_idx, 0], self.kv_cache[layer_idx, 1]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        self.ops.write_kv_cache(k, v, kc, vc, inputs.slot_mapping)
        with self._part("attention"):  # the kernel alone, as the cost model's attention term
            out = self._attend(q, k, v, kc, vc, inputs)
        return out.reshape(out.shape[0], -1)

    def _attend(self, q, k, v, kc, vc, inputs: StepInputs):
        if inputs.is_prefill:
            return self.ops.prefill_attention(
                q,
                k,
                v,
                kc,
                vc,
                inputs.block_tables,
                inputs.cu_seqlens,
                inputs.cached_lens,
                self.scale,
            )
        return self.ops.paged_decode_attention(
            q, kc, vc, inputs.block_tables, inputs.context_lens, self.scale
        )

    @staticmethod
    def _qkv(attn, x):
        """The query, key and value projections: one fused GEMM where the CPU path made one."""
        fused = getattr(attn, "qkv", None)
        return fused(x) if fused is not None else (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))

    def _mlp(self, mlp, x):
        """LLaMA's MLP, down(act(gate(x)) * up(x)), with gate and up as one GEMM where fused."""
        fused = getattr(mlp, "gate_up", None)
        if fused is None:
            return mlp(x)
        if self._native and self._silu and x.dim() == 2:
            from pagelab_kernels import cpu_native

            return mlp.down_proj(cpu_native.silu_and_mul(fused(x, split=False)))
        gate, up = fused(x)
        return mlp.down_proj(mlp.act_fn(gate) * up)

    def _rms_norm(self, norm, x):
        """A LlamaRMSNorm, natively on a CPU."""
        if self._native and x.dim() == 2:
            from pagelab_kernels import cpu_native

            return cpu_native.rms_norm(x, norm.weight, norm.variance_epsilon)
        return norm(x)

    def _opt_layer(self, i, layer, h, inputs):
        attn = layer.self_attn
        t = h.shape[0]
        x = layer.self_attn_layer_norm(h)
        q, k, v = self._qkv(attn, x)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        # In-place residual adds and ReLU: h and fc1's output are this step's own temporaries, and on
        # a CPU a fresh [tokens, 4 * hidden] output per layer page-faulted inside a generate (ReLU
        # 2.3-3.7 ms per call vs 0.19 in place; benchmarks/profile_generate.py, docs/real_engine.md).
        h = h.add_(self._reduce(attn.out_proj(self._attention(i, q, k, v, inputs))))
        x = layer.final_layer_norm(h)
        a = layer.fc1(x)
        a = torch.relu_(a) if isinstance(layer.activation_fn, torch.nn.ReLU) else layer.activation_fn(a)
        return h.add_(self._reduce(layer.fc2(a)))

    def _llama_layer(self, i, layer, h, inputs, cos, sin):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        attn = layer.self_attn
        t = h.shape[0]
        x = self._rms_norm(layer.input_layernorm, h)
        fused = getattr(attn, "qkv", None)
        if self._native and fused is not None and cos.shape[-1] == self.head_dim:
            # One GEMM, then the rotary embedding in place on its query and key columns (native).
            from pagelab_kernels import cpu_native

            qkv = fused(x, split=False)
            nq, nk = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            cpu_native.rotary(qkv, self.num_heads, cos[0], sin[0])
            cpu_native.rotary(qkv[:, nq:], self.num_kv_heads, cos[0], sin[0])
            q = qkv[:, :nq].view(t, self.num_heads, self.head_dim)
            k = qkv[:, nq : nq + nk].view(t, self.num_kv_heads, self.head_dim)
            v = qkv[:, nq + nk :].view(t, self.num_kv_heads, self.head_dim)
        else:
            q, k, v = self._qkv(attn, x)
            q = q.view(t, self.num_heads, self.head_dim).transpose(0, 1)[None]
            k = k.view(t, self.num_kv_heads, self.head_dim).transpose(0, 1)[None]
            v = v.view(t, self.num_kv_heads, self.head_dim)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            q, k = q[0].transpose(0, 1), k[0].transpose(0, 1)
        h = h.add_(self._reduce(attn.o_proj(self._attention(i, q, k, v, inputs))))
        return h.add_(self._reduce(self._mlp(layer.mlp, self._rms_norm(layer.post_attention_layernorm, h))))

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum a row-parallel projection's partial outputs over the tensor-parallel ranks."""
        if self.tp_size == 1:
            return x
        from paged.tensor_parallel import all_reduce

        return all_reduce(x)

    def run_step(self, swap_out, swap_in, copies, inputs: StepInputs | None) -> torch.Tensor | None:
        """One step's block operations (in the executor contract's order), then the forward pass."""
        self.swap(swap_out, to_host=True)
        self.swap(swap_in, to_host=False)
        self.copy(copies)
        return None if inputs is None else self.forward(inputs)

    def _part(self, name: str):
        """A timing context around one part of the forward pass ("forward", "attention", "lm_head"):
        the profiler (harness/calib) sets `timer`; unset, it costs one attribute test."""
        return _NO_TIMER if self.timer is None else self.timer.part(name)

    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Logits [B, vocab] for the rows in inputs.logit_rows. On a CPU a prefill step of more than
        `prefill_chunk_tokens` tokens runs as consecutive sub-batches of whole sequences: the same
        arithmetic per sequence (each attends only to itself), with activations that stay in cache
        instead of page-faulting fresh tens of MB per layer; 40 ShareGPT prompts (7,070 tokens) of
        SmolLM2 fp32 prefill in 9.0 s in parts of 1024 tokens against 10.7-13.0 s at once, 9.3-9.4 s
        in parts of 512 (`python benchmarks/bench_cpu_ops.py --prefill`, development VM)."""
        with self._part("forward"):
            limit = self.prefill_chunk_tokens
            if not inputs.is_prefill or limit is None or len(inputs.input_ids) <= limit:
                return self._forward(inputs)
            # Each part's logits are copied out: _lm_head's buffers are reused by the next part.
            return torch.cat([self._forward(part).clone() for part in split_prefill(inputs, limit)])

    def _forward(self, inputs: StepInputs) -> torch.Tensor:
        m = self.model
        if self.family == "opt":
            dec = m.model.decoder
            h = dec.embed_tokens(inputs.input_ids) + dec.embed_positions.weight[inputs.positions + 2]
            for i, layer in enumerate(self.layers):
                h = self._opt_layer(i, layer, h, inputs)
        else:
            h = m.model.embed_tokens(inputs.input_ids)
            cos, sin = m.model.rotary_emb(h[None], inputs.positions[None])
            for i, layer in enumerate(self.layers):
                h = self._llama_layer(i, layer, h, inputs, cos, sin)
        h = h[inputs.logit_rows]
        h = self.final_norm(h) if self.family == "opt" else self._rms_norm(self.final_norm, h)
        with self._part("lm_head"):
            return self._lm_head(h)

    def _lm_head(self, h: torch.Tensor) -> torch.Tensor:
        """fp32 logits [rows, vocab], written into buffers kept across steps: on a CPU a fresh
        [rows, vocab] tensor per step costs page faults that took longer than the LM head's GEMM. The
        result is only valid until the next forward."""
        w = self.model.lm_head.weight
        n, vocab = h.shape[0], w.shape[0]
        if self._logits_buf is None or self._logits_buf.shape[0] < n:
            rows = max(n, 2 * (0 if self._logits_buf is None else self._logits_buf.shape[0]))
            if self._head_packed is None:  # the packed GEMM returns its own output
                self._head_buf = torch.empty(rows, vocab, dtype=h.dtype, device=h.device)
            self._logits_buf = torch.empty(rows, vocab, dtype=torch.float32, device=h.device)
        if self._head_packed is not None:
            from pagelab_kernels.cpu_linear import linear

            out = linear(h, self._head_packed)
        else:
            out = torch.matmul(h, w.t(), out=self._head_buf[:n])
        return self._logits_buf[:n].copy_(out)

    # ------------------------------------------------------------------ inputs from a scheduled step
    def prepare(self, out: SchedulerOutput) -> tuple[StepInputs, list]:
        """The step's batch from the scheduler's output alone (its block tables and compute ranges),
        and for each scheduled group the (sequence, logits row) of its running sequences. A sequence
        with nothing to compute (a sibling identical to one that computes, after a recompute or at a
        request's admission) reads its sibling's row.

        A mixed step (prompts and decodes, `step_composition="mixed"`) runs entirely through the
        varlen prefill path: each decode is a one-token prefill over its cached context (its row in
        cu_seqlens is one token, its cached_lens the context before it), which prefill attention
        computes exactly as the decode kernel would."""
        bs = self.block_size
        ids, pos, slots, tables, cu, cached, ctx, rows = [], [], [], [], [0], [], [], []
        per_group = []
        for group in out.scheduled_groups:
            entries = []
            by_tokens: dict[tuple, int] = {}
            pending = []
            for seq in group.seqs:
                if seq.status is not _RUNNING:
                    continue
                table = out.block_tables[seq.seq_id]
                start, n = out.compute_range(seq)
                if start >= n:
                    pending.append(seq)
                    continue
                if n - start == 1:  # decode: one token
                    ids.append(seq.token_ids[start])
                    pos.append(start)
                    slots.append(table[start // bs] * bs + start % bs)
                else:  # a prompt: whole blocks of slots at once, no per-token Python
                    ids.extend(seq.token_ids[start:n])
                    pos.extend(range(start, n))
                    first, last = start // bs, (n - 1) // bs
                    block_slots = [s for b in table[first : last + 1] for s in range(b * bs, b * bs + bs)]
                    slots.extend(block_slots[start - first * bs : n - first * bs])
                tables.append(table)
                if out.is_prefill:  # a mixed step's decodes too: (start, n) = (len - 1, len)
                    cu.append(cu[-1] + n - start)
                    cached.append(start)
                else:
                    ctx.append(n)
                rows.append(len(ids) - 1)
                if n < len(seq.token_ids):
                    continue  # a chunk of a longer prompt (chunked prefill): nothing to sample yet
                by_tokens[tuple(seq.token_ids)] = len(rows) - 1
                entries.append((seq, len(rows) - 1))
            for seq in pending:
                entries.append((seq, by_tokens[tuple(seq.token_ids)]))
            per_group.append(entries)
        dev = self.device
        width = max((len(t) for t in tables), default=1)
        table_tensor = torch.zeros(len(tables), width, dtype=torch.int32)
        for i, t in enumerate(tables):
            table_tensor[i, : len(t)] = torch.tensor(t, dtype=torch.int32)
        inputs = StepInputs(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.tensor(pos, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            block_tables=table_tensor.to(dev),
            is_prefill=out.is_prefill,
            logit_rows=torch.tensor(rows, dtype=torch.long, device=dev),
        )
        if out.is_prefill:
            inputs.cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=dev)
            inputs.cached_lens = torch.tensor(cached, dtype=torch.int32, device=dev)
        else:
            inputs.context_lens = torch.tensor(ctx, dtype=torch.int32, device=dev)
        return inputs, per_group
