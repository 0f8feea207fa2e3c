#!/usr/bin/env bash
# The whole GPU set in one call, within 10 minutes on a fresh GPU machine (bench/README.md, "The GPU set"):
#
#   bash bench/gpu_all.sh            # inference sd15 + sdxl (stock vs the worker, per option),
#                                    # cold start sd15 + sdxl (disk cold/warm, S3), micro-batching
#                                    # sd15 (4 jobs: batch vs one by one), one JSON line last
#   bash bench/gpu_all.sh --quick    # the same steps on the tiny models (a CPU dry run, ~1-2 min)
#
# Python: $PYTHON, else the project's .venv (make .venv/.installed-from-lock), else python3 (a GPU
# image's, holding torch). Wheels in .whl/ (what that image lacks: diffusers, boto3, moto, ...;
# see bench/README.md) are installed into /tmp/sdsaas-site first. Each step runs under `timeout`
# with what is left of GPU_ALL_BUDGET_S (570 s); a step cut short or failed is reported as such in
# the last line and the next one still runs. Random weights are written once into var/models/bench
# (sd15 fp16 2 GB: ~20 s; sdxl fp16 6.3 GB: ~80 s on 2 cores, less on the GPU host's 16).
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
BUDGET=${GPU_ALL_BUDGET_S:-570}
START=$(date +%s)
OUT=${GPU_ALL_OUT:-var/gpu-all}
rm -rf "$OUT" && mkdir -p "$OUT"

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/sdsaas-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/sdsaas-site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/sdsaas-site/bin:$PATH
fi
export SDSAAS_DEBUG=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# step NAME CAP_S ARGS...: run `python -m ARGS` with at most CAP_S seconds and what the budget
# has left (20 s kept for the summary); its output in $OUT/NAME.log, its last line $OUT/NAME.json.
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START) - 20))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 30 ]; then
    echo "{\"error\": \"skipped: ${left} s of the budget left\"}" >"$OUT/$name.json"
    return
  fi
  echo "== $name ($cap s at most): python -m $*"
  timeout --kill-after=10 "$cap" "$PY" -m "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then
    tail -n 1 "$OUT/$name.log" >"$OUT/$name.json"
  else
    echo "{\"error\": \"exit status $rc (124: over its time)\"}" >"$OUT/$name.json"
  fi
}

if [ "$QUICK" -eq 1 ]; then
  step inference_sd15 240 bench.inference --quick --shape tiny
  step load_sd15 240 bench.load --quick --shape tiny
  step batching_sd15 120 bench.batching --quick --shape tiny
  step inference_sdxl 240 bench.inference --quick --shape tiny-xl --variants none,all
  step load_sdxl 240 bench.load --quick --shape tiny-xl --media disk-warm
else
  step inference_sd15 200 bench.inference --shape sd15 --repeats 5
  step load_sd15 90 bench.load --shape sd15 --repeats 1
  step batching_sd15 60 bench.batching --shape sd15 --batch 4 --repeats 3
  step inference_sdxl 220 bench.inference --shape sdxl --repeats 3 \
    --variants none,fuse_qkv,channels_last,all
  step load_sdxl 150 bench.load --shape sdxl --repeats 1
fi

"$PY" - "$OUT" "$QUICK" "$START" <<'EOF'
import json, sys, time
from pathlib import Path

out, quick, start = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
steps = {}
for name in ("inference_sd15", "load_sd15", "batching_sd15", "inference_sdxl", "load_sdxl"):
    try:
        steps[name] = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError) as exc:
        steps[name] = {"error": f"no JSON line ({exc.__class__.__name__})"}
summary = {"benchmark": "gpu_all", "mode": "quick" if quick else "full"}
for name, result in steps.items():
    if "error" in result:
        summary[f"{name}_error"] = result["error"]
        continue
    summary.setdefault("device", result.get("device"))
    summary.setdefault("device_name", result.get("device_name"))
    for key, value in result.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and key[:4] in (
            "tiny", "sd15", "sdxl"
        ):
            summary[key] = value
summary["ok"] = not any(key.endswith("_error") for key in summary)
summary["wall_s"] = round(time.time() - start, 1)
summary["steps"] = steps
print(json.dumps(summary, sort_keys=True))
EOF
