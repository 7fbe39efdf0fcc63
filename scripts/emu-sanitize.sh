#!/usr/bin/env bash
# Runs the emulation tests (tests/emu.rs: every kernel against the golden data) with the kernels' C++ instrumented
# by a sanitizer, the CPU-side stand-in for NVIDIA's compute-sanitizer:
#   address   out-of-bounds reads and writes of global memory (device buffers) and shared memory; any finding
#             aborts the test binary, which fails the run. Runs every emulation test but the command lines'
#             (they run the kernels the library tests run, in a child process).
#   thread    data races: two threads touching one word with no barrier between them, i.e. a missing
#             __syncthreads / __syncwarp. Races inside kernel code fail the run; the Rust side is not
#             instrumented, so its reports (rayon, the test harness) are noise and are dropped here. Runs the
#             per-kernel tests: whole networks (nvlabs_tiny_*, synthesis::, passes::, the golden fit and the command
#             lines) take many minutes each under it; pass filters to choose.
# Usage: scripts/emu-sanitize.sh [address|thread [test name filter...]]   (no argument: both, as the test suite)
# The mmengine binary is built too (the CLI tests run it), so the test binary is picked by its target kind.
# Builds into target/sanitize-<kind> without nvcc (the fatbins are not what is checked). Needs gcc's libasan and
# libtsan (Debian: libgcc-12-dev, which g++ pulls in).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kind="${1:-}"
case "$kind" in
  "")
    "$0" address
    exec "$0" thread
    ;;
  address | thread) shift ;;
  *)
    echo "usage: $0 [address|thread [test name filter...]]" >&2
    exit 2
    ;;
esac
runtime=$(gcc -print-file-name="lib${kind:0:1}san.so")
if [[ ! -f "$runtime" ]]; then
  echo "$0: gcc has no lib${kind:0:1}san.so; install gcc's sanitizer runtimes (Debian: libgcc-12-dev)" >&2
  exit 1
fi
cd "$root"
unset MMENGINE_REQUIRE_NVCC
export CARGO_TARGET_DIR="$root/target/sanitize-$kind"
binary=$(MMENGINE_EMU_SANITIZE=$kind NVCC=/nonexistent cargo test --release --features emu --test emu --no-run \
  --message-format=json 2>/dev/null | grep '"kind":\["test"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
if [[ -z "$binary" ]]; then
  echo "the sanitized build failed; rerun for its errors:" >&2
  echo "  MMENGINE_EMU_SANITIZE=$kind NVCC=/nonexistent CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo test --release --features emu --test emu --no-run" >&2
  exit 1
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

if [[ "$kind" == address ]]; then
  if [[ $# -eq 0 ]]; then
    set -- --skip cli_
  fi
  # This build runs one block at a time (cuda_emu.h), so the tests run one process each, as many at once as there are
  # cores, the whole networks first (the longest: a core that takes one late would finish alone). Each passing
  # test's verdict line, and each failing test's whole output, follow once all have finished.
  # Leak checking would report the emulation's thread pool, which lives until exit by design.
  export LD_PRELOAD="$runtime" ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
  mapfile -t tests < <("$binary" --list "$@" | sed -n 's/: test$//p' |
    awk '{ print (/nvlabs_tiny_|synthesis::|passes::|golden_case/ ? 0 : 1), $0 }' | sort -s -k1,1n | cut -d' ' -f2-)
  if ((${#tests[@]} == 0)); then
    echo "address sanitizer: no test matches $*" >&2
    exit 1
  fi
  cores=$(nproc)
  running=0
  for ((i = 0; i < ${#tests[@]}; i++)); do
    if ((running == cores)); then
      wait -n || true
      running=$((running - 1))
    fi
    (
      status=0
      "$binary" --exact "${tests[i]}" >"$logs/$i" 2>&1 || status=$?
      echo "$status" >"$logs/$i.exit"
    ) &
    running=$((running + 1))
  done
  wait
  failed=0
  for ((i = 0; i < ${#tests[@]}; i++)); do
    if [[ "$(cat "$logs/$i.exit" 2>/dev/null)" == 0 ]]; then
      grep '^test ' "$logs/$i"
    else
      cat "$logs/$i"
      echo "address sanitizer: ${tests[i]} failed (its output is above)" >&2
      failed=1
    fi
  done
  if ((failed)); then
    exit 1
  fi
  echo "address sanitizer: no out-of-bounds access in the emulated kernels (${#tests[@]} tests, $cores at a time)"
  exit 0
fi

if [[ $# -eq 0 ]]; then
  set -- --skip nvlabs_tiny_ --skip synthesis:: --skip passes:: --skip golden_case_e --skip cli_
fi
LD_PRELOAD="$runtime" TSAN_OPTIONS="report_thread_leaks=0:exitcode=0:log_path=$logs/report" "$binary" "$@"
# A report is about kernel code when one of its stacks is in kernels/ (the .cu files or the emulation runtime).
races=$(cat "$logs"/report* 2>/dev/null | awk '
  /^WARNING: ThreadSanitizer/ { report = $0 "\n"; keep = 0; next }
  report != "" { report = report $0 "\n"; if ($0 ~ /kernels\//) keep = 1 }
  /^==================/ && report != "" { if (keep) printf "%s", report; report = "" }')
ignored=$(cat "$logs"/report* 2>/dev/null | grep -c '^WARNING: ThreadSanitizer' || true)
if [[ -n "$races" ]]; then
  printf '%s\n' "$races"
  echo "thread sanitizer: $(grep -c '^WARNING' <<<"$races") report(s) in kernel code" >&2
  exit 1
fi
echo "thread sanitizer: no data race in the emulated kernels ($ignored report(s) about uninstrumented Rust code ignored)"
