#!/usr/bin/env bash
# The GPU checks and benchmarks of a session that is lent a GPU machine, from binaries built on a machine without
# one (the GPU machine has the CUDA driver but no Rust toolchain, and a call carries at most 64 MiB).
#
#   here:   scripts/gpu-session.sh pack
#           builds the release binary and the GPU test binary (with the pinned nvcc), strips them and packs them
#           with the golden cases the GPU tests read into device-carry/bundle.tar.gz (about 35 MB; gitignored),
#           stamped with a hash of the sources they were built from.
#           scripts/gpu-session.sh baseline [COMMIT]
#           before packing a change: keeps the current bundle's mmengine as device-carry/baseline.tar.gz (about
#           8 MB), so that the 'compare' phase can time both builds on one machine; with COMMIT (a fresh clone has
#           no bundle), builds that commit's mmengine in a temporary git worktree instead (target/baseline).
#   there:  scripts/gpu-session.sh run PHASE...  (device tool: carry ["device-carry"])
#           PHASEs, in order of importance; one call may run several, in the order given:
#             tests  nvidia-smi, the binaries' libraries, doctor, the GPU tests, selftest in every precision,
#                    the micromotion fit on the GPU and on the CPU, the demo model rendered on both (the GPU's
#                    grid comes back as demo-cuda.png), and one small fp16 bench
#             bench  bench --config ffhq1024 --batch 512 in every precision (fp16 and bf16 also with --images u8,
#                    fp16 also with random noise), ffhq256 in fp32 and fp16
#             compare  the baseline's and this build's bench, ffhq1024 batch 512 in fp16 and tf32, alternating, with
#                    f32 and with 8-bit images (--images u8)
#             wgmma  this build with its sm_90 (wgmma) kernels and without (MMENGINE_WGMMA=0), fp16 and bf16,
#                    alternating, with the per-layer profile
#             passes  ffhq1024 batch 512 fp16 with 8-bit images in passes of 32 (the default), 64 and 128 images
#                    (--pass-images), alternating, each with the per-layer profile of one pass
#             fit    golden case E's anchors plus one row (12 x 18 x 512): mmengine fit on the GPU and the CPU beside
#                    benches/rpca_torch.py (the same algorithm in PyTorch) on both, checked against mmengine's output
#             ncu    Nsight Compute's full report of one launch of each f16 convolution kernel (up-sampling at 1024
#                    and 128 px, the fused ToRGB ones, same resolution; wgmma and mma.sync), if the machine has ncu
#             ncu-source  Nsight Compute's per-SASS-line samples and counters (CSV in $OUT) of the two largest layers
#             ncu-layers  every kernel of one ffhq1024 pass at batch 8 under Nsight Compute: duration and instructions
#                    executed per launch (CSV in $OUT), for this build and the baseline
#             memcheck  compute-sanitizer memcheck over selftest, if the machine has it
#           Unpacks to /tmp (refusing a bundle built from other sources than this tree's) and appends to two
#           files in $OUT (default ./gpu-out): log.txt, every step's output under a header with its exit status
#           and time, written as the step runs (so a call cut off still returns what ran), and results.jsonl, one
#           line {"step": ..., "exit": ..., "result": ...} per JSON-printing step.
#
# Each step has its own time limit, so a step that hangs costs at most that, and a call cut off at its own limit still
# returns log.txt up to the step it was in. On an H200 (2026-11-26) the phases took about: tests 20 s, compare 130 s,
# wgmma 60 s, fit 20 s, memcheck 5 s, bench 80 s, ncu 50 s (passes, not yet run: about 2 minutes, 6 runs like
# bench's with the profile); a call's start and transfers added 30-60 s. So `run tests compare bench ncu` fits
# one call of 15 minutes' device time with room for another.
set -uo pipefail
cd "$(dirname "$0")/.."

golden_cases=(ops nvlabs_tiny nvlabs_tiny_clamp rosinality_tiny micromotion_rpca)

# A hash of everything the binaries are built from; the device's copy of the tree has no .git, so no git here.
source_hash() {
    find build.rs Cargo.toml Cargo.lock kernels src tests -type f | LC_ALL=C sort | xargs cat | sha256sum |
        cut -c1-16
}

pack() {
    set -e
    scripts/cuda-toolchain.sh >/dev/null
    export MMENGINE_REQUIRE_NVCC=1
    # Without the emulation: the GPU needs none of it, and the binaries then need no C++ runtime.
    cargo build --release
    # The GPU test binary: cargo lists it among its artifacts, beside the mmengine binary; pick it by target kind.
    local gpu_test
    gpu_test=$(cargo test --release --test gpu --no-run --message-format=json 2>/dev/null |
        grep '"kind":\["test"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
    [ -x "$gpu_test" ] || { echo "gpu-session: no GPU test binary found" >&2; exit 1; }
    local stage
    stage=$(mktemp -d)
    mkdir -p "$stage/bin" "$stage/golden"
    objcopy --strip-debug target/release/mmengine "$stage/bin/mmengine"
    objcopy --strip-debug "$gpu_test" "$stage/bin/gpu-tests"
    source_hash >"$stage/bin/SOURCE_HASH"
    for c in "${golden_cases[@]}"; do cp -r "../shared/golden/$c" "$stage/golden/"; done
    mkdir -p device-carry
    tar -C "$stage" -czf device-carry/bundle.tar.gz bin golden
    rm -rf "$stage"
    du -h device-carry/bundle.tar.gz
    echo "sources $(source_hash)"
}

baseline() {
    local stage
    stage=$(mktemp -d)
    if [ $# -ge 1 ]; then
        set -e
        scripts/cuda-toolchain.sh >/dev/null
        local root tree
        root=$(pwd)
        tree="$stage/tree"
        git worktree add --detach "$tree" "$1" >/dev/null
        mkdir -p "$stage/bin"
        (cd "$tree" && NVCC="$root/.cuda-toolchain/nvidia/cu13/bin/nvcc" MMENGINE_REQUIRE_NVCC=1 \
            CARGO_TARGET_DIR="$root/target/baseline" cargo build --release &&
            source_hash >"$stage/bin/SOURCE_HASH")
        objcopy --strip-debug target/baseline/release/mmengine "$stage/bin/mmengine"
        git worktree remove --force "$tree"
    else
        tar -C "$stage" -xzf device-carry/bundle.tar.gz bin/mmengine bin/SOURCE_HASH
    fi
    mkdir -p device-carry
    tar -C "$stage" -czf device-carry/baseline.tar.gz bin
    rm -rf "$stage"
    echo "baseline: the mmengine of sources $(cat device-carry/baseline.tar.gz | tar -xzO bin/SOURCE_HASH)"
}

# step NAME SECONDS CMD...: runs CMD with a time limit, its output appended to log.txt as it comes, and its last
# JSON line to results.jsonl.
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS out=$OUT/step.out
    echo "=== $name (limit $limit s): $*" >>"$OUT/log.txt"
    timeout -k 10 "$limit" "$@" >"$out" 2>>"$OUT/log.txt"
    local rc=$?
    cat "$out" >>"$OUT/log.txt"
    echo "=== $name: exit $rc after $((SECONDS - start)) s" >>"$OUT/log.txt"
    local json
    json=$(grep '^{' "$out" | tail -n 1)
    [ -n "$json" ] && printf '{"step":"%s","exit":%d,"result":%s}\n' "$name" "$rc" "$json" >>"$OUT/results.jsonl"
    rm -f "$out"
    echo "$name: exit $rc after $((SECONDS - start)) s"
}

run() {
    OUT=${OUT:-gpu-out}
    mkdir -p "$OUT"
    local root=/tmp/mmengine-gpu
    # The golden files unpack read-only; a second call on a warm machine must still be able to replace them.
    [ -d "$root" ] && chmod -R u+w "$root"
    rm -rf "$root" && mkdir -p "$root"
    tar -C "$root" -xzf device-carry/bundle.tar.gz ||
        { echo "gpu-session: no device-carry/bundle.tar.gz: run 'scripts/gpu-session.sh pack' here first"; exit 1; }
    local packed here
    packed=$(cat "$root/bin/SOURCE_HASH")
    here=$(source_hash)
    if [ "$packed" != "$here" ]; then
        echo "gpu-session: the bundle was built from sources $packed, this tree is $here: pack again" >&2
        exit 1
    fi
    local mm=$root/bin/mmengine
    export MMENGINE_GOLDEN=$root/golden RUST_BACKTRACE=1
    find_cuda_libraries

    for phase in "$@"; do
        run_phase "$phase" || exit 2
    done
}

# cudarc opens libcusolver by name. Where the loader's cache lacks it (a CUDA image may hold it only under
# /usr/local/cuda or in a Python wheel), put the first folder that has it on LD_LIBRARY_PATH.
find_cuda_libraries() {
    ldconfig -p | grep -q 'libcusolver\.so' && return
    local lib
    lib=$(find /usr/local /opt /usr/lib -name 'libcusolver.so*' 2>/dev/null | head -n 1)
    if [ -n "$lib" ]; then
        export LD_LIBRARY_PATH=$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        echo "=== libcusolver is not in the loader's cache; using $lib" >>"$OUT/log.txt"
    fi
}

# The baseline's binaries (scripts/gpu-session.sh baseline) unpacked into $1.
unpack_baseline() {
    [ -d "$1" ] && chmod -R u+w "$1"
    rm -rf "$1" && mkdir -p "$1" && tar -C "$1" -xzf device-carry/baseline.tar.gz
    echo "=== baseline built from sources $(cat "$1/bin/SOURCE_HASH")" >>"$OUT/log.txt"
}

run_phase() {
    case "$1" in
        tests)
            step nvidia-smi 20 nvidia-smi
            # What the binaries and the fit need from this machine: a missing library shows here first.
            step libraries 10 sh -c "ldd '$mm'; ldconfig -p | grep -E 'libcuda\.|cusolver|cublas|nvrtc' || true"
            step doctor 40 "$mm" doctor --json
            step gpu-tests 240 "$root/bin/gpu-tests"
            for p in fp32 tf32 fp16 bf16; do
                step "selftest-$p" 55 "$mm" selftest --device cuda --precision "$p" --json
            done
            # Golden case E's 11 x 18 x 512 anchors on the GPU beside the CPU of the same machine; each prints
            # its time.
            for d in cuda cpu; do
                step "fit-$d" 60 "$mm" fit --anchors "$root/golden/micromotion_rpca/rpca.safetensors:anchors" \
                    --device "$d" -o "/tmp/fit-$d.safetensors"
            done
            # The bundled model's first seeds, for a person to look at, and as raw tensors to compare.
            for d in cuda cpu; do
                step "render-$d" 30 "$mm" render --device "$d" --seeds 0-15 --quiet -o "/tmp/demo-$d.npy"
            done
            step render-grid 30 "$mm" render --device cuda --seeds 0-15 --quiet -o "$OUT/demo-cuda.png"
            step compare-renders 10 python3 -c "import numpy as n; a=n.load('/tmp/demo-cuda.npy'); \
b=n.load('/tmp/demo-cpu.npy'); print('cuda vs cpu renders: shape', a.shape, 'max abs diff', abs(a-b).max())"
            step bench-small 60 "$mm" bench --device cuda --config ffhq1024 --batch 32 --precision fp16 --json
            ;;
        bench)
            # fp16 first: the headline figure, and the one a call cut short should still bring back.
            for p in fp16 fp32 bf16 tf32; do
                step "bench-ffhq1024-$p" 90 "$mm" bench --device cuda --config ffhq1024 --batch 512 \
                    --precision "$p" --iters 3 --profile --json
            done
            # The images as 8-bit pixels (what a render to PNG downloads) instead of f32.
            for p in fp16 bf16; do
                step "bench-ffhq1024-$p-u8" 60 "$mm" bench --device cuda --config ffhq1024 --batch 512 \
                    --precision "$p" --iters 3 --images u8 --json
            done
            # Random noise, drawn on the device (it was drawn on the host and uploaded before 4137b9e).
            step bench-ffhq1024-fp16-u8-random 60 "$mm" bench --device cuda --config ffhq1024 --batch 512 \
                --precision fp16 --iters 3 --images u8 --noise-mode random --json
            for p in fp16 fp32; do
                step "bench-ffhq256-$p" 50 "$mm" bench --device cuda --config ffhq256 --batch 512 --precision "$p" \
                    --iters 3 --json
            done
            ;;
        compare)
            local base=/tmp/mmengine-base
            [ -f device-carry/baseline.tar.gz ] ||
                { echo "gpu-session: no device-carry/baseline.tar.gz (scripts/gpu-session.sh baseline)" >&2; return 1; }
            unpack_baseline "$base"
            # Alternating, so that a drift of the machine (clocks, temperature) shows as a spread, not a speed-up.
            # '-u8': the images handed back as 8-bit pixels (bench --images u8, in builds since f37c37f), which leaves
            # the host link less of the time, so the kernels' share shows better.
            for p in fp16 tf32; do
                for round in 1 2; do
                    for build in base new base-u8 new-u8; do
                        local bin=$mm images=()
                        [[ "$build" = base* ]] && bin=$base/bin/mmengine
                        [[ "$build" = *-u8 ]] && images=(--images u8)
                        step "compare-$p-$build-$round" 60 "$bin" bench --device cuda --config ffhq1024 --batch 512 \
                            --precision "$p" --iters 3 "${images[@]}" --json
                    done
                done
            done
            ;;
        wgmma)
            # This build with and without its sm_90 kernels (MMENGINE_WGMMA=0: every layer on mma.sync), alternating,
            # per layer; 'tests' has already checked that the two compute the same.
            for p in fp16 bf16; do
                for round in 1 2; do
                    for w in 0 1; do
                        step "wgmma-$w-$p-$round" 60 env MMENGINE_WGMMA=$w "$mm" bench --device cuda \
                            --config ffhq1024 --batch 512 --precision "$p" --iters 3 --profile --json
                    done
                done
            done
            ;;
        passes)
            # The small layers have few blocks in a pass of 32 images. The blocks below 2^16 pixels per pass run
            # first over the whole batch (4-32 px at 32 images, 4-16 px at 64 and 128); larger passes fill the
            # 64 px layers too, at the cost of a longer last download. Per layer, so both effects show.
            for round in 1 2; do
                for n in 32 64 128; do
                    step "passes-$n-$round" 90 "$mm" bench --device cuda --config ffhq1024 --batch 512 \
                        --precision fp16 --iters 3 --images u8 --pass-images "$n" --profile --json
                done
            done
            ;;
        fit)
            local anchors=/tmp/anchors12.npy
            step make-anchors 60 python3 benches/rpca_torch.py --make-anchors12 \
                "$root/golden/micromotion_rpca/rpca.safetensors" "$anchors"
            for d in cuda cpu; do
                step "fit12-$d" 60 "$mm" fit --anchors "$anchors" --device "$d" -o "/tmp/fit12-$d.safetensors"
            done
            step torch-fit12-cuda 90 python3 benches/rpca_torch.py --anchors "$anchors" --device cuda --repeat 5 \
                --check /tmp/fit12-cuda.safetensors
            step torch-fit12-cpu 90 python3 benches/rpca_torch.py --anchors "$anchors" --threads 16 --repeat 5 \
                --check /tmp/fit12-cpu.safetensors
            ;;
        ncu)
            command -v ncu >/dev/null || { echo "=== ncu: not on this machine" >>"$OUT/log.txt"; return 0; }
            # ffhq1024 launches each kernel once per block in resolution order: b1024.conv0 (64 -> 32 channels, the
            # slowest up-sampling conv) is the per-sample-weight up-sampling kernel's third launch (b256 .. b1024
            # take it), b128.conv0 the shared-weight one's fifth (b8 .. b128), b128.conv1 (256 -> 256 channels) the
            # 128-channel kernel's sixth (b4 .. b128); b256.conv1, b512.conv1 and b1024.conv1 (128, 64 and 32
            # channels, with their ToRGB) are the fused kernels' only launches. On an sm_90 GPU the wgmma kernels
            # take all of these; MMENGINE_WGMMA=0 profiles the mma.sync up-sampling kernel on b128.conv0.
            local kernel skip kernel_skip
            for kernel_skip in modconv_up2_3x3_sample_weights_wgmma_f16:2 modconv_up2_3x3_wgmma_f16:4 \
                modconv_3x3_torgb_n64_wgmma_f16:0 modconv_3x3_torgb_n32_wgmma_f16:0 modconv_3x3_wgmma_f16:5 \
                modconv_3x3_torgb_wgmma_f16:0 modconv_up2_3x3_f16:4; do
                kernel=${kernel_skip%:*} skip=${kernel_skip#*:}
                local wgmma=1
                [[ "$kernel" != *wgmma* ]] && wgmma=0
                step "ncu-$kernel-$skip" 120 env MMENGINE_WGMMA=$wgmma ncu --set full -k "regex:^$kernel\$" \
                    --launch-skip "$skip" --launch-count 1 \
                    "$mm" bench --device cuda --config ffhq1024 --batch 8 --iters 1 --warmup 0 --precision fp16
            done
            ;;
        ncu-layers)
            # Every kernel launch of one ffhq1024 pass at batch 8, as Nsight Compute measures it alone: duration and
            # instructions executed, as CSV, for this build and (with device-carry/baseline.tar.gz) the baseline. The
            # instruction counts are what static SASS estimates predict; the durations need no host in between.
            command -v ncu >/dev/null || { echo "=== ncu-layers: not on this machine" >>"$OUT/log.txt"; return 0; }
            local builds=(new) base=/tmp/mmengine-base
            if [ -f device-carry/baseline.tar.gz ]; then
                builds=(base new)
                unpack_baseline "$base"
            fi
            local build bin
            for build in "${builds[@]}"; do
                bin=$mm
                [ "$build" = base ] && bin=$base/bin/mmengine
                # --log-file: the tool's report (and its ==PROF== lines) go to the CSV file, the bench's to log.txt.
                step "ncu-layers-$build" 240 ncu --log-file "$OUT/ncu-layers-$build.csv" --csv --print-units base \
                    --metrics gpu__time_duration.sum,smsp__inst_executed.sum \
                    "$bin" bench --device cuda --config ffhq1024 --batch 8 --iters 1 --warmup 0 --precision fp16
            done
            ;;
        ncu-source)
            # Where the time of the two largest layers goes, instruction by instruction: Nsight Compute's warp-state
            # samples and counters per SASS line of b1024.conv0 (up-sampling, wgmma) and b1024.conv1 + ToRGB, as CSV,
            # and the report's sections (as the ncu phase prints them) into log.txt.
            command -v ncu >/dev/null || { echo "=== ncu-source: not on this machine" >>"$OUT/log.txt"; return 0; }
            step ncu-version 10 ncu --version
            local kernel_skip kernel skip
            for kernel_skip in modconv_up2_3x3_sample_weights_wgmma_f16:2 modconv_3x3_torgb_n32_wgmma_f16:0; do
                kernel=${kernel_skip%:*} skip=${kernel_skip#*:}
                rm -f "/tmp/$kernel.ncu-rep"
                step "ncu-source-$kernel" 120 ncu --set full --import-source no -k "regex:^$kernel\$" \
                    --launch-skip "$skip" --launch-count 1 -o "/tmp/$kernel" \
                    "$mm" bench --device cuda --config ffhq1024 --batch 8 --iters 1 --warmup 0 --precision fp16
                step "ncu-source-$kernel-csv" 60 sh -c "ncu -i '/tmp/$kernel.ncu-rep' --page source --csv \
                    --print-source sass >'$OUT/source-$kernel.csv' ||
                    ncu -i '/tmp/$kernel.ncu-rep' --page source --csv >'$OUT/source-$kernel.csv'"
                step "ncu-source-$kernel-details" 60 ncu -i "/tmp/$kernel.ncu-rep" --page details
            done
            ;;
        memcheck)
            # Out-of-bounds and misaligned accesses in every kernel the golden cases reach.
            if command -v compute-sanitizer >/dev/null; then
                step memcheck 420 compute-sanitizer --tool memcheck "$mm" selftest --device cuda --precision fp16
            else
                echo "=== memcheck: no compute-sanitizer on this machine" >>"$OUT/log.txt"
            fi
            ;;
        *)
            echo "usage: scripts/gpu-session.sh run tests|bench|compare|wgmma|passes|fit|ncu|ncu-source|ncu-layers|memcheck..." >&2
            return 1
            ;;
    esac
}

case "${1:-}" in
    pack) pack ;;
    baseline) shift && baseline "$@" ;;
    run) shift && run "$@" ;;
    *) echo "usage: scripts/gpu-session.sh pack | baseline [COMMIT] | run tests|bench|compare|wgmma|passes|fit|ncu|ncu-source|ncu-layers|memcheck..." >&2; exit 2 ;;
esac
