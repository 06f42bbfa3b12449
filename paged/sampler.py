"""Sampling on the real engine: the next token of every running sequence from its logits.

Greedy when temperature is 0 (the whole batch's argmax in one pass), else temperature / top-k / top-p
sampling from one seeded generator, or from the request's own generator when its SamplingParams carry
a seed (vLLM's per-request seed: reproducible in any batch); beam search as transformers does it
(paged/beam_search.py). The output is plain `Sample`s: the scheduler forks and frees from them.
"""

from __future__ import annotations

import weakref

import torch

from paged.beam_search import beam_search_step
from paged.sampling_params import SamplingParams
from paged.sequence import Sequence, SequenceGroup
from paged.step import Sample


def greedy(logits: torch.Tensor) -> tuple[list[int], list[float]]:
    """Each row's argmax and its log-probability: natively on a CPU (one pass, no [rows, vocab]
    temporaries), else with torch."""
    from pagelab_kernels import cpu_native

    if logits.device.type == "cpu" and cpu_native.available():
        tokens, lp = cpu_native.greedy_rows(logits)
    else:
        tokens = torch.argmax(logits, dim=-1)
        lp = logits.gather(1, tokens[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    return tokens.tolist(), lp.tolist()


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of probs [rows, vocab] by inverting its cumulative distribution: one uniform
    number per row (torch.multinomial on a CPU takes about 1 ms per row of a 49K vocabulary; this, a
    cumulative sum and a binary search, about 0.04 ms). side="right" never lands on a token of
    probability 0 (top-k, top-p). Returns [rows, 1]."""
    cdf = torch.cumsum(probs, dim=-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)


def _plain(params: SamplingParams) -> bool:
    """Temperature sampling alone from the shared generator: batched across rows."""
    return (
        params.temperature > 0
        and not params.use_beam_search
        and params.seed is None
        and params.top_k == -1
        and params.top_p == 1.0
    )


def attach_logprobs(logits, groups, rows, outputs, logprobs=None) -> None:
    """Each sample of a group that asks for logprobs (SamplingParams.logprobs = k) gets `top`: the k
    most likely tokens at its position and the sampled token itself, with their log-probabilities
    under the model's distribution (vLLM's default, before temperature / top-k / top-p). The sampled
    token's value is the sample's own, so `top` agrees with cumulative_logprob."""
    wanted = [i for i, g in enumerate(groups) if g.sampling_params.logprobs is not None]
    row_of = [{s.seq_id: r for s, r in rows[i]} for i in wanted]
    index = sorted({r for m in row_of for r in m.values()})
    if logprobs is None:
        full = torch.log_softmax(logits[index].float(), dim=-1)
    else:
        full = logprobs[index]
    position = {r: p for p, r in enumerate(index)}
    k_max = max(groups[i].sampling_params.logprobs for i in wanted)
    top_values, top_ids = torch.topk(full, k_max, dim=-1) if k_max else (full[:, :0], full[:, :0].long())
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    for i, rows_i in zip(wanted, row_of):
        k = groups[i].sampling_params.logprobs
        for sample in outputs[i]:
            p = position[rows_i[sample.parent_seq_id]]
            top = dict(zip(top_ids[p][:k], top_values[p][:k]))
            top[sample.token_id] = sample.logprob
            sample.top = top


class Sampler:
    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        # Per-request generators, dropped with their request (weak keys: no growth over a long run).
        self._request_generators: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def sample(
        self,
        logits: torch.Tensor,
        groups: list[SequenceGroup],
        rows: list[list[tuple[Sequence, int]]],
    ) -> list[list[Sample]]:
        """logits: [rows, vocab] fp32 on the CPU; rows[i]: (sequence, logits row) of group i's running
        sequences. Returns one list of samples per group."""
        # Greedy rows for the whole batch at once; a full log-softmax only when a group needs it.
        greedy_tokens, greedy_lp = greedy(logits)
        logprobs = None
        if any(g.sampling_params.use_beam_search for g in groups):
            logprobs = torch.log_softmax(logits, dim=-1)
        # Plain temperature sampling from the shared generator (no seed, top-k, top-p): one batched
        # draw for all such rows instead of a softmax and a draw per row.
        # One draw per sequence, in order: siblings that share a row (a request's n samples at
        # admission) each get their own token.
        plain = [
            (r, g.sampling_params.temperature)
            for g, entries in zip(groups, rows)
            if _plain(g.sampling_params)
            for _, r in entries
        ]
        drawn = iter(self._sample_plain(logits, plain) if plain else [])
        outputs: list[list[Sample]] = []
        for group, entries in zip(groups, rows):
            params = group.sampling_params
            if not entries:  # a chunk of a prompt that goes on next step (chunked prefill)
                outputs.append([])
            elif params.use_beam_search:
                outputs.append(beam_search_step(group, entries, logprobs))
            elif params.temperature == 0:
                outputs.append([Sample(s.seq_id, greedy_tokens[r], greedy_lp[r]) for s, r in entries])
            elif _plain(params):
                outputs.append([Sample(s.seq_id, *next(drawn)) for s, _ in entries])
            else:
                gen = self._generator(group)
                outputs.append(
                    [Sample(s.seq_id, *self._sample_row(logits[r], params, gen)) for s, r in entries]
                )
        if any(g.sampling_params.logprobs is not None for g in groups):
            attach_logprobs(logits, groups, rows, outputs, logprobs)
        return outputs

    def _sample_plain(self, logits, plain: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """(logits row, temperature) per sequence, siblings possibly sharing a row, sampled in one
        draw: (token, its log-probability under the unscaled distribution) per entry, in order."""
        x = logits[[r for r, _ in plain]]
        temps = [t for _, t in plain]
        probs = torch.softmax(x / torch.tensor(temps, dtype=x.dtype)[:, None], dim=-1)
        tokens = draw(probs, self.generator)
        lp = (x.gather(1, tokens) - torch.logsumexp(x, dim=-1, keepdim=True))[:, 0]
        return list(zip(tokens[:, 0].tolist(), lp.tolist()))

    def _generator(self, group: SequenceGroup) -> torch.Generator:
        seed = group.sampling_params.seed
        if seed is None:
            return self.generator
        gen = self._request_generators.get(group)
        if gen is None:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            self._request_generators[group] = gen
        return gen

    @staticmethod
    def _sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator):
        """(token, its log-probability under the unscaled distribution) for one row."""
        logprobs = torch.log_softmax(logits, dim=-1)
        scaled = logits / params.temperature
        if params.top_k > 0:
            kth = torch.topk(scaled, min(params.top_k, scaled.numel())).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, 0) - sorted_probs < params.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            probs = probs / probs.sum()
        token = int(draw(probs[None], generator)[0, 0])
        return token, float(logprobs[token])
