"""The real engine's greedy tokens against transformers' generate, on random-weight OPT and LLaMA models:
several prompts of different lengths in one batch, and with caches small enough to preempt."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from baselines import build_system
from paged import CacheConfig, Engine, SamplingParams, Scheduler, SchedulerConfig, SequenceGroup
from paged.model_runner import ModelRunner, RealExecutor


def tiny(family: str):
    torch.manual_seed(0)
    if family == "opt":
        cfg = OPTConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=128,
            vocab_size=120,
            max_position_embeddings=128,
            word_embed_proj_dim=64,
        )
        return OPTForCausalLM(cfg).eval()
    cfg = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=120,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


PROMPTS = [[5, 17, 9, 33, 2, 8, 71], [44, 3], [7, 7, 7, 12, 90, 1, 5, 6, 11, 13, 14, 15, 16, 18]]
NEW_TOKENS = 12


def hf_greedy(model, prompt, n):
    # EOS is an ordinary token here (vLLM's ignore_eos): an id outside the vocabulary never stops
    # generation (min_new_tokens instead would forbid EOS and change the greedy choice).
    never = model.config.vocab_size + 1
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=never, pad_token_id=0
    )
    assert out.shape[1] == len(prompt) + n
    return out[0, len(prompt) :].tolist()


def engine_greedy(
    model, prompts, n, num_gpu_blocks=64, num_cpu_blocks=64, mode="auto", system="vllm", block_size=4
):
    cache = CacheConfig(
        num_gpu_blocks=num_gpu_blocks, block_size=block_size, num_cpu_blocks=num_cpu_blocks, watermark=0.0
    )
    memory, sched_cfg = build_system(
        system, cache, SchedulerConfig(max_num_batched_tokens=128, max_model_len=128, preemption_mode=mode)
    )
    scheduler = Scheduler(sched_cfg, memory)
    runner = ModelRunner(model, num_gpu_blocks, block_size, num_cpu_blocks)
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    groups = [SequenceGroup(str(i), p, params) for i, p in enumerate(prompts)]
    Engine(scheduler, RealExecutor(runner, memory)).run(groups)
    return [g.seqs[0].output_token_ids for g in groups], scheduler


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_greedy_tokens_match_transformers(family):
    model = tiny(family)
    expected = [hf_greedy(model, p, NEW_TOKENS) for p in PROMPTS]
    got, _ = engine_greedy(model, PROMPTS, NEW_TOKENS)
    assert got == expected


@pytest.mark.parametrize("family", ["opt", "llama"])
@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_greedy_tokens_survive_preemption(family, mode):
    model = tiny(family)
    expected = [hf_greedy(model, p, NEW_TOKENS) for p in PROMPTS]
    got, scheduler = engine_greedy(model, PROMPTS, NEW_TOKENS, num_gpu_blocks=8, mode=mode)
    assert scheduler.num_preemptions > 0
    if mode == "swap":
        assert scheduler.num_swapped_blocks > 0
    assert got == expected


def test_a_contiguous_baseline_gives_the_same_tokens():
    model = tiny("opt")
    vllm, _ = engine_greedy(model, PROMPTS, NEW_TOKENS)
    oracle, _ = engine_greedy(model, PROMPTS, NEW_TOKENS, num_gpu_blocks=64, system="orca_oracle")
    assert oracle == vllm


def test_llm_api_greedy_equals_transformers_on_a_saved_checkpoint(tmp_path):
    from paged.llm import LLM

    model = tiny("llama")
    model.save_pretrained(tmp_path / "ckpt")
    llm = LLM(model=str(tmp_path / "ckpt"), block_size=4, kv_cache_gib=0.01, seed=0)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True))
    assert [o.prompt_token_ids for o in outs] == PROMPTS  # prompt order
    assert [o.outputs[0].token_ids for o in outs] == [hf_greedy(model, p, NEW_TOKENS) for p in PROMPTS]


def test_llm_api_errors_name_the_problem(tmp_path):
    from paged.llm import LLM

    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLM(model=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="unknown model preset"):
        LLM(model="opt-14b")


def test_sampling_with_a_seed_is_reproducible():
    from paged.llm import LLM

    llm = LLM(model="opt-125m", block_size=16, kv_cache_gib=0.02, seed=0)
    params = SamplingParams(
        max_tokens=6, temperature=0.8, top_p=0.9, top_k=50, n=3, seed=123, ignore_eos=True
    )
    a = llm.generate([[2, 100, 7]], params)[0]
    b = llm.generate([[2, 100, 7]], params)[0]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert len(a.outputs) == 3 and all(len(o.token_ids) == 6 for o in a.outputs)
