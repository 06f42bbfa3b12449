"""vLLM's side of bench_throughput.py, run by the Python of vLLM's own virtual environment (vLLM pins a
torch and transformers pagelab cannot share), so it imports nothing from pagelab.

    python vllm_worker.py MODEL_DIR REQUESTS.json DTYPE RESULT.json
"""

import json
import sys
import time


def main() -> None:
    model_dir, req_path, dtype, out_path = sys.argv[1:5]
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    requests = json.load(open(req_path))
    llm = LLM(model=model_dir, dtype=dtype, skip_tokenizer_init=True, seed=0, max_model_len=2048)
    prompts = [TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in requests]
    params = [
        SamplingParams(max_tokens=r["output_len"], temperature=0.0, ignore_eos=True, detokenize=False)
        for r in requests
    ]
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    lens = [len(o.outputs[0].token_ids) for o in outs]
    json.dump({"elapsed_s": elapsed, "output_lens": lens}, open(out_path, "w"))


if __name__ == "__main__":
    main()
