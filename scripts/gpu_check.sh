#!/usr/bin/env bash
# The GPU checks of this project, on one machine with one CUDA GPU, torch and transformers (no Ray, no vLLM,
# no package index needed). Steps, each under its own time limit, 90 + 150 + 120 + 120 s, 8 minutes at most:
#
#   install  DeepSpeed (and the library's small pure-Python needs) from the wheels that
#            scripts/fetch_gpu_wheels.sh put in wheels/gpu, into a private site folder, when missing
#   tests    pytest tests -m gpu: tests/gpu and the NCCL test (which skips itself below 2 GPUs); modules that
#            need Ray or TRL skip themselves at collection (importorskip)
#   bench    python -m bench.learner --device cuda --dtype bf16 (MFU against a bf16 torch.mm of the same run)
#   sync     python -m bench.sync_cuda: a CUDA learner's buckets verified and loaded in a second CUDA process
#
#   bash scripts/gpu_check.sh [--steps install,tests,bench,sync] [--wheels DIR] [--python PY] [--dry-run]
#
# Prints one summary block at the end and exits non-zero if a step failed. Logs, JSON results and the
# summary go to $OUT when that variable is set (the device tool returns what is written there), else to
# runs/gpu_check/. See docs/gpu.md ("How to run the GPU check").
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)
steps="install,tests,bench,sync"
wheels="wheels/gpu"
py="python3"
dry=0
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="${2:?--steps needs a comma-separated list}"; shift 2 ;;
    --steps=*) steps="${1#*=}"; shift ;;
    --wheels) wheels="${2:?--wheels needs a folder}"; shift 2 ;;
    --wheels=*) wheels="${1#*=}"; shift ;;
    --python) py="${2:?--python needs an interpreter}"; shift 2 ;;
    --python=*) py="${1#*=}"; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a wanted <<< "$steps"
for s in "${wanted[@]}"; do
  case "$s" in install|tests|bench|sync) ;; *) echo "gpu_check: unknown step '$s' in --steps (install, tests, bench, sync)" >&2; exit 2 ;; esac
done
wants() { local s; for s in "${wanted[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

out="${OUT:-$repo/runs/gpu_check}"
mkdir -p "$out"
site="${TMPDIR:-/tmp}/selfplay-gpu-site"
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
summary=()
failed=0

# run_step NAME LIMIT_S CMD...: runs CMD under a time limit, its output to the terminal and $out/NAME.log.
run_step() {
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  if [ "$dry" = 1 ]; then summary+=("$(printf '%-8s %-7s %s' "$name" "planned" "$*")"); return 0; fi
  local start=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  rc=${PIPESTATUS[0]}
  local took=$((SECONDS - start)) word="ok"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then word="TIMEOUT"; failed=1
  elif [ "$rc" != 0 ]; then word="FAILED"; failed=1; fi
  summary+=("$(printf '%-8s %-7s %4ss  rc=%s  log %s' "$name" "$word" "$took" "$rc" "$out/$name.log")")
  return "$rc"
}

echo "== environment"
env_line=$("$py" - <<'EOF' 2>&1
import platform, importlib.util as u
try:
    import torch
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    t = f"torch {torch.__version__}, CUDA {torch.version.cuda}, {dev}"
except Exception as e:  # noqa: BLE001
    t = f"torch not importable: {e}"
missing = [m for m in ("transformers", "deepspeed", "pydantic", "blake3", "hjson", "pyarrow", "safetensors", "yaml",
                       "ray", "vllm") if u.find_spec(m) is None]
print(f"Python {platform.python_version()}; {t}; missing: {', '.join(missing) or 'none'}")
EOF
)
echo "$env_line" | tee "$out/environment.txt"
nvidia-smi -L 2>/dev/null | tee -a "$out/environment.txt"
if [ "$dry" = 0 ] && ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: torch sees no CUDA device here; nothing to check (--dry-run prints the plan)" >&2
  exit 3
fi

if wants install; then
  if "$py" -c "import deepspeed, pydantic, blake3, hjson" 2>/dev/null; then
    summary+=("$(printf '%-8s %-7s %s' install skipped "deepspeed, pydantic, blake3 and hjson already import")")
  elif [ "$dry" = 0 ] && ! ls "$wheels"/deepspeed-* >/dev/null 2>&1; then
    echo "gpu_check: DeepSpeed is missing and $wheels holds no deepspeed-*: run scripts/fetch_gpu_wheels.sh on a" \
      "machine with a package index, and carry $wheels (device tool: carry [\"$wheels\"])" >&2
    summary+=("$(printf '%-8s %-7s %s' install FAILED "no wheels in $wheels")"); failed=1
  else
    # --no-deps: the image has torch, numpy and the rest; --no-build-isolation: DeepSpeed ships only a source
    # distribution, built here with the image's setuptools and torch (no ops compiled ahead: DS_BUILD_OPS=0).
    run_step install 90 "$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade \
      --disable-pip-version-check --target "$site" "$wheels"/*
  fi
fi

if wants tests; then
  run_step tests 150 "$py" -m pytest tests -m gpu -q -p no:cacheprovider -rs \
    --durations=10 --junitxml="$out/pytest.xml"
fi

if wants bench; then
  run_step bench 120 "$py" -m bench.learner --device cuda --dtype bf16 --rows small medium --pairs 96 \
    --medium-pairs 32 --repeats 2 --json "$out/bench_learner.json"
fi

if wants sync; then
  run_step sync 120 "$py" -m bench.sync_cuda --device cuda --preset large --syncs 3 --json "$out/sync_cuda.json"
fi

{
  echo
  echo "==================== selfplay GPU check: summary ===================="
  echo "$env_line"
  echo "commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown); outputs in $out"
  printf '%s\n' "${summary[@]}"
  if [ "$dry" = 0 ]; then
    grep -hE '[0-9]+ (passed|failed|skipped|error)' "$out/tests.log" 2>/dev/null | tail -1 | sed 's/^/tests:  /'
    "$py" - "$out" <<'EOF' 2>/dev/null
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
if (out / "bench_learner.json").exists():
    b = json.loads((out / "bench_learner.json").read_text())
    print(f"bench:  {b['dtype']} torch.mm on {b['device']} {b['matmul_flops'] / 1e12:.1f} TFLOP/s (the MFU denominator)")
    for row, rates in b["pairs_per_s"].items():
        print(f"        {row}: " + ", ".join(f"{c} {v:.1f} pairs/s, MFU {b['mfu'][row][c]:.2%}" for c, v in rates.items()))
if (out / "sync_cuda.json").exists():
    s = json.loads((out / "sync_cuda.json").read_text())
    r = s["syncs"][0]
    print(f"sync:   {s['preset']} {s['precision']}, {r['bytes'] / 2**20:.1f} MiB in {r['buckets']} buckets; median "
          f"{s['median_total_s']:.3f}s per sync; logits max |diff| {max(x['logits_max_abs_diff'] for x in s['syncs']):.3g} "
          f"(against the learner {max(x['learner_logits_max_abs_diff'] for x in s['syncs']):.3g}); "
          f"{'all checks passed' if s['ok'] else 'FAILED syncs ' + str(s['failed_syncs'])}")
EOF
  fi
  if [ "$dry" = 1 ]; then result="dry run, nothing ran"; elif [ "$failed" = 0 ]; then result=PASSED; else result=FAILED; fi
  echo "result: $result"
  echo "====================================================================="
} | tee "$out/summary.txt"
exit "$failed"
