#!/usr/bin/env bash
# Fetch, on a CPU machine with a package index, what scripts/gpu_check.sh installs on the lent GPU machine,
# which has no index: DeepSpeed (a source distribution only) and the packages the library needs that the
# GPU image lacks. The image ("cuda", Python 3.12) already holds torch, transformers, pyarrow, numpy,
# safetensors, tokenizers, einops, msgpack, ninja, psutil, py-cpuinfo, tqdm, packaging, pyyaml, rich,
# setuptools and wheel; it lacks deepspeed, hjson, pydantic (with pydantic-core, annotated-types,
# typing-inspection) and blake3.
#
#   bash scripts/fetch_gpu_wheels.sh [DEST]        # DEST defaults to wheels/gpu (git-ignored)
#
# Then carry DEST with the device tool (carry: ["wheels/gpu"]). GPU_PYTHON picks the target Python
# (default 3.12, the image's). Versions are the ones this project's CPU environment runs.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-wheels/gpu}"
py="${GPU_PYTHON:-3.12}"
pip=(python3 -m pip)
[ -x .venv/bin/python ] && pip=(.venv/bin/python -m pip)
mkdir -p "$dest"

# Pure Python, or a source distribution (DeepSpeed publishes no wheel): any Python.
"${pip[@]}" download -q --no-deps -d "$dest" deepspeed==0.19.8
"${pip[@]}" download -q --no-deps --only-binary=:all: -d "$dest" \
  hjson==3.1.0 pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5
# Compiled: for the GPU machine's CPython and platform, not this one's.
"${pip[@]}" download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest" pydantic-core==2.50.5 blake3==1.0.11

ls -la "$dest"
total=$(du -sm "$dest" | cut -f1)
echo "wheels for the GPU check in $dest: ${total} MiB (the device tool carries at most 64 MiB a call)"
