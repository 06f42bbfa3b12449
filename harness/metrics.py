"""The metrics of docs/metrics.md, computed from recorded timestamps and step records.

Keys follow vLLM's benchmarks (request_throughput, mean_ttft_ms, p99_tpot_ms, ...) and the results
contract (results/README.md). Rejected requests are counted in num_rejected and excluded from every
latency and throughput figure.
"""

from __future__ import annotations

import numpy as np

from paged import SequenceGroup, StepRecord

KV_CLASSES = (
    "kv_token_states_pct",
    "kv_reservation_pct",
    "kv_internal_frag_pct",
    "kv_external_frag_pct",
    "kv_free_pct",
)


def _stats(prefix: str, values_ms: np.ndarray, out: dict) -> None:
    """mean / median / p99 in ms (numpy percentiles, linear interpolation, as vLLM)."""
    if len(values_ms) == 0:
        out[f"mean_{prefix}_ms"] = out[f"median_{prefix}_ms"] = out[f"p99_{prefix}_ms"] = float("nan")
        return
    out[f"mean_{prefix}_ms"] = float(np.mean(values_ms))
    out[f"median_{prefix}_ms"] = float(np.median(values_ms))
    out[f"p99_{prefix}_ms"] = float(np.percentile(values_ms, 99))


def output_len(group: SequenceGroup) -> int:
    """L: the output tokens of the request's longest sequence."""
    return max(s.num_output_tokens for s in group.seqs)


def request_metrics(groups: list[SequenceGroup]) -> dict:
    done = [g for g in groups if g.reject_reason is None and g.metrics.finished_time is not None]
    out: dict = {
        "num_requests": len(groups),
        "num_completed": len(done),
        "num_rejected": sum(1 for g in groups if g.reject_reason is not None),
    }
    if not done:
        out.update(
            duration_s=0.0,
            request_throughput=0.0,
            output_throughput=0.0,
            total_token_throughput=0.0,
            normalized_latency=float("nan"),
        )
        for k in ("ttft", "tpot", "itl", "e2el", "queue"):
            _stats(k, np.array([]), out)
        return out
    arrival = np.array([g.metrics.arrival_time for g in done])
    first_sched = np.array([g.metrics.first_scheduled_time for g in done])
    first_token = np.array([g.metrics.first_token_time for g in done])
    finished = np.array([g.metrics.finished_time for g in done])
    lengths = np.array([output_len(g) for g in done])
    generated = sum(s.num_output_tokens for g in done for s in g.seqs)
    prompt_tokens = sum(g.num_prompt_tokens for g in done)
    duration = float(finished.max() - arrival.min())
    e2el = finished - arrival
    out["duration_s"] = duration
    out["request_throughput"] = len(done) / duration if duration > 0 else float("inf")
    out["output_throughput"] = generated / duration if duration > 0 else float("inf")
    out["total_token_throughput"] = (prompt_tokens + generated) / duration if duration > 0 else float("inf")
    out["normalized_latency"] = float(np.mean(e2el / lengths))
    _stats("ttft", 1e3 * (first_token - arrival), out)
    multi = lengths > 1
    _stats("tpot", 1e3 * (finished[multi] - first_token[multi]) / (lengths[multi] - 1), out)
    gaps = [np.diff(s.token_times) for g in done for s in g.seqs if len(s.token_times) > 1]
    _stats("itl", 1e3 * np.concatenate(gaps) if gaps else np.array([]), out)
    _stats("e2el", 1e3 * e2el, out)
    _stats("queue", 1e3 * (first_sched - arrival), out)
    return out


def step_metrics(steps: list[StepRecord]) -> dict:
    """Per-step metrics. Steps and batch sizes count the steps that ran (`executed`); preemptions and
    swapped blocks count every step, so they equal the scheduler's own counters."""
    out: dict = {}
    ran = [s for s in steps if s.executed]
    out["num_steps"] = len(ran)
    out["avg_batched_requests"] = float(np.mean([s.num_groups for s in ran])) if ran else 0.0
    out["num_preemptions"] = int(sum(s.num_preempted for s in steps))
    out["num_swapped_blocks"] = int(sum(s.num_blocks_swapped_out for s in steps))
    sampled = [s for s in steps if s.memory is not None]
    if sampled:
        weights = np.array([s.duration_s for s in sampled])
        if weights.sum() <= 0:
            weights = np.ones(len(sampled))
        pct = np.array([list(s.memory.percentages().values()) for s in sampled])
        for i, key in enumerate(KV_CLASSES):
            out[key] = float(np.average(pct[:, i], weights=weights))
        sharing = [s.memory.sharing_saving for s in sampled if s.memory.logical_blocks]
        out["sharing_saving_pct"] = 100.0 * float(np.mean(sharing)) if sharing else 0.0
    else:
        for key in KV_CLASSES:
            out[key] = float("nan")
        out["sharing_saving_pct"] = float("nan")
    return out


def summarize(groups: list[SequenceGroup], steps: list[StepRecord]) -> dict:
    """Every metric of docs/metrics.md for one run."""
    return {**request_metrics(groups), **step_metrics(steps)}
