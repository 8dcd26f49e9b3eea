#!/usr/bin/env bash
# bench_check_matrix.sh MPIEXEC NP BENCH [preflags...] -- issue 3's acceptance run:
# `mpirun -np NP cpattn-bench --check` on the CPU for every schedule, mask and layout,
# each compared with single-rank attention on the whole sequence. Fails on the first run
# that does not print PASS. MATRIX_EXECUTOR=cuda runs the same matrix on GPUs (one rank
# per GPU, bf16, a problem cuDNN runs; launch/gpu_session.sh's `matrix` stage).
set -u
mpiexec=$1 np=$2 bench=$3
shift 3
if [ "${MATRIX_EXECUTOR:-host}" = cuda ]; then
  size="--executor cuda --seq 8192 --heads 8 --kv-heads 2 --head-dim 128 --window 1000,77"
else
  size="--executor host --seq 300 --heads 8 --kv-heads 2 --head-dim 32 --window 40,7"
fi
fail=0 runs=0
for sched in ring a2a allgather hybrid; do
  for mask in none causal window; do
    for layout in bshd sbhd thd; do
      extra=""
      [ "$sched" = hybrid ] && extra="--a2a-group 2"
      # shellcheck disable=SC2086
      out=$("$mpiexec" -np "$np" "$@" "$bench" $size --check --no-profile --iters 1 --warmup 1 \
              --schedule "$sched" --mask "$mask" --layout "$layout" $extra </dev/null 2>&1)
      runs=$((runs + 1))
      line=$(printf '%s\n' "$out" | grep "check vs" || true)
      if printf '%s' "$line" | grep -q PASS; then
        echo "ok   $sched $mask $layout: ${line#*: }"
      else
        echo "FAIL $sched $mask $layout"; printf '%s\n' "$out" | tail -5; fail=$((fail + 1))
      fi
    done
  done
done
echo "$runs runs, $fail failed"
[ "$fail" -eq 0 ]
