"""The real engine's greedy tokens against transformers' generate, on random-weight OPT and LLaMA models:
several prompts of different lengths in one batch, and with caches small enough to preempt."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from baselines import build_system
from paged import CacheConfig, Engine, SamplingParams, Scheduler, SchedulerConfig, SequenceGroup
from paged.model_runner import ModelRunner
from paged.real_executor import RealExecutor


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
    if mode == "cost":  # measured on this machine before the first request (paged/preemption.py)
        scheduler.preemption_costs = runner.measure_preemption_costs(num_tokens=16)
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    groups = [SequenceGroup(str(i), p, params) for i, p in enumerate(prompts)]
    Engine(scheduler, RealExecutor(runner)).run(groups)
    return [g.seqs[0].output_token_ids for g in groups], scheduler


@pytest.mark.parametrize("family", ["opt", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_greedy_tokens_match_transformers(family, dtype):
    model = tiny(family).to(dtype)
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
    # Beam search through the API: n is the beam width, outputs best first.
    beam = SamplingParams(max_tokens=6, temperature=0.0, n=3, use_beam_search=True, ignore_eos=True)
    outs = llm.generate(PROMPTS[:2], beam)
    never = model.config.vocab_size + 1
    assert [[c.token_ids for c in o.outputs] for o in outs] == [
        hf_beams(model, p, 6, 3, never) for p in PROMPTS[:2]
    ]


def test_logprobs_equal_transformers_log_softmax(tmp_path):
    """SamplingParams.logprobs = k: each output token's logprob and the k most likely tokens at its
    position, as transformers' per-step logits give them (greedy; with sampling, the sampled token's
    value is its logprob under the unscaled distribution)."""
    from paged.llm import LLM

    model = tiny("llama")
    model.save_pretrained(tmp_path / "ckpt")
    llm = LLM(model=str(tmp_path / "ckpt"), block_size=4, kv_cache_gib=0.01, seed=0)
    k = 3
    outs = llm.generate(
        PROMPTS, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, logprobs=k)
    )
    never = model.config.vocab_size + 1
    for prompt, out in zip(PROMPTS, outs):
        ref = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=never,
            pad_token_id=0, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
        got = out.outputs[0]
        assert len(got.logprobs) == NEW_TOKENS
        total = 0.0
        for token, top, logits in zip(got.token_ids, got.logprobs, ref.logits):
            lp = torch.log_softmax(logits[0].float(), -1)
            values, ids = torch.topk(lp, k)
            assert set(top) == set(ids.tolist()) | {token}  # greedy: the token is the top one
            for t, v in top.items():
                assert v == pytest.approx(float(lp[t]), abs=1e-4)
            total += top[token]
        assert got.cumulative_logprob == pytest.approx(total, abs=1e-5)
    # Sampling (n=2) and logprobs=0: the sampled token alone, valued under the unscaled distribution.
    sampled = llm.generate(
        [PROMPTS[0]], SamplingParams(max_tokens=4, temperature=0.7, n=2, seed=1, ignore_eos=True, logprobs=0)
    )[0]
    for o in sampled.outputs:
        assert [list(d) for d in o.logprobs] == [[t] for t in o.token_ids]
        assert sum(d[t] for d, t in zip(o.logprobs, o.token_ids)) == pytest.approx(o.cumulative_logprob)
    # Without logprobs nothing is kept.
    plain = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
    assert plain[0].outputs[0].logprobs is None
    with pytest.raises(ValueError, match="logprobs must be between 0 and 20"):
        SamplingParams(logprobs=21)


def test_llm_api_errors_name_the_problem(tmp_path):
    from paged.llm import LLM

    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLM(model=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="unknown model preset"):
        LLM(model="opt-14b")


def test_sampling_with_a_seed_is_reproducible():
    from paged.llm import LLM

    llm = LLM(model="opt-125m", block_size=16, kv_cache_gib=0.02, max_model_len=256, seed=0)
    params = SamplingParams(
        max_tokens=6, temperature=0.8, top_p=0.9, top_k=50, n=3, seed=123, ignore_eos=True
    )
    a = llm.generate([[2, 100, 7]], params)[0]
    b = llm.generate([[2, 100, 7]], params)[0]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert len(a.outputs) == 3 and all(len(o.token_ids) == 6 for o in a.outputs)
    # A seeded request samples from its own generator: the same tokens in another batch.
    other = SamplingParams(max_tokens=4, temperature=1.0, ignore_eos=True)
    c = llm.generate([[5, 6, 7, 8], [2, 100, 7]], [other, params])[1]
    assert sorted(o.token_ids for o in c.outputs) == sorted(o.token_ids for o in a.outputs)
    with pytest.raises(ValueError, match="less than one"):
        LLM(model="opt-125m", kv_cache_gib=0.02)  # 2048-token sequences cannot fit 0.02 GiB


def test_kv_cache_sizing_from_a_memory_profile():
    from paged.llm import kv_blocks_from_profile

    gib = 1024**3
    # 80 GiB device, 90% usable, 30 GiB of weights and activation peak, 1 MiB blocks.
    assert kv_blocks_from_profile(80 * gib, 0.9, 30 * gib, 1024**2) == int((72 - 30) * 1024)
    assert kv_blocks_from_profile(8 * gib, 0.5, 6 * gib, 1024**2) == 0


def hf_beams(model, prompt, n, width, eos):
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=n,
        do_sample=False,
        num_beams=width,
        num_return_sequences=width,
        length_penalty=1.0,
        eos_token_id=eos,
        pad_token_id=0,
    )
    beams = []
    for row in out[:, len(prompt) :].tolist():
        if eos in row:
            row = row[: row.index(eos) + 1]
        beams.append(row)
    return beams


def engine_beams(model, prompts, n, width, eos, num_gpu_blocks=64, mode="auto", ignore_eos=False):
    cache = CacheConfig(num_gpu_blocks=num_gpu_blocks, block_size=4, num_cpu_blocks=64, watermark=0.0)
    memory, sched_cfg = build_system(
        "vllm", cache, SchedulerConfig(max_num_batched_tokens=128, max_model_len=128, preemption_mode=mode)
    )
    scheduler = Scheduler(sched_cfg, memory)
    runner = ModelRunner(model, num_gpu_blocks, 4, 64)
    params = SamplingParams(
        max_tokens=n, temperature=0.0, n=width, use_beam_search=True, ignore_eos=ignore_eos
    )
    groups = [SequenceGroup(str(i), p, params, eos_token_id=eos) for i, p in enumerate(prompts)]
    Engine(scheduler, RealExecutor(runner)).run(groups)
    from paged.beam_search import best_hypotheses

    assert memory.gpu.num_free == num_gpu_blocks and memory.cpu.num_free == 64  # every beam freed
    return [[s.output_token_ids for s in best_hypotheses(g)] for g in groups], scheduler


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_beam_search_matches_transformers_without_eos(family):
    model = tiny(family)
    never = model.config.vocab_size + 1
    expected = [hf_beams(model, p, 8, 3, never) for p in PROMPTS]
    got, _ = engine_beams(model, PROMPTS, 8, 3, never)
    assert got == expected


# EOS ids chosen so that hypotheses end at different lengths (found by scanning the vocabulary); with
# 96 every hypothesis of the second prompt ends early, so the early-stopping heuristic decides.
@pytest.mark.parametrize("family,eos", [("opt", 18), ("llama", 13), ("llama", 42), ("llama", 96)])
def test_beam_search_matches_transformers_when_beams_end_at_eos(family, eos):
    model = tiny(family)
    expected = [hf_beams(model, p, 10, 4, eos) for p in PROMPTS]
    assert any(len(b) < 10 for beams in expected for b in beams)  # the test exercises EOS
    got, _ = engine_beams(model, PROMPTS, 10, 4, eos)
    assert got == expected


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_beam_search_survives_preemption(mode):
    model = tiny("llama")
    never = model.config.vocab_size + 1
    expected = [hf_beams(model, p, 8, 3, never) for p in PROMPTS]
    got, scheduler = engine_beams(model, PROMPTS, 8, 3, never, num_gpu_blocks=14, mode=mode)
    assert scheduler.num_preemptions > 0
    assert got == expected
