#!/bin/sh
# test_verdict.sh -- launch/sanitize_verdict.py on excerpts of real compute-sanitizer logs
# from 2x H200 (2026-11-22): NCCL's API probes and racecheck reports inside cuDNN's and
# NCCL's kernels are attributed to them (verdict clean), and a planted report in one of
# cpattn's kernels makes the verdict fail.
set -u
verdict=$1 python=${2:-python3} dir=$(dirname "$0")
"$python" "$verdict" "$dir/memcheck_nccl_probes.log" "$dir/racecheck_cudnn_nccl.log" || { echo "FAIL: real logs judged not clean"; exit 1; }
if "$python" "$verdict" "$dir/planted_ours.log"; then
  echo "FAIL: a report in cpattn's merge_kernel was judged clean"
  exit 1
fi
echo "verdict: attributes the real reports, catches the planted one"
