"""pagelab serve MODEL [options]: an OpenAI-compatible server (docs/serving.md).

    pagelab serve smollm2-135m                                   # the real checkpoint on this machine
    pagelab serve opt-125m --kv-cache-gib 0.5                    # a preset with random weights
    pagelab serve opt-13b --backend sim --hardware a100-40gb --system orca_oracle   # a simulated A100
    pagelab serve opt-13b --backend sim --enable-chunked-prefill --max-num-batched-tokens 512
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "smollm2-135m", "prompt": "The capital of France is", "max_tokens": 16}'
"""

from __future__ import annotations

import argparse
import logging
import sys

from paged.policy import POLICIES


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pagelab serve", description=__doc__.split("\n")[0])
    ap.add_argument(
        "model", help="a checkpoint directory, smollm2-135m, or a model preset (opt-125m, opt-13b, ...)"
    )
    ap.add_argument(
        "--backend",
        choices=["real", "sim"],
        default="real",
        help="real: the model on this machine; sim: the preset's shapes on --hardware, "
        "timed by the cost model",
    )
    ap.add_argument(
        "--system",
        default="vllm",
        help="memory policy: vllm, orca_max, orca_pow2, orca_oracle, fastertransformer",
    )
    ap.add_argument(
        "--hardware", default="a100-40gb", help="sim backend: GPU preset (a100-40gb, a100-80gb, h100-80gb)"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument(
        "--kv-cache-gib", type=float, default=None, help="KV cache memory (real, CPU: default 4 GiB)"
    )
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument(
        "--enable-chunked-prefill",
        action="store_true",
        help="cut prompts into chunks that share each step with the decodes (vLLM's flag; docs/scheduler.md)",
    )
    ap.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="tokens one step may compute; default 512 with --enable-chunked-prefill (vLLM's), else "
        "max(2560, max model length)",
    )
    ap.add_argument(
        "--max-num-seqs",
        type=int,
        default=256,
        help="sequences one step may run (with chunked prefill, at most the token budget)",
    )
    ap.add_argument(
        "--scheduling-policy",
        default="fcfs",
        choices=sorted(POLICIES),
        help="fcfs: arrival order; priority: requests' `priority` field, lower first (vLLM's flag); "
        "cache_aware: longest cached prefix first (paged/policy.py, docs/scheduler.md)",
    )
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument(
        "--dtype",
        default="auto",
        help="real backend: auto (fp16 on a GPU; on a CPU bf16 where native, else fp32), float32, bfloat16",
    )
    ap.add_argument("--max-waiting", type=int, default=1024, help="waiting requests beyond this get 503")
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def serve(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    import uvicorn

    from serving.app import create_app
    from serving.backend import load_backend

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        backend = load_backend(
            args.model,
            args.backend,
            args.system,
            args.hardware,
            args.kv_cache_gib,
            args.max_model_len,
            args.block_size,
            args.dtype,
            args.seed,
            args.served_model_name,
            enable_chunked_prefill=args.enable_chunked_prefill,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_num_seqs=args.max_num_seqs,
            scheduling_policy=args.scheduling_policy,
        )
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    logging.info("serving %s at http://%s:%d", backend.description, args.host, args.port)
    app = create_app(backend, max_waiting=args.max_waiting)
    # uvicorn stops accepting on SIGTERM, lets in-flight requests finish, then runs the app's shutdown,
    # which stops the engine (aborting what is left).
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)


def main(argv: list[str] | None = None) -> None:
    """The `pagelab` console script: `pagelab serve ...`."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "serve":
        print("usage: pagelab serve MODEL [options]  (pagelab serve --help)", file=sys.stderr)
        sys.exit(2)
    serve(argv[1:])


if __name__ == "__main__":
    serve()
