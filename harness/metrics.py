"""The metrics of docs/metrics.md, computed from recorded timestamps and step records.

Keys follow vLLM's benchmarks (request_throughput, mean_ttft_ms, p99_tpot_ms, ...) and the results
contract (results/README.md). Rejected requests are counted in num_rejected and excluded from every
latency and throughput figure; the SLO metrics (slo_metrics) count them as missing every SLO.
"""

from __future__ import annotations

import numpy as np

from paged import DecodeRun, SequenceGroup, StepRecord

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


def completed(groups: list[SequenceGroup]) -> list[SequenceGroup]:
    """The requests that finished: neither rejected nor still running (an early-stopped run)."""
    return [g for g in groups if g.reject_reason is None and g.metrics.finished_time is not None]


def request_latencies(groups: list[SequenceGroup]) -> dict[str, np.ndarray]:
    """Per completed request, in seconds (docs/metrics.md): the timestamps a, s, f, e, the output length
    L, and the latencies built from them, `ttft` = f - a, `tpot` = (e - f) / (L - 1) (NaN where L = 1:
    undefined), `e2el` = e - a, `queue` = s - a. The one place these are computed: the latency metrics
    and the SLO metrics (slo_metrics) both read them."""
    done = completed(groups)
    arrival = np.array([g.metrics.arrival_time for g in done], dtype=float)
    first_sched = np.array([g.metrics.first_scheduled_time for g in done], dtype=float)
    first_token = np.array([g.metrics.first_token_time for g in done], dtype=float)
    finished = np.array([g.metrics.finished_time for g in done], dtype=float)
    lengths = np.array([output_len(g) for g in done], dtype=np.int64)
    tpot = np.full(len(done), np.nan)
    multi = lengths > 1
    tpot[multi] = (finished[multi] - first_token[multi]) / (lengths[multi] - 1)
    return {
        "arrival": arrival,
        "first_scheduled": first_sched,
        "first_token": first_token,
        "finished": finished,
        "output_len": lengths,
        "ttft": first_token - arrival,
        "tpot": tpot,
        "e2el": finished - arrival,
        "queue": first_sched - arrival,
    }


def request_metrics(groups: list[SequenceGroup]) -> dict:
    done = completed(groups)
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
    lat = request_latencies(done)
    generated = sum(s.num_output_tokens for g in done for s in g.seqs)
    prompt_tokens = sum(g.num_prompt_tokens for g in done)
    duration = float(lat["finished"].max() - lat["arrival"].min())
    out["duration_s"] = duration
    out["request_throughput"] = len(done) / duration if duration > 0 else float("inf")
    out["output_throughput"] = generated / duration if duration > 0 else float("inf")
    out["total_token_throughput"] = (prompt_tokens + generated) / duration if duration > 0 else float("inf")
    out["normalized_latency"] = float(np.mean(lat["e2el"] / lat["output_len"]))
    _stats("ttft", 1e3 * lat["ttft"], out)
    tpot = lat["tpot"]
    _stats("tpot", 1e3 * tpot[~np.isnan(tpot)], out)  # requests with L > 1 only
    gaps = [np.diff(s.token_times) for g in done for s in g.seqs if len(s.token_times) > 1]
    _stats("itl", 1e3 * np.concatenate(gaps) if gaps else np.array([]), out)
    _stats("e2el", 1e3 * lat["e2el"], out)
    _stats("queue", 1e3 * lat["queue"], out)
    return out


SLO_COLUMNS = (
    "slo_attainment",
    "request_goodput",
    "num_slo_met",
    "slo_ttft_attainment",
    "slo_tpot_attainment",
    "slo_e2e_attainment",
)


def slo_metrics(
    groups: list[SequenceGroup],
    ttft_s: float | None = None,
    tpot_s: float | None = None,
    e2e_s: float | None = None,
) -> dict:
    """SLO attainment and goodput (docs/metrics.md, "SLOs and goodput"), vLLM's definition
    (benchmarks/benchmark_serving.py, `--goodput`): a request meets the SLOs when it completed and every
    latency given a limit is at most that limit (None: not checked). A 1-token output has no TPOT and
    meets a TPOT limit, as in vLLM (which counts its TPOT as 0). Rejected and unfinished requests meet
    nothing but count among the requests.

    slo_attainment = met / all requests; request_goodput = met / D, D the same duration as
    request_throughput's (last finish - first arrival of the completed requests); slo_<x>_attainment:
    the fraction meeting that one limit."""
    limits = {"ttft": ttft_s, "tpot": tpot_s, "e2e": e2e_s}
    if all(v is None for v in limits.values()):
        raise ValueError("slo_metrics needs at least one of ttft_s, tpot_s, e2e_s")
    lat = request_latencies(groups)
    values = {"ttft": lat["ttft"], "tpot": np.nan_to_num(lat["tpot"], nan=0.0), "e2e": lat["e2el"]}
    num_requests = len(groups)
    met = np.ones(len(lat["ttft"]), dtype=bool)
    out: dict = {}
    for key, limit in limits.items():
        if limit is None:
            out[f"slo_{key}_attainment"] = float("nan")
            continue
        ok = values[key] <= limit  # at the limit meets it, as vLLM's `slo >= value`
        out[f"slo_{key}_attainment"] = float(ok.sum()) / num_requests if num_requests else float("nan")
        met &= ok
    num_met = int(met.sum())
    duration = float(lat["finished"].max() - lat["arrival"].min()) if len(met) else 0.0
    out["num_slo_met"] = num_met
    out["slo_attainment"] = num_met / num_requests if num_requests else float("nan")
    if duration > 0:
        out["request_goodput"] = num_met / duration
    else:
        out["request_goodput"] = float("inf") if num_met else 0.0
    return out


CLASS_COLUMNS = (  # per priority class c, as class<c>_<name> (docs/metrics.md)
    "num_requests",
    "num_completed",
    "normalized_latency",
    "mean_ttft_ms",
    "p99_ttft_ms",
    "p99_tpot_ms",
    "mean_e2el_ms",
    "p99_e2el_ms",
)


def class_columns(classes: list[int], with_slo: bool) -> list[str]:
    names = CLASS_COLUMNS + (("slo_attainment",) if with_slo else ())
    return [f"class{c}_{name}" for c in classes for name in names]


def class_metrics(groups: list[SequenceGroup], classes: list[int], slo: dict | None = None) -> dict:
    """The latency metrics of each priority class's requests alone (request_metrics, slo_metrics);
    slo: the limits given (SLOConf.limits()), if any."""
    out: dict = {}
    for c in classes:
        members = [g for g in groups if g.priority == c]
        m = request_metrics(members)
        for name in CLASS_COLUMNS:
            out[f"class{c}_{name}"] = m[name]
        if slo:
            out[f"class{c}_slo_attainment"] = slo_metrics(members, **slo)["slo_attainment"]
    return out


# The per-step record as columns: what step_metrics and the artifact-style variants read, and what a
# run keeps in steps/<point>.npz (harness/step_series.py). Memory columns are NaN on steps without a
# Figure 2 sample (`memory_every`).
STEP_COUNTS = (
    "num_groups",
    "num_running_groups",
    "num_seqs",
    "num_tokens",
    "num_preempted",
    "num_rejected",
    "num_finished",
    "num_blocks_swapped_out",
    "num_blocks_swapped_in",
    "num_blocks_copied",
)
MEMORY_COLUMNS = (  # token slots of MemoryUsage, in KV_CLASSES order, then its block counts
    "mem_token_states",
    "mem_reservation",
    "mem_internal_frag",
    "mem_external_frag",
    "mem_free",
    "logical_blocks",
    "physical_blocks",
)
ARTIFACT_COLUMNS = (
    "batched_requests_artifact",
    "kv_token_states_pct_artifact",
    "kv_reservation_pct_artifact",
    "kv_internal_frag_pct_artifact",
    "kv_external_frag_pct_artifact",
    "sharing_saving_pct_artifact",
)


def step_series(steps: list[StepRecord | DecodeRun], paged: bool = False) -> dict[str, np.ndarray]:
    """The steps as columns (docs/metrics.md, "Per-step series"); a fast-forwarded `DecodeRun` gives
    the rows of the steps it stands for. `paged`: the memory policy is the paged block manager (the
    artifact's Figure 2 rule for vLLM needs to know).

    `num_running_groups` is the count when the step was scheduled, new prompts included (the
    artifact's `len(running)`); `num_finished` counts the groups completed in the step (not rejected
    ones, which never ran)."""
    n = sum(len(s) if type(s) is DecodeRun else 1 for s in steps)
    start = np.empty(n)
    duration = np.empty(n)
    executed = np.empty(n, dtype=bool)
    is_prefill = np.empty(n, dtype=bool)
    counts = np.zeros((len(STEP_COUNTS), n), dtype=np.int64)
    memory = np.full((len(MEMORY_COLUMNS), n), np.nan)
    i = 0
    for s in steps:
        if type(s) is DecodeRun:
            k = len(s)
            end = i + k
            start[i:end] = s.start_times
            duration[i:end] = s.durations
            executed[i:end] = True
            is_prefill[i:end] = False
            for row in (0, 1):  # num_groups, num_running_groups
                counts[row, i:end] = s.num_groups
            for row in (2, 3):  # num_seqs, num_tokens (one each)
                counts[row, i:end] = s.num_seqs
            counts[6, end - 1] = sum(1 for g in s.finished if g.reject_reason is None)
            if s.memory is not None:
                memory[:, i:end] = s.memory.T
            i = end
            continue
        start[i] = s.start_time
        duration[i] = s.duration_s
        executed[i] = s.executed
        is_prefill[i] = s.is_prefill
        num_finished = sum(1 for g in s.finished if g.reject_reason is None)
        counts[:, i] = (
            s.num_groups,
            s.num_running_groups,
            s.num_seqs,
            s.num_tokens,
            s.num_preempted,
            s.num_rejected,
            num_finished,
            s.num_blocks_swapped_out,
            s.num_blocks_swapped_in,
            s.num_blocks_copied,
        )
        m = s.memory
        if m is not None:
            memory[:, i] = (
                m.token_states,
                m.reservation,
                m.internal_fragmentation,
                m.external_fragmentation,
                m.free,
                m.logical_blocks,
                m.physical_blocks,
            )
        i += 1
    series = {"start_time": start, "duration_s": duration, "executed": executed, "is_prefill": is_prefill}
    series.update(zip(STEP_COUNTS, counts))
    series.update(zip(MEMORY_COLUMNS, memory))
    series["paged"] = np.array(paged)
    return series


def window_mask(
    series: dict[str, np.ndarray], window: list[float] | tuple[float, float] | None
) -> np.ndarray:
    """The steps whose start time lies in [t0, t1] (both ends included, as the artifact's plot scripts
    cut their time series); None: every step."""
    start = series["start_time"]
    if window is None:
        return np.ones(len(start), dtype=bool)
    t0, t1 = check_window(window)
    return (start >= t0) & (start <= t1)


def check_window(window) -> tuple[float, float]:
    """[t0, t1] in seconds of the run, t0 <= t1; raises ValueError naming the fix otherwise."""
    try:
        t0, t1 = (float(t) for t in window)
    except (TypeError, ValueError):
        raise ValueError(f"a metrics window is [start, end] in seconds, got {window!r}") from None
    if not t0 <= t1:
        raise ValueError(f"a metrics window needs start <= end, got [{t0:g}, {t1:g}]")
    return t0, t1


def _memory_pct(series: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """[steps, 5]: the Figure 2 classes in % of the KV space, on the sampled steps of `mask`."""
    slots = np.stack([series[c][mask] for c in MEMORY_COLUMNS[:5]], axis=1)
    total = slots.sum(axis=1, keepdims=True)  # MemoryUsage.check: the classes sum to the total
    return 100.0 * slots / np.where(total > 0, total, 1.0)


def series_step_metrics(series: dict[str, np.ndarray], window: list[float] | None = None) -> dict:
    """pagelab's own per-step metrics (docs/metrics.md) over the steps starting in `window`."""
    in_window = window_mask(series, window)
    ran = series["executed"] & in_window
    out: dict = {"num_steps": int(ran.sum())}
    out["avg_batched_requests"] = float(np.mean(series["num_groups"][ran])) if ran.any() else 0.0
    out["num_preemptions"] = int(series["num_preempted"][in_window].sum())
    out["num_swapped_blocks"] = int(series["num_blocks_swapped_out"][in_window].sum())
    sampled = in_window & ~np.isnan(series["mem_token_states"])
    if sampled.any():
        weights = series["duration_s"][sampled]
        if weights.sum() <= 0:
            weights = np.ones(len(weights))
        pct = _memory_pct(series, sampled)
        for i, key in enumerate(KV_CLASSES):
            out[key] = float(np.average(pct[:, i], weights=weights))
        logical = series["logical_blocks"][sampled]
        physical = series["physical_blocks"][sampled]
        shared = logical > 0
        saving = (logical[shared] - physical[shared]) / logical[shared]
        out["sharing_saving_pct"] = 100.0 * float(np.mean(saving)) if shared.any() else 0.0
    else:
        for key in KV_CLASSES:
            out[key] = float("nan")
        out["sharing_saving_pct"] = float("nan")
    return out


def step_metrics(steps: list[StepRecord | DecodeRun]) -> dict:
    """Per-step metrics. Steps and batch sizes count the steps that ran (`executed`); preemptions and
    swapped blocks count every step, so they equal the scheduler's own counters."""
    return series_step_metrics(step_series(steps))


def artifact_metrics(series: dict[str, np.ndarray], window: list[float] | None = None) -> dict:
    """The paper artifact's definitions of Figures 13, 2 and 15 (docs/metrics.md, "As the artifact
    computes them"), over the steps starting in `window`: plain means over steps, not time-weighted."""
    in_window = window_mask(series, window)
    nan = float("nan")
    out = dict.fromkeys(ARTIFACT_COLUMNS, nan)
    # Figure 13: len(running) after scheduling, on every step the artifact records (something runs
    # or swaps).
    running = series["num_running_groups"]
    recorded = in_window & (
        (running > 0) | (series["num_blocks_swapped_out"] > 0) | (series["num_blocks_swapped_in"] > 0)
    )
    if recorded.any():
        out["batched_requests_artifact"] = float(np.mean(running[recorded]))
    sampled = in_window & ~np.isnan(series["mem_token_states"])
    if sampled.any():
        pct = _memory_pct(series, sampled)
        token = float(np.mean(pct[:, 0]))
        if bool(series["paged"]):
            # The artifact's vLLM records neither reservation nor internal fragmentation (zeros).
            reserved = internal = 0.0
        else:
            reserved, internal = float(np.mean(pct[:, 1])), float(np.mean(pct[:, 2]))
        if reserved + internal == 0:
            # plot_fig2.py's rule for such a system: the unallocated share split in halves between
            # reservation and internal fragmentation. Allocated = what sequences hold (used blocks).
            allocated = float(np.mean(pct[:, 0] + pct[:, 1] + pct[:, 2]))
            reserved = internal = (100.0 - allocated) / 2
        out["kv_token_states_pct_artifact"] = token
        out["kv_reservation_pct_artifact"] = reserved
        out["kv_internal_frag_pct_artifact"] = internal
        out["kv_external_frag_pct_artifact"] = 100.0 - (token + reserved + internal)
        # Figure 15: 1 - 1 / (mean reference count), on steps where running sequences hold blocks.
        logical = series["logical_blocks"][sampled]
        physical = series["physical_blocks"][sampled]
        held = (logical > 0) & (physical > 0)
        if held.any():
            out["sharing_saving_pct_artifact"] = 100.0 * (
                1.0 - 1.0 / float(np.mean(logical[held] / physical[held]))
            )
    return out


def summarize(groups: list[SequenceGroup], steps: list[StepRecord | DecodeRun]) -> dict:
    """Every metric of docs/metrics.md for one run."""
    return {**request_metrics(groups), **step_metrics(steps)}
