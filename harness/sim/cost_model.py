"""Predicted GPU time of one engine step, built from operators (the simulator's clock).

For a step that computes N tokens (the prompt tokens of a prompt step, one per sequence in a decode step,
both in a mixed step: `CostModel.mixed`) on a model split over TP GPUs, per layer:

- linear layers (QKV, output projection, MLP): each GEMM's roofline, max(bytes / HBM bandwidth,
  FLOPs / peak), divided by the efficiency measured for that N and TP (Vidur's A100/H100 GEMM profiles);
- normalization, activation and residual kernels: measured per-layer time at N tokens (same profiles),
  scaled by hidden size;
- attention: decode reads every context token's K and V once (bytes / bandwidth x efficiency, times the
  paged kernel's overhead at this block size); prefill costs its causal FLOPs;
- tensor parallelism: two all-reduces of N x hidden values per layer (Vidur's NVLink collective
  profiles);

plus the LM head on one row per sequence, a fixed per-step overhead and a per-sequence overhead (the
engine's CPU work), and the step's block copies: swaps over PCIe with one copy per block per layer for K
and V (vLLM's swap_blocks; small blocks pay the per-copy cost many times), copy-on-write on the GPU.

Every efficiency comes from harness/data/calibration.json, derived by scripts/derive_calibration.py from
named public profiles; none is fitted to the paper's results (docs/simulator.md).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.sim.hardware import GPUSpec
from paged.presets import ModelSpec

CALIBRATION_FILE = Path(__file__).resolve().parents[1] / "data" / "calibration.json"


@lru_cache(maxsize=8)
def load_calibration(path: str = str(CALIBRATION_FILE)) -> dict:
    return json.loads(Path(path).read_text())


def roofline_ms(n: int, k: int, m: int, dtype_bytes: int, bytes_per_ms: float, flops_per_ms: float) -> float:
    """One [n, k] x [k, m] GEMM at a device's peak: max(bytes moved / bandwidth, FLOPs / peak), the
    yardstick every measured efficiency is relative to (here, in harness/calib/profile.py and in
    scripts/derive_calibration.py)."""
    memory = (k * m + n * k + n * m) * dtype_bytes / bytes_per_ms
    return max(memory, 2.0 * n * k * m / flops_per_ms)


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear interpolation, clamped at both ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _interp_loglog(xs: list[float], ys: list[float], x: float) -> float:
    """Interpolation for collective time vs message size: linear between points, extrapolated
    proportionally (bandwidth-bound) above the largest and flat (latency-bound) below the smallest."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1] * x / xs[-1]
    return _interp(xs, ys, x)


@dataclass
class StepCost:
    """A step's predicted time, in milliseconds, by component."""

    linear: float = 0.0
    norm: float = 0.0
    attention: float = 0.0
    allreduce: float = 0.0
    lm_head: float = 0.0
    overhead: float = 0.0
    swap: float = 0.0
    copy: float = 0.0

    @property
    def total_ms(self) -> float:
        return (
            self.linear
            + self.norm
            + self.attention
            + self.allreduce
            + self.lm_head
            + self.overhead
            + self.swap
            + self.copy
        )


class CostModel:
    """Step latency for one (model, GPU, TP degree, block size)."""

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        tp: int = 1,
        block_size: int = 16,
        calibration: dict | None = None,
        max_table_tokens: int = 8192,
        kv_dtype_bytes: float | None = None,
        contiguous: bool = False,
    ) -> None:
        """kv_dtype_bytes: bytes per stored key or value element (ServerConfig.kv_cache_dtype); None:
        the model's dtype. It scales the KV bytes a decode reads and a swap moves. contiguous: decode
        attention reads contiguous memory, without the paged kernel's per-block overhead (vAttention,
        baselines/vattention.py)."""
        cal = calibration or load_calibration(gpu.calibration_file or str(CALIBRATION_FILE))
        self.model, self.gpu, self.tp, self.block_size = model, gpu, tp, block_size
        hw = cal[gpu.calibration]
        self._gemm_tokens = hw["gemm"]["tokens"]
        tp_key = str(tp) if str(tp) in hw["gemm"]["efficiency"] else max(hw["gemm"]["efficiency"], key=int)
        self._gemm_eff = hw["gemm"]["efficiency"][tp_key]
        self._norm_tokens = hw["norm_ops"]["tokens"]
        self._norm_ms = hw["norm_ops"]["ms_per_layer"]
        self._norm_hidden = hw["norm_ops"]["hidden_size"]
        self._allreduce = hw["allreduce"].get(str(tp)) if tp > 1 else None
        if tp > 1 and self._allreduce is None:
            raise ValueError(f"no all-reduce profile for {tp} GPUs on {gpu.calibration}")
        att = cal["attention"]
        self.paged_block_overhead = cal["paged_kernel"]["block_overhead"]
        self.decode_bw_eff = att["decode_bandwidth_efficiency_contiguous"]
        self.prefill_flops_eff = att["prefill_flops_efficiency"]
        # Optional per-size tables a machine's own profile may give (harness/calib/profile.py): prefill
        # attention efficiency by prompt length (small prompts run far below a long one's rate), and
        # the LM head's own GEMM efficiency by rows (its [hidden, vocab] weight is not a layer's shape).
        by_len = att.get("prefill_flops_efficiency_by_tokens")
        self._prefill_eff_table = (by_len["tokens"], by_len["efficiency"]) if by_len else None
        head_eff = hw.get("lm_head")
        self._lm_head_eff = (head_eff["tokens"], head_eff["efficiency"]) if head_eff else None
        by_tp = cal["overheads"]["by_tp"]
        ovh = by_tp.get(str(tp)) or by_tp[max((k for k in by_tp if int(k) <= tp), key=int)]
        self.step_overhead_ms = ovh["step_ms"]
        self.per_seq_overhead_ms = ovh["per_seq_ms"]
        self.prefill_step_overhead_ms = ovh["prefill_step_ms"]
        self.prefill_per_token_overhead_ms = ovh["prefill_per_token_ms"]
        swap = cal["swap"]
        self.pcie_bytes_per_ms = gpu.pcie_gbps * 1e9 * swap["pcie_efficiency"] / 1e3
        self.per_copy_ms = swap["per_copy_us"] / 1e3
        h = model.hidden_size
        self._gemm_shapes = [  # (in features, out features) per GPU: QKV and MLP-in column-parallel,
            (h, model.qkv_width // tp),  # output projection and MLP-out row-parallel
            (h // tp, h),
            (h, (model.num_mlp_matrices - 1) * model.mlp_width // tp),
            (model.mlp_width // tp, h),
        ]
        self._bytes_per_ms = gpu.hbm_bytes_per_s / 1e3
        self._flops_per_ms = gpu.peak_flops / 1e3
        L = model.num_hidden_layers
        # KV bytes of one context token read by a decode step, all layers, one GPU.
        self._kv_bytes_per_token = model.kv_bytes_per_token(kv_dtype_bytes, tp=tp)
        self.paged_factor = 1.0 + (0.0 if contiguous else self.paged_block_overhead / block_size)
        self._decode_ms_per_ctx_token = (
            self._kv_bytes_per_token / (self._bytes_per_ms * self.decode_bw_eff) * self.paged_factor
        )
        # Causal prefill attention FLOPs per layer and GPU: 4*h*q*c + 2*h*q^2 (c cached, q new tokens);
        # ms per unit (2*q*c + q^2) at peak, all layers.
        self._prefill_flops_ms_peak = L * 2 * h / tp / self._flops_per_ms
        self._block_kv_bytes_per_layer = block_size * model.kv_bytes_per_token(kv_dtype_bytes) / L / 2 / tp
        # Per-N tables: the step cost that depends only on the number of tokens, precomputed once.
        self._table = [self._token_cost(n) for n in range(max_table_tokens + 1)]
        self._head_table = [self._lm_head_ms(n) for n in range(1025)]

    # ------------------------------------------------------------------ operators
    def roofline_ms(self, n: int, k: int, m: int) -> float:
        """One [n, k] x [k, m] GEMM of this model's dtype at this device's peak (`roofline_ms`)."""
        return roofline_ms(n, k, m, self.model.dtype_bytes, self._bytes_per_ms, self._flops_per_ms)

    def gemm_ms(self, n: int, k: int, m: int) -> float:
        """One [n, k] x [k, m] fp16 GEMM at the measured efficiency for n tokens."""
        return self.roofline_ms(n, k, m) / _interp(self._gemm_tokens, self._gemm_eff, n)

    def allreduce_ms(self, n: int) -> float:
        if self._allreduce is None or n == 0:
            return 0.0
        nbytes = n * self.model.hidden_size * self.model.dtype_bytes
        return _interp_loglog(self._allreduce["bytes"], self._allreduce["ms"], nbytes)

    def _token_cost(self, n: int) -> tuple[float, float, float]:
        """(linear, norm, all-reduce) milliseconds of a step over n tokens, whole model."""
        if n == 0:
            return (0.0, 0.0, 0.0)
        L = self.model.num_hidden_layers
        linear = L * sum(self.gemm_ms(n, k, m) for k, m in self._gemm_shapes)
        norm = L * _interp(self._norm_tokens, self._norm_ms, n) * self.model.hidden_size / self._norm_hidden
        return (linear, norm, 2 * L * self.allreduce_ms(n))

    def _lm_head_ms(self, rows: int) -> float:
        if rows == 0:
            return 0.0
        h, vocab = self.model.hidden_size, self.model.vocab_size // self.tp
        if self._lm_head_eff is None:
            return self.gemm_ms(rows, h, vocab)
        return self.roofline_ms(rows, h, vocab) / _interp(*self._lm_head_eff, rows)

    def prefill_attention_ms(self, new_tokens: int, cached_tokens: int) -> float:
        """One sequence's causal prompt attention, all layers."""
        eff = self.prefill_flops_eff
        if self._prefill_eff_table is not None:
            eff = _interp(*self._prefill_eff_table, new_tokens)
        units = 2 * new_tokens * cached_tokens + new_tokens * new_tokens
        return units * self._prefill_flops_ms_peak / eff

    # ------------------------------------------------------------------ steps
    def _base(self, num_tokens: int, num_rows: int, cost: StepCost) -> None:
        """Token-count-dependent parts (table lookups) and the LM head."""
        table = self._table
        linear, norm, allreduce = (
            table[num_tokens] if num_tokens < len(table) else self._token_cost(num_tokens)
        )
        cost.linear, cost.norm, cost.allreduce = linear, norm, allreduce
        head = self._head_table
        cost.lm_head = head[num_rows] if num_rows < len(head) else self._lm_head_ms(num_rows)

    def decode(self, num_seqs: int, context_tokens: int) -> StepCost:
        """A decode step: num_seqs sequences whose contexts hold context_tokens tokens in all."""
        cost = StepCost()
        self._base(num_seqs, num_seqs, cost)
        cost.attention = context_tokens * self._decode_ms_per_ctx_token
        cost.overhead = self.step_overhead_ms + self.per_seq_overhead_ms * num_seqs
        return cost

    def decode_ms(self, num_seqs: int, context_tokens: int) -> float:
        """decode(...).total_ms without building a StepCost: the simulator's hot path."""
        table = self._table
        if num_seqs < len(table) and num_seqs < len(self._head_table):
            linear, norm, allreduce = table[num_seqs]
            return (
                linear
                + norm
                + allreduce
                + self._head_table[num_seqs]
                + context_tokens * self._decode_ms_per_ctx_token
                + self.step_overhead_ms
                + self.per_seq_overhead_ms * num_seqs
            )
        return self.decode(num_seqs, context_tokens).total_ms

    def decode_ms_array(self, num_seqs: int, context_tokens: np.ndarray) -> np.ndarray:
        """`decode_ms(num_seqs, c)` for each c of an int array, bit for bit: the same float64
        operations in the same order (numpy's elementwise add and multiply round as Python's)."""
        table = self._table
        if not (num_seqs < len(table) and num_seqs < len(self._head_table)):
            return np.array([self.decode_ms(num_seqs, int(c)) for c in context_tokens])
        linear, norm, allreduce = table[num_seqs]
        fixed = linear + norm + allreduce + self._head_table[num_seqs]
        ms = fixed + context_tokens.astype(np.float64) * self._decode_ms_per_ctx_token
        ms = ms + self.step_overhead_ms
        return ms + self.per_seq_overhead_ms * num_seqs

    def decode_attention_ms(self, context_tokens: int, paged: bool = True) -> float:
        """Decode attention alone, one layer: reading `context_tokens` tokens' keys and values through
        the block table (paged) or from contiguous memory (FasterTransformer's layout; the paper's
        Figure 18(a) comparison)."""
        per_token = self._decode_ms_per_ctx_token / (1.0 if paged else self.paged_factor)
        return context_tokens * per_token / self.model.num_hidden_layers

    def prefill(self, seqs: list[tuple[int, int]]) -> StepCost:
        """A prompt step; seqs holds (new tokens, cached tokens) of each sequence that computes."""
        cost = StepCost()
        num_tokens = sum(q for q, _ in seqs)
        self._base(num_tokens, len(seqs), cost)
        cost.attention = sum(self.prefill_attention_ms(q, c) for q, c in seqs)
        cost.overhead = self.prefill_step_overhead_ms + self.prefill_per_token_overhead_ms * num_tokens
        return cost

    def mixed(self, seqs: list[tuple[int, int]], num_decode: int, decode_context: int) -> StepCost:
        """A mixed step (the artifact's): the prompts `seqs` ((new tokens, cached tokens) each, as in
        `prefill`) and `num_decode` decoding sequences whose contexts hold `decode_context` tokens in
        all, in one forward pass. Linear layers, norms and all-reduces run over every token (prompt
        tokens + one per decode); the LM head over one row per sequence; attention is the prompts'
        causal attention plus the decodes' context reads. Overhead: a step with prompts pays the prompt
        step's fixed and per-token engine overhead, and each decode adds the per-sequence one (the
        calibration fits them on pure steps; nothing measures a mixed step's CPU work). With no
        decodes this is exactly `prefill(seqs)`, with no prompts exactly `decode(...)`."""
        cost = StepCost()
        num_prompt_tokens = sum(q for q, _ in seqs)
        self._base(num_prompt_tokens + num_decode, len(seqs) + num_decode, cost)
        cost.attention = (
            sum(self.prefill_attention_ms(q, c) for q, c in seqs)
            + decode_context * self._decode_ms_per_ctx_token
        )
        if seqs:
            fixed = self.prefill_step_overhead_ms + self.prefill_per_token_overhead_ms * num_prompt_tokens
        else:
            fixed = self.step_overhead_ms
        cost.overhead = fixed + self.per_seq_overhead_ms * num_decode
        return cost

    def swap_ms(self, num_blocks: int) -> float:
        """Moving blocks over PCIe: per block, one copy per layer for K and one for V (vLLM v0)."""
        if num_blocks == 0:
            return 0.0
        copies = 2 * self.model.num_hidden_layers * num_blocks
        return copies * (self.per_copy_ms + self._block_kv_bytes_per_layer / self.pcie_bytes_per_ms)

    def page_map_ms(self, maps: int, unmaps: int = 0) -> float:
        """vAttention's page operations (baselines/vattention.py), counted per tensor: each is done in
        every layer's K and V tensor; each GPU maps its own shards, in parallel."""
        per_page_us = maps * self.gpu.page_map_us + unmaps * self.gpu.page_unmap_us
        return 2 * self.model.num_hidden_layers * per_page_us / 1e3

    def copy_ms(self, num_blocks: int) -> float:
        """Copy-on-write on the GPU: one fused kernel for all layers (vLLM's copy_blocks); it reads
        and writes each block's K and V."""
        if num_blocks == 0:
            return 0.0
        nbytes = 2 * num_blocks * self._block_kv_bytes_per_layer * 2 * self.model.num_hidden_layers
        return 0.01 + nbytes / self._bytes_per_ms
