"""Tensor parallelism on 2 CPU processes (gloo): greedy tokens identical with TP = 1 and TP = 2, also
when the central scheduler preempts by swapping, for OPT and LLaMA (paged/tensor_parallel.py)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from baselines import build_system
from paged import CacheConfig, Engine, SamplingParams, Scheduler, SchedulerConfig, SequenceGroup
from paged.model_runner import ModelRunner
from paged.real_executor import RealExecutor
from paged.tensor_parallel import init_group
from tests.test_model_runner import PROMPTS, engine_greedy, tiny

NEW_TOKENS = 10


def _rank_main(rank, world, store_path, family, num_gpu_blocks, result_path):
    init_group(rank, world, store_path, cuda=False)  # a file rendezvous: no port to race for
    torch.set_num_threads(1)
    try:
        model = tiny(family)  # same seed on every rank: the same weights before sharding
        runner = ModelRunner(model, num_gpu_blocks, 4, 64, tp_rank=rank, tp_size=world)
        if rank != 0:
            from paged.tensor_parallel import worker_loop

            worker_loop(runner)
            return
        from paged.tensor_parallel import broadcast_step

        cache = CacheConfig(num_gpu_blocks=num_gpu_blocks, block_size=4, num_cpu_blocks=64, watermark=0.0)
        memory, cfg = build_system(
            "vllm",
            cache,
            SchedulerConfig(max_num_batched_tokens=128, max_model_len=128, preemption_mode="swap"),
        )
        scheduler = Scheduler(cfg, memory)
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
        groups = [SequenceGroup(str(i), p, params) for i, p in enumerate(PROMPTS)]
        Engine(scheduler, RealExecutor(runner)).run(groups)
        broadcast_step(None)
        result = {
            "tokens": [g.seqs[0].output_token_ids for g in groups],
            "swapped": scheduler.num_swapped_blocks,
            "local_heads": runner.num_heads,
        }
        with open(result_path, "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("family,num_gpu_blocks", [("opt", 64), ("llama", 64), ("llama", 8)])
def test_tp2_gives_the_tokens_of_tp1(family, num_gpu_blocks, tmp_path):
    expected, _ = engine_greedy(tiny(family), PROMPTS, NEW_TOKENS, num_gpu_blocks=num_gpu_blocks, mode="swap")
    path = tmp_path / "result.json"
    mp.spawn(
        _rank_main,
        args=(2, str(tmp_path / "rendezvous"), family, num_gpu_blocks, str(path)),
        nprocs=2,
        join=True,
    )
    result = json.loads(path.read_text())
    assert result["local_heads"] == 2  # 4 heads split over 2 ranks
    if num_gpu_blocks == 8:
        assert result["swapped"] > 0  # the central scheduler's swaps ran on both ranks
    assert result["tokens"] == expected


def test_tp_must_divide_the_heads():
    from paged.tensor_parallel import shard_model

    with pytest.raises(ValueError, match="must divide"):
        shard_model(tiny("llama"), 0, 3)


def test_llm_api_with_tensor_parallel_size_2(tmp_path):
    from paged.llm import LLM
    from tests.test_model_runner import hf_greedy

    model = tiny("opt")
    model.save_pretrained(tmp_path / "ckpt")
    llm = LLM(model=str(tmp_path / "ckpt"), block_size=4, kv_cache_gib=0.01, tensor_parallel_size=2)
    try:
        outs = llm.generate(PROMPTS, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True))
    finally:
        llm.shutdown()
    assert [o.outputs[0].token_ids for o in outs] == [hf_greedy(model, p, NEW_TOKENS) for p in PROMPTS]
