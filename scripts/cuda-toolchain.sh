#!/usr/bin/env bash
# Installs the pinned CUDA compiler (no GPU needed) into .cuda-toolchain/ at the repository root, from the Python
# package registry. build.rs looks there after $NVCC. Idempotent: a second run with the same pins returns at once.
#
# Pins (DEVELOPERS.md): nvcc 13.0 emits PTX the GPU machines' driver (580, CUDA 13.0) loads; newer versions do not.
# cuobjdump/nvdisasm 13.2 read 13.0 cubins and let build.rs check the SASS of every kernel.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${MMENGINE_CUDA_TOOLCHAIN:-$root/.cuda-toolchain}"
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-cuobjdump==13.2.86
  nvidia-cuda-nvdisasm==13.2.86
)
stamp="$dir/.pins"
if [[ -f "$stamp" && "$(cat "$stamp")" == "${pins[*]}" && -x "$dir/nvidia/cu13/bin/nvcc" ]]; then
  exit 0
fi
python="${PYTHON:-$(command -v python3 || command -v python)}"
echo "installing the pinned CUDA toolchain into $dir" >&2
rm -rf "$dir"
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" "${pins[@]}"
echo "${pins[*]}" > "$stamp"
"$dir/nvidia/cu13/bin/nvcc" --version | tail -n 2 >&2
