#!/usr/bin/env bash
# The GPU checks and benchmarks of a session that is lent a GPU machine, from binaries built on a machine without
# one (the GPU machine has the CUDA driver but no Rust toolchain, and a call carries at most 64 MiB).
#
#   here:   scripts/gpu-session.sh pack
#           builds the release binary and the GPU test binary (with the pinned nvcc), strips them and packs them
#           with the golden cases the GPU tests read into device-carry/bundle.tar.gz (about 35 MB; gitignored).
#   there:  scripts/gpu-session.sh run        (device tool: carry ["device-carry"], command as shown)
#           unpacks to /tmp and writes two files into $OUT (default ./gpu-out; the device tool returns at most 8):
#           log.txt, every step's output under a header with its exit status and time, and results.jsonl, one line
#           {"step": ..., "result": ...} per JSON-printing step (doctor, selftest per precision, bench per config and
#           precision). The fit timings (cpu and cuda) are in log.txt.
#
# Each step has its own time limit so one hang cannot eat the call; the whole run takes a few minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."

golden_cases=(ops nvlabs_tiny nvlabs_tiny_clamp rosinality_tiny micromotion_rpca)

pack() {
    set -e
    scripts/cuda-toolchain.sh >/dev/null
    export MMENGINE_REQUIRE_NVCC=1
    cargo build --release --features emu
    # The GPU test binary: cargo prints its path among the test executables it built.
    local gpu_test
    gpu_test=$(cargo test --release --features emu --test gpu --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
    [ -x "$gpu_test" ] || { echo "gpu-session: no GPU test binary found" >&2; exit 1; }
    local stage
    stage=$(mktemp -d)
    mkdir -p "$stage/bin" "$stage/golden"
    objcopy --strip-debug target/release/mmengine "$stage/bin/mmengine"
    objcopy --strip-debug "$gpu_test" "$stage/bin/gpu-tests"
    for c in "${golden_cases[@]}"; do cp -r "../shared/golden/$c" "$stage/golden/"; done
    mkdir -p device-carry
    tar -C "$stage" -czf device-carry/bundle.tar.gz bin golden
    rm -rf "$stage"
    du -h device-carry/bundle.tar.gz
}

# step NAME SECONDS CMD...: runs CMD with a time limit; its output goes to log.txt, and a JSON line it prints to
# results.jsonl.
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS out
    out=$(timeout "$limit" "$@" 2>"$OUT/stderr.tmp")
    local rc=$?
    {
        echo "=== $name: exit $rc after $((SECONDS - start)) s: $*"
        echo "$out"
        cat "$OUT/stderr.tmp"
    } >>"$OUT/log.txt"
    rm -f "$OUT/stderr.tmp"
    local json
    json=$(printf '%s\n' "$out" | grep '^{' | tail -n 1)
    [ -n "$json" ] && printf '{"step":"%s","exit":%d,"result":%s}\n' "$name" "$rc" "$json" >>"$OUT/results.jsonl"
    echo "$name: exit $rc after $((SECONDS - start)) s"
}

run() {
    OUT=${OUT:-gpu-out}
    mkdir -p "$OUT"
    local root=/tmp/mmengine-gpu
    rm -rf "$root" && mkdir -p "$root"
    tar -C "$root" -xzf device-carry/bundle.tar.gz ||
        { echo "gpu-session: no device-carry/bundle.tar.gz: run 'scripts/gpu-session.sh pack' here first"; exit 1; }
    local mm=$root/bin/mmengine
    export MMENGINE_GOLDEN=$root/golden

    step nvidia-smi 30 nvidia-smi
    step doctor 60 "$mm" doctor --json
    step gpu-tests 300 "$root/bin/gpu-tests"
    for p in fp32 tf32 fp16 bf16; do
        step "selftest-$p" 120 "$mm" selftest --device cuda --precision "$p" --json
    done
    for p in fp32 tf32 fp16 bf16; do
        step "bench-ffhq1024-$p" 180 "$mm" bench --device cuda --config ffhq1024 --batch 512 --precision "$p" \
            --iters 3 --json
    done
    for p in fp32 fp16; do
        step "bench-ffhq256-$p" 120 "$mm" bench --device cuda --config ffhq256 --batch 512 --precision "$p" \
            --iters 3 --json
    done
    # The micromotion fit (golden case E's 11 x 18 x 512 anchors) on the GPU beside the CPU of the same machine; each
    # prints its time.
    for d in cpu cuda; do
        step "fit-$d" 120 "$mm" fit --anchors "$root/golden/micromotion_rpca/rpca.safetensors:anchors" --device "$d" \
            -o "/tmp/fit-$d.safetensors"
    done
    # Out-of-bounds and misaligned accesses in every kernel the golden cases reach.
    if command -v compute-sanitizer >/dev/null; then
        step memcheck 300 compute-sanitizer --tool memcheck "$mm" selftest --device cuda --precision fp16
    fi
}

case "${1:-}" in
    pack) pack ;;
    run) run ;;
    *) echo "usage: scripts/gpu-session.sh pack|run" >&2; exit 2 ;;
esac
