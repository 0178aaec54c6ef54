#!/usr/bin/env bash
# Fine-tune the shipped quality model on a lent GPU, in one prepared call (recipe quality-finetune-gpu).
#
#   bash training/gpu_finetune.sh [MINUTES]        # default 7: the training cap (the call's 600 s less start-up)
#
# Measured on an H200 (2026-12-04): 10,000 steps in 3.6 min of training, 254 s for the whole call.
#
# Meant for the device tool, which sends the repository and not ../shared: copy the data in first, into a
# folder git ignores, and carry it:
#   mkdir -p .device-data && cp -r ../shared/datasets/{T91,BSD200,Set5} .device-data/
#   run: bash training/gpu_finetune.sh 7   carry: [".device-data", ".whl"]   timeout_s: 600
# Wheels in .whl/ (safetensors, tqdm, ... if the machine's python lacks them) are installed into /tmp/site.
# Results under $OUT (else runs/quality-ft-gpu/): log.jsonl, recipe.json, last.safetensors (the shipped
# candidate: the last step, decided in advance), best.safetensors (Set5 only, for the curve), train.log.
# Evaluate last.safetensors afterwards on the CPU through the deployed pipeline:
#   drrn eval --model PATH/last.safetensors --data ../shared/datasets/{Set5,Set14,BSD100} --scales 2 3 4
# Knobs for a CPU smoke run of this script: DRRN_FT_DEVICE=cpu DRRN_FT_MAX_STEPS=2.
set -u
cd "$(dirname "$0")/.." || exit 1
MINUTES="${1:-7}"
OUTDIR="${OUT:-runs/quality-ft-gpu}"
DATA="$(realpath "${DRRN_DATA:-.device-data}")"
DEVICE="${DRRN_FT_DEVICE:-cuda}"
mkdir -p "$OUTDIR"
exec > >(tee -a "$OUTDIR/train.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# shellcheck source=SCRIPTDIR/../bench/device_env.sh
. bench/device_env.sh
install_carried_wheels
if ! find_python "torch numpy safetensors tqdm PIL"; then
  echo "MISSING: no python with torch, numpy, safetensors, tqdm and Pillow; carry their wheels in .whl/"
  exit 1
fi
for d in T91 BSD200 Set5; do
  [ -d "$DATA/$d" ] || { echo "MISSING: $DATA/$d (copy ../shared/datasets/$d there and carry it)"; exit 1; }
done
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# The recipe names ../shared/datasets; here the data is wherever DATA points.
RECIPE="$OUTDIR/quality-finetune-gpu.toml"
sed "s#\.\./shared/datasets#$DATA#g" training/recipes/quality-finetune-gpu.toml > "$RECIPE"
STEPS=()
[ -n "${DRRN_FT_MAX_STEPS:-}" ] && STEPS=(--max-steps "$DRRN_FT_MAX_STEPS")
RESUME=()
[ -f "$OUTDIR/run/checkpoint.pt" ] && RESUME=(--resume)
DRRN_CACHE_DIR="${DRRN_CACHE_DIR:-/tmp/drrn-cache}" timeout $(( ${MINUTES%.*} * 60 + 150 )) \
  "$PY" -m drrn train --recipe "$RECIPE" --init weights/quality.safetensors --out "$OUTDIR/run" \
  --device "$DEVICE" --max-minutes "$MINUTES" "${STEPS[@]}" "${RESUME[@]}"
echo "drrn train exit status $?"
ls -la "$OUTDIR/run"
