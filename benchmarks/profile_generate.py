"""Where a real generate's time goes: torch.profiler over LLM.generate, operators by self CPU time.

    python benchmarks/profile_generate.py                    # 160 prompts of 300 tokens, 40 new each
    python benchmarks/profile_generate.py --shapes           # grouped by input shape too
    python benchmarks/profile_generate.py --model ~/.cache/pagelab/smollm2-135m-instruct --dtype float32 \
        --prompts 32 --prompt-len 128 --max-tokens 128    # decode-heavy, SmolLM2 fp32

A prompt-heavy offline batch on the OPT-125m-shaped random model (bf16, 2 threads), after a warm-up
generate. This is the profile docs/real_engine.md quotes for the ReLU and prompt-attention fixes:
inside the engine, unlike in an isolated loop, fresh large activations pay allocator page faults.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="opt-125m", help="a preset (random weights) or a checkpoint directory")
    ap.add_argument("--prompts", type=int, default=160)
    ap.add_argument("--prompt-len", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shapes", action="store_true", help="group operators by input shape")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from paged import SamplingParams
    from paged.llm import LLM

    llm = LLM(model=args.model, dtype=args.dtype, kv_cache_gib=4)
    g = torch.Generator().manual_seed(0)
    vocab = llm.model.config.vocab_size
    prompts = [
        torch.randint(100, min(50000, vocab), (args.prompt_len,), generator=g).tolist()
        for _ in range(args.prompts)
    ]
    llm.generate(prompts[:4], SamplingParams(max_tokens=4, ignore_eos=True, temperature=0))  # warm-up
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True, temperature=0)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        llm.generate(prompts, params)
    print(f"generate: {time.perf_counter() - start:.1f} s (profiled)")
    table = prof.key_averages(group_by_input_shape=args.shapes)
    print(table.table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
