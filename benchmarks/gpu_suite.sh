#!/usr/bin/env bash
# The GPU suite, in one command on a CUDA machine. Its parts ran one by one on an H200 on 2026-12-04
# (benchmarks/results/gpu_run.md), where the tests took 63 s on 8 pytest workers and the step timings at 130m
# and 350m shapes under 90 s together; the step part times the default, foreach and Triton steps (fused=True),
# not the compiled steps, which compiled for 30 s to over 2 minutes each there:
#   tests  the tests marked `cuda` (SPAM and StableSPAM against the float64 references, exact resume,
#          the compiled step, the step paths under torch.cuda.set_sync_debug_mode("error")) and `triton`
#          (SpikeGPT's Triton kernels and the model on them, here on the GPU rather than in the
#          interpreter)                                -> benchmarks/results/gpu_tests_cuda.md
#   step   benchmarks/optimizer_step.py --device cuda at LLaMA 130M and 350M shapes, against torch's fused AdamW
#                                                      -> benchmarks/results/optimizer_step_cuda.md
#   train  a 200-step bf16 training run of llama-60m with SPAM
#                                                      -> benchmarks/results/train_llama60m_spam_bf16_cuda.md
#   spikegpt  SpikeGPT's Triton WKV and LIF against the reference paths at spikegpt-60m and -216m shapes
#          (errors vs float64, ms)                     -> benchmarks/results/spikegpt_triton_kernels_cuda.md
#          and SpikeGPT (Triton and reference paths) against LLaMA, training tokens/s and generate()
#                                                      -> benchmarks/results/spikegpt_throughput_cuda.md
# Each part ends with one line: `gpu_suite: <part> ok|FAILED -> <results>`. Without a CUDA device it says so
# in one line and exits 0.
#
#   bash benchmarks/gpu_suite.sh                       # all four parts
#   bash benchmarks/gpu_suite.sh --only step --only train --train-steps 50
#   bash benchmarks/gpu_suite.sh --dry-run             # print the commands, run nothing (any machine)
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash benchmarks/gpu_suite.sh [--only tests|step|train|spikegpt]... [--train-steps N] [--dry-run] [-h]
  --only PART       run only this part (repeatable; default: tests, step, train and spikegpt)
  --train-steps N   steps of the training run (default 200)
  --dry-run         print the commands without running them
environment: PYTHON (default: python)
EOF
}

fail_usage() {
    echo "gpu_suite: $1" >&2
    usage >&2
    exit 2
}

parts=()
train_steps=200
dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --only)
            [ $# -ge 2 ] || fail_usage "--only needs a part: tests, step, train or spikegpt"
            case "$2" in
                tests | step | train | spikegpt) parts+=("$2") ;;
                *) fail_usage "--only $2: the parts are tests, step, train and spikegpt" ;;
            esac
            shift 2
            ;;
        --train-steps)
            [ $# -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] || fail_usage "--train-steps needs a positive integer"
            train_steps=$2
            shift 2
            ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) fail_usage "unknown argument $1" ;;
    esac
done
[ ${#parts[@]} -gt 0 ] || parts=(tests step train spikegpt)

PYTHON=${PYTHON:-python}
GPU_TEST_FILES=(tests/test_cuda.py tests/test_cuda_host_syncs.py tests/test_spikegpt_triton.py)
cd "$(dirname "$0")/.."
results=benchmarks/results

if [ $dry_run -eq 0 ] && ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_suite: no CUDA device (torch.cuda.is_available() is False): nothing to run"
    exit 0
fi

run() {
    echo "+ $(printf '%q ' "$@")"
    [ $dry_run -eq 1 ] || "$@"
}

# One line per part: what it wrote, and whether all its commands succeeded.
report() {
    local part=$1 failed=$2
    shift 2
    [ $dry_run -eq 1 ] && return 0
    if [ "$failed" -eq 0 ]; then
        echo "gpu_suite: $part ok -> $*"
    else
        echo "gpu_suite: $part FAILED -> $*"
        status=1
    fi
}

status=0
for part in "${parts[@]}"; do
    failed=0
    case $part in
        tests)
            log=$results/gpu_tests_cuda.md
            # The files that hold the marked tests, not all of tests/: collecting the others needs every `dev`
            # extra, which a bare GPU image lacks (tests/test_gpu_suite.py keeps this list complete).
            tests=("$PYTHON" -m pytest -m "cuda or triton" -q -rA -p no:cacheprovider "${GPU_TEST_FILES[@]}")
            echo "+ $(printf '%q ' "${tests[@]}")> $log"
            if [ $dry_run -eq 0 ]; then
                device=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(), "torch", torch.__version__)')
                {
                    printf 'Command: `%s` (%s)\n\n```\n' "${tests[*]}" "$device"
                    "${tests[@]}" 2>&1 | tail -n 40 || failed=1
                    printf '```\n'
                } > "$log"
                tail -n 2 "$log"
            fi
            report tests $failed "$log"
            ;;
        step)
            # Our optimizers' default, foreach and Triton steps and the baseline: every optimizer's state lives
            # on the GPU at once. The wait for idle CPUs stays short: the suite itself is the only job it
            # should find.
            run "$PYTHON" benchmarks/optimizer_step.py --device cuda --sizes 130m,350m --rounds 21 \
                --no-reference --only '^(SPAM|Stable-SPAM).*(default flags|foreach|Triton)' --max-wait 30 \
                --out "$results/optimizer_step_cuda.md" || failed=1
            report step $failed "$results/optimizer_step_cuda.md"
            ;;
        train)
            run "$PYTHON" benchmarks/training_run.py --out "$results/train_llama60m_spam_bf16_cuda.md" -- \
                --model llama-60m --optimizer spam --mixed-precision bf16 --max-steps "$train_steps" \
                --lr-warmup-steps 20 --seq-len 256 --batch-size 64 --corpus-max-mb 8 --eval-every 100 \
                --eval-batches 4 --save-every 0 --log-every 10 --output-dir runs --run-name gpu-suite-llama-60m \
                --overwrite --no-progress-bar --no-dashboard --trackers "" || failed=1
            report train $failed "$results/train_llama60m_spam_bf16_cuda.md"
            ;;
        spikegpt)
            run "$PYTHON" benchmarks/spikegpt_triton_kernels.py --device cuda --rounds 10 \
                --output "$results/spikegpt_triton_kernels_cuda.md" || failed=1
            # The reference paths launch a few kernels per token: a short run is enough to show it.
            run "$PYTHON" benchmarks/spikegpt_throughput.py --device cuda --reference --rounds 3 --max-wait 30 \
                --output "$results/spikegpt_throughput_cuda.md" || failed=1
            report spikegpt $failed "$results/spikegpt_triton_kernels_cuda.md" "$results/spikegpt_throughput_cuda.md"
            ;;
    esac
done
exit $status
