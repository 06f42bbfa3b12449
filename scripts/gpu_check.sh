#!/usr/bin/env bash
# The GPU kit (issue 7): one short run on an NVIDIA GPU that writes everything under
# results/gpu/<card>/. Under 8 minutes on an A100/H100-class card.
#   1. the kernel tests compiled on CUDA (tests/test_kernels.py; they skip CUDA cases without a GPU);
#   2. the model-runner tests on CUDA (greedy and beam tokens against transformers);
#   3. the kernel microbenchmark (benchmarks/bench_kernels.py): paged decode vs a contiguous layout
#      vs a measured device-to-device copy, block sizes 1-256, contexts 64-4096, batch 8 and 32;
#   4. a short real run: an OPT-1.3B-shaped random model, 100 ShareGPT-like requests, fp16, offline
#      (benchmarks/bench_throughput.py --backend pagelab).
# Usage: bash scripts/gpu_check.sh      (from the repository root, in an environment with CUDA torch)
set -euo pipefail
python - <<'EOF' || { echo "error: no CUDA device visible to torch; install the CUDA build of torch (README)"; exit 2; }
import torch, sys
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
card=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_').replace('/', '_'))")
out="results/gpu/${card}"
mkdir -p "$out"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda); print(torch.cuda.get_device_properties(0))" | tee "$out/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$out/env.txt" 2>/dev/null || true
status=0
timeout 180 python -m pytest -q tests/test_kernels.py tests/test_model_runner.py 2>&1 | tee "$out/tests.txt" || status=1
timeout 150 python benchmarks/bench_kernels.py --output "$out/kernels.json" 2>&1 | tee "$out/kernels.txt" || status=1
timeout 120 python benchmarks/bench_throughput.py --model opt-1.3b --backend pagelab --num-requests 100 \
    --dtype float16 --output "$out/throughput_opt1.3b.json" 2>&1 | tee "$out/throughput.txt" || status=1
echo "wrote $out (status $status)"
exit $status
