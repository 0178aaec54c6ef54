#!/usr/bin/env bash
# GPU benchmarks in one prepared script, for a session lent an H100/H200 (CUDA 12/13), <= ~10 minutes.
#
#   bash bench/gpu.sh [--quick]
#
# Runs in a copy of this repo with no venv and no network: it uses whichever python has torch/onnxruntime,
# installs wheels from .whl/ (if carried: fastapi, uvicorn, pydantic-settings, python-multipart,
# onnxruntime-gpu, ...) into /tmp/site, and prints clearly what is missing. Steps, each under `timeout`:
#   1. environment (30 s): GPU, python, package versions, whether ORT's CUDA EP is there
#   2. engine (270 s): python -m bench.gpu_engine -- torch CUDA fp32/TF32/bf16/fp16 (+cudnn.benchmark,
#      +CUDA graph) and, when onnxruntime-gpu loads, ORT CUDA EP fp32/fp16 x HEURISTIC/EXHAUSTIVE x
#      numpy I/O vs IOBinding, + enable_cuda_graph
#   3. service (2 x 150 s): `drrn bench service` against the real app on the GPU, for the fast and the
#      quality model: `drrn serve` with DRRN_PROVIDERS=cuda when onnxruntime-gpu works, else the same app
#      over a torch CUDA engine (fast model only)
# Results: $OUT (the device tool's output dir) if set, else docs/bench/gpu/: gpu.log, gpu_engine.json,
# service_gpu_{fast,quality}.json, latency_throughput_gpu_{fast,quality}.png.
set -u
cd "$(dirname "$0")/.." || exit 1
OUTDIR="${OUT:-docs/bench/gpu}"
mkdir -p "$OUTDIR"
exec > >(tee -a "$OUTDIR/gpu.log") 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 ))s] $*"; }

# shellcheck source=SCRIPTDIR/device_env.sh
. bench/device_env.sh
install_carried_wheels
if ! find_python "numpy torch" "numpy"; then echo "MISSING: no python with numpy found; nothing to run"; exit 1; fi

step "1. environment (python: $PY)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "MISSING: nvidia-smi"
timeout 30 "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
need = {"engine": ["numpy", "torch", "safetensors", "onnx", "onnxruntime"],
        "service": ["fastapi", "uvicorn", "pydantic", "pydantic_settings", "multipart", "httpx", "PIL",
                    "prometheus_client"]}
for group, mods in need.items():
    for m in mods:
        try:
            mod = importlib.import_module(m)
            print(f"  [{group}] {m:18s} {getattr(mod, '__version__', 'ok')}")
        except Exception as exc:
            print(f"  [{group}] {m:18s} MISSING ({type(exc).__name__})")
try:
    import torch
    print("torch cuda:", torch.cuda.is_available(), torch.version.cuda,
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
except Exception as exc:
    print("torch: MISSING", exc)
try:
    import onnxruntime as ort
    print("onnxruntime providers:", ort.get_available_providers())
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("MISSING: onnxruntime-gpu (CPU onnxruntime only): ORT CUDA EP steps will be skipped."
              " Carry an onnxruntime-gpu wheel built for this CUDA in .whl/ to enable them.")
except Exception as exc:
    print("onnxruntime: MISSING", exc)
EOF

step "2. engine benchmark (budget 180 s)"
timeout 270 "$PY" -m bench.gpu_engine --out "$OUTDIR" --budget-s 180 $QUICK || echo "engine step failed or timed out (rc=$?)"

step "3. service load test on the GPU"
if ! "$PY" -c "import fastapi, uvicorn, pydantic_settings, multipart, httpx, PIL, prometheus_client" 2>/dev/null; then
  echo "SKIPPED: service packages missing (see step 1); carry their wheels in .whl/ to run this step"
else
  W=weights/fast.safetensors
  [ -f "$W" ] || W=artifacts/bench/b1u25_c128_untrained.safetensors
  SVC="--concurrency 1,8,32 --duration 10 --engine-seconds 5"
  [ -n "$QUICK" ] && SVC="--concurrency 1,8 --requests 16"
  ORT_CUDA=$("$PY" -c "import onnxruntime as o; print(int('CUDAExecutionProvider' in o.get_available_providers()))" 2>/dev/null || echo 0)
  if [ "$ORT_CUDA" = "1" ]; then
    # Both shipped models, each alone on the GPU (the service serves both; the bench loads one at a time).
    for M in fast quality; do
      # shellcheck disable=SC2086  # $SVC holds several options on purpose
      timeout 150 "$PY" -m drrn bench service --spawn --model "$M" --set DRRN_PROVIDERS=cuda --set DRRN_TILE=256 \
        --set DRRN_MAX_BATCH=16 $SVC --json "$OUTDIR/service_gpu_$M.json" \
        --plot "$OUTDIR/latency_throughput_gpu_$M.png" || echo "service step ($M) failed or timed out (rc=$?)"
    done
  elif "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && [ -f "$W" ]; then
    echo "onnxruntime-gpu unavailable: serving the real app over a torch CUDA fp16 engine instead"
    DRRN_TILE=256 DRRN_MAX_BATCH=16 DRRN_LOG_LEVEL=WARNING "$PY" -m bench.gpu_engine serve-torch --weights "$W" \
      --port 8100 > "$OUTDIR/serve_torch.log" 2>&1 &
    SPID=$!
    for _ in $(seq 1 120); do
      "$PY" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:8100/readyz').status_code != 200)" \
        2>/dev/null && break
      sleep 1
    done
    # shellcheck disable=SC2086
    timeout 150 "$PY" -m drrn bench service --url http://127.0.0.1:8100 $SVC --json "$OUTDIR/service_gpu.json" \
      --plot "$OUTDIR/latency_throughput_gpu.png" || echo "service step failed or timed out (rc=$?)"
    kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null
  else
    echo "SKIPPED: neither onnxruntime-gpu nor torch CUDA with weights ($W) is available"
  fi
fi

step "done; results in $OUTDIR"
ls -la "$OUTDIR"
