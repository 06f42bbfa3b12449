"""Beam search on the real engine, step for step the algorithm of transformers' `generate` (v5,
`_beam_search`, do_sample=False, early_stopping=False), so that its beams can be checked token by token.

Each step of a group with running beams B (beam width k = `SamplingParams.n`):
  1. every candidate (beam b, token t) scores  score(b) + log_softmax(logits_b)[t]  (float32);
  2. the 2k best candidates are taken from all beams together;
  3. a candidate that ends a hypothesis (EOS unless ignore_eos, or the max_tokens-th token) and ranks
     among the first k joins the finished hypotheses when its length-normalised score
     score / generated_len ** length_penalty is among the k best finished so far;
  4. the k best candidates that do not end become the next step's beams;
  5. the search stops once k hypotheses are finished and the best running beam, normalised at the
     current length, cannot beat the worst of them (transformers' early_stopping=False heuristic).

The scheduler sees all of this as samples (paged/executor.py): a beam continued by several candidates
forks (copy-on-write of its blocks, paper section 4.4), a beam continued by none is freed, a finished
hypothesis is a forked child whose last token ends it. Hypotheses displaced by better ones stay in
the group as finished sequences; `best_hypotheses` ranks them.
"""

from __future__ import annotations

import bisect

import torch

from paged.sequence import Sequence, SequenceGroup, SequenceStatus
from paged.step import Sample

_DONE = (SequenceStatus.FINISHED_STOPPED, SequenceStatus.FINISHED_LENGTH_CAPPED)


def hypothesis_score(seq: Sequence, length_penalty: float) -> float:
    """transformers' beam score: cumulative log-probability over generated length ** length_penalty."""
    return seq.cumulative_logprob / max(1, seq.num_output_tokens) ** length_penalty


def best_hypotheses(group: SequenceGroup) -> list[Sequence]:
    """The group's finished hypotheses, best first, at most the beam width."""
    lp = group.sampling_params.length_penalty
    done = [s for s in group.seqs if s.status in _DONE]
    done.sort(key=lambda s: -hypothesis_score(s, lp))
    return done[: group.sampling_params.n]


def beam_search_step(
    group: SequenceGroup, entries: list[tuple[Sequence, int]], logprobs: torch.Tensor
) -> list[Sample]:
    """The samples of one step. entries: (running beam, row of `logprobs`); logprobs: [rows, vocab]
    float32 log-softmax."""
    params = group.sampling_params
    k, lp = params.n, params.length_penalty
    beams = [seq for seq, _ in entries]
    rows = [row for _, row in entries]
    if all(seq.num_output_tokens == 0 for seq in beams):
        # All k beams start as the same prompt; transformers scores all but the first -1e9.
        beams, rows = beams[:1], rows[:1]
    vocab = logprobs.shape[1]
    base = torch.tensor([seq.cumulative_logprob for seq in beams], dtype=torch.float32)
    scores = (logprobs[rows] + base[:, None]).reshape(-1)
    top_scores, top_idx = torch.topk(scores, min(2 * k, scores.numel()))
    gen_len = beams[0].num_output_tokens + 1  # beams of one group always have the same length
    at_max = gen_len >= params.max_tokens
    eos = None if params.ignore_eos else group.eos_token_id

    finished = sorted(-hypothesis_score(s, lp) for s in group.seqs if s.status in _DONE)[:k]
    samples: list[Sample] = []
    running: list[tuple[float, Sample]] = []
    for rank, (score, idx) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
        parent = beams[idx // vocab]
        token = idx % vocab
        # The per-token logprob is the difference of float32 scores, so cumulative_logprob stays on
        # transformers' float32 chain and near-ties break the same way.
        sample = Sample(parent.seq_id, token, score - parent.cumulative_logprob)
        if at_max or token == eos:
            normalised = score / gen_len**lp
            if rank < k and (len(finished) < k or -normalised < finished[-1]):
                bisect.insort(finished, -normalised)
                del finished[k:]
                samples.append(sample)
        elif len(running) < k:
            running.append((score, sample))
    if running and len(finished) == k and running[0][0] / gen_len**lp <= -finished[-1]:
        running = []  # no running beam can beat the worst of k finished hypotheses: stop
    # Continuations last, so a parent that also ends a hypothesis keeps running under its own id.
    return samples + [s for _, s in running]
