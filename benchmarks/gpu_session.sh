#!/usr/bin/env bash
# The prepared GPU check, for a session that is lent a CUDA device (one short run; see benchmarks/README.md).
#   bash benchmarks/gpu_session.sh OUT_DIR [PEAK_TFLOPS]
# 1. the GPU-marked tests (bf16 and fp16 training through Accelerate on the demo task);
# 2. bench_methods.py on CLIP ViT-B/16 (random weights: nothing is downloaded), bf16, 8 frames,
#    batch 32: every method and the merged variants, one Markdown table with clips/s and MFU;
# 3. bench_peers.py --only xclip on CUDA: adaptvid's X-CLIP vs transformers' XCLIPModel (fp32);
# 4. bench_data.py on the machine's CPUs: decode clips/s per worker (360p/720p/1080p, decord and PyAV,
#    full vs reduced-size decode) and a DataLoader with 1, 4, 8 and 16 workers: what feeds the GPU.
# Everything it prints also lands in OUT_DIR (device.txt, gpu_tests.txt, bench.md, peers.md, data.md).
# A failed target in 3 is recorded in peers.md and does not stop 4.
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR [PEAK_TFLOPS]}"
peak="${2:-989}"                  # H100 SXM dense bf16; pass 989 for H200 too (same tensor cores)
mkdir -p "$out"
py="${PYTHON:-python}"          # e.g. PYTHON=.venv/bin/python
export HF_HUB_OFFLINE=1
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/device.txt"
"$py" -m pytest -q -m gpu tests/test_learning.py 2>&1 | tee "$out/gpu_tests.txt"
methods="frozen,full,st-adapter,aim,zeroi2v,zeroi2v+merged,evl,lora,lora+merged,side4video,dist,x-clip,vita-clip,coop,efficient-prompt"
"$py" benchmarks/bench_methods.py --device cuda --precision bf16 --frames 8 --batch 32 --repeats 10 \
    --warmup 3 --peak-tflops "$peak" --methods "$methods" 2>&1 | tee "$out/bench.md"
"$py" benchmarks/bench_peers.py --only xclip --device cuda 2>&1 | tee "$out/peers.md" \
    || echo "bench_peers.py exited non-zero (a target failed or it crashed): see $out/peers.md"
"$py" benchmarks/bench_data.py --workers 1,4,8,16 --repeats 2 2>&1 | tee "$out/data.md"
