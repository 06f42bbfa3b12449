"""The harness's typed configuration: the schema Hydra checks every preset and override against.

Dataclasses with help text are the schema (registered in Hydra's ConfigStore by `register()`); the YAML
files in harness/conf/ (and the model group's in paged/presets/model/) are presets. The `system` group's
schema is `harness.server.ServerConfig`, the same dataclass the simulator and the real backend take. An
unknown key or a wrongly typed value fails in Hydra with its own error message before anything runs, a
value out of range when the dataclasses check themselves (OmegaConf.to_object). Only this module and
harness/__main__.py import Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from baselines import SYSTEMS
from harness.server import ServerConfig
from harness.sim.hardware import GPUSpec
from paged.presets import ModelSpec

CONF_DIR = Path(__file__).resolve().parent / "conf"  # Hydra's presets, packaged with the harness
# Parameters a sweep may vary besides system and request rate, and where each lives.
SWEEPABLE = {
    "block_size": "system.block_size",
    "preemption_mode": "system.preemption_mode",
    "n": "workload.n",
    "beam_width": "workload.n",  # with workload.use_beam_search
    "prefix_len": "workload.prefix_len",
    # Chunked prefill (docs/scheduler.md): true needs system.step_composition=mixed, false a budget of
    # at least max_model_len (sweep_exclude leaves such combinations out of a grid).
    "enable_chunked_prefill": "system.enable_chunked_prefill",
    "max_num_batched_tokens": "system.max_num_batched_tokens",
    "scheduling_policy": "system.scheduling_policy",
    "prefix_eviction": "system.prefix_eviction",
    "host_cache_gib": "system.host_cache_gib",
    "page_map_overlap": "system.page_map_overlap",
    "host_offload_overlap": "system.host_offload_overlap",
}


@dataclass
class WorkloadConf:
    """Which requests arrive (docs/workloads.md)."""

    # synthetic | shared_prefix | chatbot | lengths_csv | trace_csv, or with prompts that share content
    # for the prefix cache (docs/workloads.md, "Prefix reuse"): system_prompts | multi_turn | mooncake
    kind: str = "synthetic"
    # sharegpt: the paper's real ShareGPT length pairs (the artifact's file; docs/workloads.md says where
    # it is looked for); sharegpt_synthetic | alpaca | chatbot: built-in length tables
    dataset: str = "sharegpt"
    path: str | None = None  # a user's CSV for lengths_csv / trace_csv, a Mooncake .jsonl for mooncake
    # trace_csv: the file's format, auto (by its header) | pagelab (arrived_at,...) | azure (Azure LLM
    # inference trace) | burstgpt (docs/workloads.md, "Timestamped traces")
    trace_format: str = "auto"
    # trace_csv: true rescales arrival times to the sweep's request rate as the trace's mean rate (order
    # and burst shape kept), then cuts at duration_s; false keeps the trace's own times; null: true for
    # azure and burstgpt, false for pagelab's own format (as before: its own times, the whole trace).
    # mooncake: the same, null meaning true
    rescale: bool | None = None
    trace_model: str | None = None  # burstgpt: keep only this Model's rows (ChatGPT, GPT-4); null: all
    # the ShareGPT length-pairs CSV (the multi-turn statistics CSV for chatbot's multi-turn trace and
    # multi_turn); null: $PAGELAB_DATA, ../shared/data
    data_path: str | None = None
    arrivals: str = "default"  # poisson | artifact (Poisson per 10 ms quantum); default: by dataset
    seed: int = 0
    burstiness: float = 1.0  # gamma shape of the gaps; 1 = Poisson
    n: int = 1  # parallel samples, or the beam width with use_beam_search
    use_beam_search: bool = False
    prefix_len: int = 0  # shared_prefix: tokens every prompt starts with
    # chatbot: null keeps the built-in table; a probability builds multi-turn histories as the artifact
    # did, each request starting a new conversation with this probability (docs/workloads.md)
    new_conversation_prob: float | None = None
    # Priority classes (system.scheduling_policy=priority serves lower first): each request draws its
    # class independently with these shares (seeded); points.csv then reports each class's latency
    # (docs/metrics.md). Empty: every request has priority 0.
    priority_classes: list[int] = field(default_factory=list)
    priority_shares: list[float] = field(default_factory=list)
    # system_prompts and multi_turn: how many system prompts there are (system_prompts needs >= 1;
    # multi_turn: 0, none), their lengths in tokens (one length for all, or one per prompt), and the
    # exponent of each request's (multi_turn: each conversation's) Zipf choice among them: prompt i with
    # probability proportional to (i + 1)^-exponent; 0: uniform
    num_system_prompts: int = 0
    system_prompt_lens: list[int] = field(default_factory=lambda: [512])
    system_prompt_zipf: float = 1.0
    # multi_turn (docs/workloads.md, "Multi-turn conversations"): the next turn arrives after the
    # previous turn's arrival + its output length x response_time_per_token_s (an assumed answer time:
    # arrivals are fixed before the run) + an exponential think time of mean think_time_s
    think_time_s: float = 30.0
    response_time_per_token_s: float = 0.05
    # multi_turn: a conversation ends before the turn whose prompt + output would pass this many tokens;
    # null: the model's context (system.max_model_len, else its max_position_embeddings)
    max_context_len: int | None = None
    # Workload settings that differ by system, over the rest: the artifact's chatbot runs used a new-
    # conversation probability of 0.5 for vLLM and 0.1 for Orca. Keys are system names.
    by_system: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class BackendConf:
    """Which executor runs the steps (harness/conf/backend/*.yaml)."""

    # sim: the cost model; real: the model runner (random weights of the model preset) on this
    # machine, its KV memory system.kv_cache_gib (default harness.server.REAL_KV_CACHE_GIB)
    name: str = "sim"


@dataclass
class SLOConf:
    """Service-level objectives (docs/metrics.md, "SLOs and goodput"): a request meets them when it
    completed and every latency given a limit is at most it (vLLM's `--goodput`); null: not checked.
    With any limit set, points.csv gains slo_attainment and request_goodput, the capacity table the SLO
    capacity, and the run the SLO plots."""

    ttft_s: float | None = None  # time to first token, s (vLLM's ttft)
    # time per output token after the first, s: (e2e - ttft) / (output tokens - 1); a 1-token output
    # has none and meets it, as in vLLM (vLLM's tpot)
    tpot_s: float | None = None
    e2e_s: float | None = None  # end-to-end latency, s (vLLM's e2el)
    # SLO attainment a rate must reach to count as sustained: the share of all its requests (rejected
    # and unfinished ones included) that meet every limit
    target: float = 0.9

    def limits(self) -> dict[str, float]:
        """The limits given, by name (ttft_s, tpot_s, e2e_s)."""
        given = {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "e2e_s": self.e2e_s}
        return {k: v for k, v in given.items() if v is not None}

    def describe(self) -> str:
        """The limits in words, for tables and plots: "TTFT <= 1 s, TPOT <= 0.1 s"."""
        names = {"ttft_s": "TTFT", "tpot_s": "TPOT", "e2e_s": "E2E latency"}
        return ", ".join(f"{names[k]} <= {v:g} s" for k, v in self.limits().items())


@dataclass
class CapacitySearchConf:
    """Find each system's SLO capacity by bisection on the request rate instead of running the
    request_rates grid (harness.capacity.RateBisection; docs/harness.md). Needs an SLO (slo.*)."""

    enabled: bool = False
    low: float | None = None  # req/s, the first rate run; null: the lowest rate of the system's grid
    high: float | None = None  # req/s, the second; null: the highest rate of the system's grid
    # stop when the bracket [met, missed] is at most max(rel_tol x met, abs_tol) req/s wide
    rel_tol: float = 0.05
    abs_tol: float = 0.0
    max_runs: int = 12  # points per system and sweep value at most, low and high included


@dataclass
class Config:
    """One experiment: a grid of points (system x request rate x sweep values), each a full run."""

    name: str = "default"  # results go to <results_dir>/<name>/<timestamp>/
    model: ModelSpec = MISSING  # paged/presets/model/*.yaml: the same dataclass the simulator uses
    hardware: GPUSpec = MISSING  # harness/conf/hardware/*.yaml
    workload: WorkloadConf = field(default_factory=WorkloadConf)
    system: ServerConfig = field(default_factory=ServerConfig)  # harness/conf/system/*.yaml
    backend: BackendConf = field(default_factory=BackendConf)
    tensor_parallel_size: int = 1
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    request_rates: list[float] = field(default_factory=lambda: [1.0, 2.0])
    # A system's own rate grid, in place of request_rates (the artifact ran one grid per system and
    # figure: experiments/*.sh); systems not listed use request_rates.
    rates_by_system: dict[str, list[float]] = field(default_factory=dict)
    duration_s: float = 3600.0  # trace length
    sweep: dict[str, list[Any]] = field(default_factory=dict)  # other parameters: keys of SWEEPABLE
    # Combinations of the sweep's grid not run: each entry maps some swept keys to one of their values,
    # and every combination with all of those values is left out, e.g. [{enable_chunked_prefill: false,
    # max_num_batched_tokens: 512}] (without chunking a step must hold a whole prompt).
    sweep_exclude: list[dict[str, Any]] = field(default_factory=list)
    capacity_threshold: float = 0.5  # s/token: capacity is the highest rate below it
    slo: SLOConf = field(default_factory=SLOConf)  # SLOs: attainment, goodput, SLO capacity
    capacity_search: CapacitySearchConf = field(default_factory=CapacitySearchConf)
    # sim backend: how beam search's parents are drawn (paged/beam_model.py): calibrated | uniform
    beam_model: str = "calibrated"
    memory_every: int = 4  # Figure 2 accounting every k-th step (an unbiased sample)
    # sim backend: advance runs of plain decode steps at once, results identical to stepping
    # (paged/fast_forward.py, docs/simulator.md); false: step every one
    fast_forward: bool = True
    # End points far past capacity early (harness/overload.py, docs/simulator.md): once the queue has
    # grown over early_stop_window_s and the requests finished in that window average more than
    # early_stop_factor x capacity_threshold s/token; marked early_stopped in points.csv
    early_stop: bool = False
    early_stop_factor: float = 10.0
    early_stop_window_s: float = 300.0
    # [start, end] seconds of the run the artifact-style metrics average over (the artifact's plots cut
    # e.g. [300, 900] s of a 900 s run: docs/metrics.md); None: the whole run
    metrics_window_s: list[float] | None = None
    # Python modules imported before anything runs: your own scheduling policies (register_policy) or
    # other plug-ins (docs/extending.md), e.g. [my_policies]; recorded in config.yaml with the rest
    plugins: list[str] = field(default_factory=list)
    results_dir: str = "results"
    resume: bool = True  # continue the latest unfinished run of the same configuration
    workers: int = 0  # processes running points in parallel; 0: one per CPU core
    plots: bool = True
    plot_ymax: float = 1.0  # y-axis cap of latency plots, s/token (the paper's Figure 12 style)


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=Config)
