"""Priority scheduling (`SchedulerConfig.policy="priority"`, vLLM's scheduling_policy): queues in
(priority, arrival) order, lower first, and a waiting group that cannot be admitted preempts running
groups of a lower priority. The shared property tests (tests/test_properties.py, test_step_contract.py,
test_fast_forward.py) run it on random workloads with random priorities; these are the rules case by
case."""

from __future__ import annotations

import pytest

from paged import NullExecutor, SchedulerConfig
from paged.sequence import SequenceStatus
from tests.conftest import make_group, make_scheduler
from tests.shadow import check_invariants


def step(sched, now=0.0):
    out = sched.schedule(now)
    finished = sched.postprocess(out, NullExecutor().execute(out).outputs, now)
    return out, finished


def prio(request_id, prompt, priority, arrival=0.0, **kw):
    g = make_group(request_id, prompt, arrival=arrival, **kw)
    g.priority = priority
    return g


@pytest.mark.parametrize("composition", ["separate", "mixed"])
def test_the_waiting_queue_is_in_priority_then_arrival_order(composition):
    sched, _ = make_scheduler(policy="priority", step_composition=composition)
    for i, p in enumerate([2, 0, 1, 0, 2]):
        sched.add(prio(str(i), [1, 2, 3], p, arrival=float(i)))
    assert [g.request_id for g in sched.waiting] == ["1", "3", "2", "0", "4"]
    fcfs, _ = make_scheduler()
    for i, p in enumerate([2, 0, 1]):
        fcfs.add(prio(str(i), [1, 2, 3], p, arrival=float(i)))
    assert [g.request_id for g in fcfs.waiting] == ["0", "1", "2"]  # fcfs ignores priority


@pytest.mark.parametrize("composition", ["separate", "mixed"])
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_a_waiting_high_priority_request_preempts_a_lower_one(composition, mode):
    """Cache of 8 blocks of 4: the low-priority request holds 6; the urgent one needs 4 and is
    admitted in the step that preempts it (by recomputation, whatever the mode)."""
    sched, manager = make_scheduler(
        num_gpu_blocks=8, policy="priority", step_composition=composition, preemption_mode=mode
    )
    low = prio("low", range(22), 5, max_tokens=8)
    sched.add(low)
    step(sched, 0.0)
    urgent = prio("urgent", range(14), 0, arrival=1.0, max_tokens=2)
    sched.add(urgent)
    out, _ = step(sched, 1.0)
    assert out.preempted == [low] and urgent in out.scheduled_groups
    assert low.seqs[0].status is SequenceStatus.WAITING and not sched.swapped
    t = 2.0
    while sched.has_unfinished:
        step(sched, t)
        t += 1
        assert t < 100
    assert urgent.metrics.finished_time < low.metrics.finished_time
    assert low.seqs[0].num_output_tokens == 8  # nothing lost to the preemption
    check_invariants(manager)
    assert manager.gpu.num_free == 8


def test_equal_priority_never_preempts():
    sched, _ = make_scheduler(num_gpu_blocks=8, policy="priority")
    first = prio("first", range(22), 1, max_tokens=8)
    sched.add(first)
    step(sched, 0.0)
    sched.add(prio("second", range(14), 1, arrival=1.0, max_tokens=2))
    out, _ = step(sched, 1.0)
    assert not out.preempted and out.scheduled_groups == [first]


def test_a_running_high_priority_request_is_the_last_victim():
    """When decoding runs out of memory, the lowest priority goes first, not the latest arrival."""
    sched, _ = make_scheduler(num_gpu_blocks=6, policy="priority", step_composition="mixed")
    urgent = prio("urgent", range(8), 0, arrival=1.0, max_tokens=12)
    low = prio("low", range(8), 3, arrival=0.0, max_tokens=12)
    sched.add(low)
    sched.add(urgent)
    preempted = []
    t = 0.0
    while sched.has_unfinished:
        out, _ = step(sched, t)
        preempted += [g.request_id for g in out.preempted]
        t += 1
        assert t < 100
    assert preempted and set(preempted) == {"low"}


def test_bad_policy_names_the_choices():
    with pytest.raises(ValueError, match="fcfs, priority"):
        SchedulerConfig(policy="edf")
    with pytest.raises(ValueError, match="iteration"):
        SchedulerConfig(policy="priority", batching="request")


# ---------------------------------------------------------------- the harness
def test_the_priority_preset_protects_the_urgent_class_in_the_simulator(tmp_path):
    """exp=priority at a smoke size: each class's latency in points.csv and class_latency.png; past
    capacity the urgent class's p99 TTFT is far lower under priority scheduling than under FCFS,
    and the background class's no lower."""
    import csv

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from harness.config import CONF_DIR, register
    from harness.experiment import run_experiment

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        raw = compose(
            config_name="config",
            overrides=["exp=priority", "request_rates=[2.25]", "duration_s=300", f"results_dir={tmp_path}"],
        )
    cfg = OmegaConf.to_object(raw)
    run = run_experiment(cfg, OmegaConf.to_yaml(raw, resolve=True), progress=False)
    rows = {r["scheduling_policy"]: r for r in csv.DictReader(open(run / "points.csv"))}
    fcfs, prio = rows["fcfs"], rows["priority"]
    assert int(fcfs["class0_num_requests"]) + int(fcfs["class1_num_requests"]) == int(fcfs["num_requests"])
    assert 0.1 < int(fcfs["class0_num_requests"]) / int(fcfs["num_requests"]) < 0.3  # the 20% share
    assert float(prio["class0_p99_ttft_ms"]) < 0.2 * float(fcfs["class0_p99_ttft_ms"])
    assert float(prio["class1_p99_ttft_ms"]) >= float(fcfs["class1_p99_ttft_ms"]) * 0.9
    assert (run / "class_latency.png").stat().st_size > 10_000
    requests = list(csv.DictReader(open(next((run / "requests").iterdir()))))
    assert {r["priority"] for r in requests} == {"0", "1"}


def test_bad_priority_classes_name_the_fix():
    from harness.config import Config
    from harness.experiment import ExperimentError, validate

    cfg = Config()
    cfg.workload.priority_classes, cfg.workload.priority_shares = [0, 1], [1.0]
    with pytest.raises(ExperimentError, match="priority_shares"):
        validate(cfg)


def test_a_registered_policy_orders_the_queues():
    """docs/extending.md's example: shortest prompt first, no preemption for waiting requests."""
    from paged.policy import POLICIES, SchedulingPolicy, register_policy

    @register_policy
    class ShortestPromptFirst(SchedulingPolicy):
        name = "test_spf"
        by_arrival = False

        def key(self, group):
            return group.num_prompt_tokens, group.arrival_time

    try:
        sched, _ = make_scheduler(policy="test_spf", max_num_seqs=1)
        for i, n in enumerate([9, 3, 6]):
            sched.add(make_group(str(i), range(n), arrival=float(i), max_tokens=1))
        order = []
        t = 0.0
        while sched.has_unfinished:
            out, _ = step(sched, t)
            order += [g.request_id for g in out.scheduled_groups if out.is_prefill]
            t += 1
        assert order == ["1", "2", "0"]
    finally:
        del POLICIES["test_spf"]


def test_the_llm_api_takes_priorities_and_keeps_greedy_tokens(llm_engines):
    """LLM(scheduling_policy="priority").generate(..., priority=[...]): vLLM's arguments. One sequence
    at a time (max_num_seqs=1), the requests finish in priority order instead of submission order;
    the greedy tokens do not change."""
    from paged.llm import LLM
    from paged.sampling_params import SamplingParams as SP

    engines = llm_engines

    def generate(llm, **kw):
        outputs = llm.generate(prompts, params, **kw)
        index = {o.request_id: i for i, o in enumerate(outputs)}
        order = [index[g.request_id] for r in engines[-1].steps for g in r.finished]
        return [o.outputs[0].token_ids for o in outputs], order

    params = SP(max_tokens=4, temperature=0.0, ignore_eos=True)
    prompts = [[2, 100, 7], [2, 5, 6, 8], [2, 9]]
    kw = dict(model="opt-125m", kv_cache_gib=0.02, max_model_len=256, max_num_seqs=1)
    fcfs = LLM(**kw)
    prio = LLM(**kw, scheduling_policy="priority")
    a, fcfs_order = generate(fcfs)
    b, prio_order = generate(prio, priority=[2, 0, 1])
    assert fcfs_order == [0, 1, 2] and prio_order == [1, 2, 0]
    assert a == b
    with pytest.raises(ValueError, match="priorities for 3 prompts"):
        prio.generate(prompts, params, priority=[0])
