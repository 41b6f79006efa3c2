#!/usr/bin/env bash
# The GPU suite, in one command on a CUDA machine (under 10 minutes on one GPU):
#   tests  the tests marked `cuda` (SPAM and StableSPAM against the float64 references, exact resume,
#          the compiled step)                          -> benchmarks/results/gpu_tests_cuda.md
#   step   benchmarks/optimizer_step.py --device cuda at LLaMA 60M-1B shapes, against torch's fused AdamW
#                                                      -> benchmarks/results/optimizer_step_cuda.md
#   train  a 200-step bf16 training run of llama-60m with SPAM
#                                                      -> benchmarks/results/train_llama60m_spam_bf16_cuda.md
# Without a CUDA device it says so in one line and exits 0.
#
#   bash benchmarks/gpu_suite.sh                       # all three parts
#   bash benchmarks/gpu_suite.sh --only step --only train --train-steps 50
#   bash benchmarks/gpu_suite.sh --dry-run             # print the commands, run nothing (any machine)
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash benchmarks/gpu_suite.sh [--only tests|step|train]... [--train-steps N] [--dry-run] [-h]
  --only PART       run only this part (repeatable; default: tests, step and train)
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
            [ $# -ge 2 ] || fail_usage "--only needs a part: tests, step or train"
            case "$2" in
                tests | step | train) parts+=("$2") ;;
                *) fail_usage "--only $2: the parts are tests, step and train" ;;
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
[ ${#parts[@]} -gt 0 ] || parts=(tests step train)

PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
results=benchmarks/results

if [ $dry_run -eq 0 ] && ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_suite: no CUDA device (torch.cuda.is_available() is False): nothing to run"
    exit 0
fi

run() {
    echo "+ $*"
    [ $dry_run -eq 1 ] || "$@"
}

status=0
for part in "${parts[@]}"; do
    case $part in
        tests)
            log=$results/gpu_tests_cuda.md
            tests=("$PYTHON" -m pytest -m cuda -q -rA -p no:cacheprovider tests)
            echo "+ ${tests[*]} > $log"
            if [ $dry_run -eq 0 ]; then
                device=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(), "torch", torch.__version__)')
                {
                    printf 'Command: `%s` (%s)\n\n```\n' "${tests[*]}" "$device"
                    "${tests[@]}" 2>&1 | tail -n 40 || status=1
                    printf '```\n'
                } > "$log"
                tail -n 2 "$log"
            fi
            ;;
        step)
            # Our optimizers and the baseline only: at 1B shapes every optimizer's state lives on the GPU
            # at once, and the peers' would not fit next to ours. The wait for idle CPUs stays short: the
            # suite itself is the only job it should find.
            run "$PYTHON" benchmarks/optimizer_step.py --device cuda --sizes 60m,130m,350m,1b --rounds 21 \
                --no-reference --only '^(SPAM|Stable-SPAM) ' --max-wait 30 \
                --out "$results/optimizer_step_cuda.md" || status=1
            ;;
        train)
            run "$PYTHON" benchmarks/training_run.py --out "$results/train_llama60m_spam_bf16_cuda.md" -- \
                --model llama-60m --optimizer spam --mixed-precision bf16 --max-steps "$train_steps" \
                --warmup-steps 20 --seq-len 256 --batch-size 64 --corpus-max-mb 8 --eval-every 100 \
                --eval-batches 4 --save-every 0 --log-every 10 --output-dir runs --run-name gpu-suite-llama-60m \
                --overwrite --no-progress-bar --no-dashboard --trackers "" || status=1
            ;;
    esac
done
exit $status
