"""The real engine's sampler on hand-made logits: batched temperature sampling draws from
softmax(logits / T) and reports the unscaled log-probability; per-row paths (top-k, top-p, a seed)
agree with it where they overlap; logprobs hold the top k and the sampled token."""

from __future__ import annotations

import pytest
import torch

from paged.sampler import Sampler
from paged.sampling_params import SamplingParams
from paged.sequence import SequenceGroup


def _batch(params_list, logits_rows):
    groups = [SequenceGroup(str(i), [1, 2], p) for i, p in enumerate(params_list)]
    rows, r = [], 0
    for g in groups:
        rows.append([(s, r + j) for j, s in enumerate(g.seqs)])
        r += len(g.seqs)
    assert r == len(logits_rows)
    return groups, rows


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_batched_temperature_sampling_follows_the_scaled_distribution(temperature):
    torch.manual_seed(0)
    vocab, n = 6, 4000
    base = torch.randn(vocab)
    logits = base.repeat(n, 1)
    params = SamplingParams(temperature=temperature, n=n)
    groups, rows = _batch([params], logits)
    samples = Sampler(seed=1).sample(logits, groups, rows)[0]
    counts = torch.bincount(torch.tensor([s.token_id for s in samples]), minlength=vocab).float()
    expected = torch.softmax(base / temperature, -1) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 25.0  # 5 degrees of freedom: p < 1e-4 for a correct sampler
    unscaled = torch.log_softmax(base, -1)
    assert all(s.logprob == pytest.approx(float(unscaled[s.token_id]), abs=1e-5) for s in samples)


def test_mixed_batch_keeps_each_groups_rule_and_logprobs():
    torch.manual_seed(0)
    vocab = 50
    logits = torch.randn(4, vocab)
    groups, rows = _batch(
        [
            SamplingParams(temperature=0.0, logprobs=3),  # greedy
            SamplingParams(temperature=0.8, logprobs=2),  # batched temperature sampling
            SamplingParams(temperature=0.8, top_k=1),  # per row: top-k 1 is greedy
            SamplingParams(temperature=1.0, seed=7),  # per row: its own generator
        ],
        logits,
    )
    out = Sampler(seed=0).sample(logits, groups, rows)
    lp = torch.log_softmax(logits, -1)
    assert out[0][0].token_id == int(logits[0].argmax())
    assert set(out[0][0].top) == set(torch.topk(lp[0], 3).indices.tolist())
    t1 = out[1][0].token_id
    assert t1 in out[1][0].top and len(out[1][0].top) in (2, 3)
    assert out[1][0].logprob == pytest.approx(float(lp[1, t1]), abs=1e-5)
    assert out[2][0].token_id == int(logits[2].argmax()) and out[2][0].top is None
    again = Sampler(seed=99).sample(logits, groups, rows)  # a seeded request ignores the shared seed
    assert again[3][0].token_id == out[3][0].token_id


def test_top_k_and_top_p_rows_never_draw_an_excluded_token():
    torch.manual_seed(0)
    base = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0])
    n = 3000
    logits = base.repeat(n, 1)
    for params, allowed in [
        (SamplingParams(temperature=1.0, top_k=2, n=n), {0, 1}),
        (SamplingParams(temperature=1.0, top_p=0.6, n=n), {0, 1}),  # 0.51 + 0.31 covers 0.6
    ]:
        groups, rows = _batch([params], logits)
        tokens = [s.token_id for s in Sampler(seed=3).sample(logits, groups, rows)[0]]
        assert set(tokens) == allowed
        share = tokens.count(0) / n
        expected = float(torch.softmax(base[:2], -1)[0])
        assert abs(share - expected) < 0.03  # about 3.5 standard deviations


def test_siblings_sharing_a_row_draw_their_own_tokens():
    """At admission a request's n sequences read one logits row (ModelRunner.prepare): each must
    still get its own draw."""
    torch.manual_seed(0)
    logits = torch.zeros(1, 1000)  # uniform: 8 equal draws would be a 1e-24 coincidence
    group = SequenceGroup("0", [1, 2], SamplingParams(temperature=1.0, n=8))
    rows = [[(s, 0) for s in group.seqs]]
    samples = Sampler(seed=0).sample(logits, [group], rows)[0]
    assert len({s.token_id for s in samples}) > 1
