#!/bin/sh
# test_nvtx.sh PROBE BENCH MPIEXEC NPFLAG [PREFLAGS...] -- cpattn's NVTX ranges, seen
# through an NVTX injection library (nvtx_probe.c) on a 2-rank host run of cpattn-bench:
# every public call and every schedule step (compute and exchange apart) has its range,
# pushes and pops balance, and CPATTN_NVTX=0 turns them all off.
set -u
probe=$1 bench=$2 mpiexec=$3 npflag=$4
shift 4
dir=$(mktemp -d "${TMPDIR:-/tmp}/cpattn_nvtx.XXXXXX") || exit 2
trap 'rm -rf "$dir"' EXIT INT TERM
args="--executor host --seq 256 --heads 4 --kv-heads 2 --head-dim 16 --iters 1 --warmup 0 --no-check --no-profile"

fail() { echo "FAIL: $*"; exit 1; }

# shellcheck disable=SC2086
NVTX_INJECTION64_PATH=$probe NVTX_PROBE_FILE=$dir/on "$mpiexec" "$@" "$npflag" 2 "$bench" $args \
  >"$dir/job.log" 2>&1 || { cat "$dir/job.log"; fail "the job failed"; }
n=0
for f in "$dir"/on.*; do
  [ -f "$f" ] || fail "no probe output: NVTX did not load the injection library"
  n=$((n + 1))
  for range in cpattnPlanCreate cpattnForward cpattnBackward "cpattn forward step compute" \
               "cpattn backward step compute" "cpattn exchange"; do
    grep -q -x "push $range" "$f" || fail "$(basename "$f"): no '$range' range"
  done
  pushes=$(grep -c '^push ' "$f")
  pops=$(grep -c '^pop$' "$f")
  [ "$pushes" -eq "$pops" ] || fail "$(basename "$f"): $pushes pushes, $pops pops"
  echo "$(basename "$f"): $pushes ranges, balanced; $(grep -c -x 'push cpattn exchange' "$f") exchanges"
done
[ "$n" -eq 2 ] || fail "$n probe files, expected one per rank (2)"

# shellcheck disable=SC2086
CPATTN_NVTX=0 NVTX_INJECTION64_PATH=$probe NVTX_PROBE_FILE=$dir/off "$mpiexec" "$@" "$npflag" 2 "$bench" $args \
  >"$dir/job.log" 2>&1 || { cat "$dir/job.log"; fail "the job with CPATTN_NVTX=0 failed"; }
if ls "$dir"/off.* >/dev/null 2>&1 && grep -q '^push' "$dir"/off.*; then
  fail "CPATTN_NVTX=0 still pushed ranges"
fi
echo "CPATTN_NVTX=0: no ranges"
