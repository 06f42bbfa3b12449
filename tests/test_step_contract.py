"""The one-way engine loop (docs/ARCHITECTURE.md): what an executor receives in the scheduler's output
is exactly the memory policy's state, so an executor never needs to ask the memory manager.

Random workloads (n, beam search, shared prefixes, prefix caching, small caches that force swap and
recompute preemption, separate and mixed steps) on every system; an executor that reads block tables
checks, at every step, that the output names each running sequence's block table as the policy holds it
and each sequence's compute range; at the end no block is held. An executor that does not read them
gets none.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baselines import build_system
from paged import (
    CacheConfig,
    Engine,
    NullExecutor,
    SamplingParams,
    SchedulerConfig,
    SequenceGroup,
    SequenceStatus,
    SharedPrefix,
)
from paged.policy import POLICIES
from paged.scheduler import Scheduler
from tests.shadow import check_invariants

RUNNING = SequenceStatus.RUNNING


class ContractExecutor(NullExecutor):
    """NullExecutor's tokens; checks the SchedulerOutput against the memory policy before each step."""

    needs_block_tables = True

    def __init__(self, memory, mixed: bool = False) -> None:
        super().__init__(step_time_s=1.0, seed=1)
        self.memory = memory  # for the check only: the contract is that an executor needs no such link
        self.mixed = mixed
        self.steps = 0

    def execute(self, out):
        running = [s for g in out.scheduled_groups for s in g.seqs if s.status is RUNNING]
        assert set(out.block_tables) == {s.seq_id for s in running}
        for seq in running:
            assert list(out.block_tables[seq.seq_id]) == list(self.memory.get_block_table(seq))
            start, end = out.compute_range(seq)
            if seq.seq_id in out.prefill_ranges:
                assert out.is_prefill and start == seq.num_computed_tokens
                # a chunk ends before the prompt does (chunked prefill), and then samples nothing
                partial = any(seq in g.seqs for g in out.partial_prefills)
                assert end == len(seq.token_ids) or (end < len(seq.token_ids) and partial)
            else:
                assert (start, end) == (len(seq.token_ids) - 1, len(seq.token_ids))
        # The prompt groups are the last num_prefill_groups (all of a separate prompt step's); the
        # others (a mixed step's) decode.
        groups = out.scheduled_groups
        prompts = groups[len(groups) - out.num_prefill_groups :] if out.is_prefill else []
        assert set(out.prefill_ranges) == {s.seq_id for g in prompts for s in g.seqs if s.status is RUNNING}
        if out.is_prefill and len(prompts) < len(groups):
            assert self.mixed
        self.steps += 1
        return super().execute(out)


request = st.fixed_dictionaries(
    {
        "prompt": st.lists(st.integers(0, 3), min_size=1, max_size=20),
        "max_tokens": st.integers(1, 16),
        "n": st.sampled_from([1, 1, 2, 3]),
        "beam": st.booleans(),
        "arrival": st.integers(0, 6),
        "use_prefix": st.booleans(),
        "priority": st.integers(0, 2),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    system=st.sampled_from(
        ["vllm", "vllm", "orca_max", "orca_pow2", "orca_oracle", "fastertransformer", "vattention"]
    ),
    num_gpu_blocks=st.sampled_from([16, 32, 64]),
    mode=st.sampled_from(["auto", "recompute", "swap"]),
    caching=st.booleans(),
    composition=st.sampled_from(["separate", "mixed", "chunked"]),
    policy=st.sampled_from(sorted(POLICIES)),  # every registered policy (paged/policy.py)
    requests=st.lists(request, min_size=1, max_size=10),
)
def test_the_scheduler_output_carries_the_policy_state(
    system, num_gpu_blocks, mode, caching, composition, policy, requests
):
    vllm = system == "vllm"
    paged = system in ("vllm", "vattention")  # block managers (vAttention's blocks are pages)
    cache = CacheConfig(
        num_gpu_blocks=num_gpu_blocks,
        block_size=4,
        num_cpu_blocks=64,
        watermark=0.0,
        enable_prefix_caching=caching and vllm,
    )
    chunked = composition == "chunked"
    sched_cfg = SchedulerConfig(
        max_num_batched_tokens=8 if chunked else 64,
        max_num_seqs=8 if chunked else 256,
        max_model_len=64,
        preemption_mode=mode,
        step_composition="mixed" if chunked else composition,
        enable_chunked_prefill=chunked,
        policy=policy if system != "fastertransformer" else "fcfs",
    )
    memory, sched_cfg = build_system(system, cache, sched_cfg)
    scheduler = Scheduler(sched_cfg, memory)
    executor = ContractExecutor(memory, mixed=composition != "separate")
    engine = Engine(scheduler, executor)
    prefix = SharedPrefix("p", [1, 2, 3, 1, 2, 3])
    groups = [
        SequenceGroup(
            str(i),
            (prefix.token_ids if r["use_prefix"] and vllm else []) + r["prompt"],
            SamplingParams(max_tokens=r["max_tokens"], n=r["n"], use_beam_search=r["beam"], ignore_eos=True),
            arrival_time=float(r["arrival"]),
            prefix=prefix if r["use_prefix"] and vllm else None,
            priority=r["priority"],
        )
        for i, r in enumerate(requests)
    ]
    engine.run(groups)
    assert executor.steps == engine.num_executed  # every executed step was checked
    for g in groups:  # every request ran to its length or was rejected
        assert g.reject_reason is not None or all(
            s.num_output_tokens == g.sampling_params.max_tokens for s in g.seqs
        )
    # No block leaks: once the prefix is released, every block is free again.
    if paged:
        check_invariants(memory)
        memory.release_prefix(prefix)
        assert memory.gpu.num_free == num_gpu_blocks and memory.cpu.num_free == 64
        check_invariants(memory)
    else:
        assert memory.chunks == {} and memory.arena.num_free == num_gpu_blocks


def test_an_executor_that_reads_no_tables_gets_none():
    memory, sched_cfg = build_system(
        "vllm",
        CacheConfig(num_gpu_blocks=16, block_size=4),
        SchedulerConfig(max_num_batched_tokens=64, max_model_len=64),
    )
    seen = []

    class Recording(NullExecutor):  # needs_block_tables = False, like the simulator's executor
        def execute(self, out):
            seen.append(dict(out.block_tables))
            return super().execute(out)

    groups = [SequenceGroup("a", [1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True))]
    Engine(Scheduler(sched_cfg, memory), Recording()).run(groups)
    assert seen and all(tables == {} for tables in seen)
