#!/usr/bin/env bash
# .ci/valgrind.sh -- memcheck on a normal (unsanitized) host build: the pure unit tests
# and one-rank cpattn-bench runs, with zero errors and zero leaks allowed.
#
#   .ci/valgrind.sh                     from the repository root
#   BUILD_DIR=... JOBS=... .ci/valgrind.sh
#
# valgrind sees what ASan cannot (uninitialised reads, in code built without any
# instrumentation) and checks the library as users get it. About 30 s on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-valgrind}
jobs=${JOBS:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "valgrind: configuring $build (host executor only)"
cmake -S . -B "$build" -DCPATTN_ENABLE_CUDA=OFF -DCPATTN_SANITIZE=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$jobs" --target test_schedule test_config test_shard cpattn-bench

# Leaks of Open MPI's own process-lifetime state (operation tables, MCA parameter strings,
# run-time environment) are not ours: suppress a leak when its allocation stack passes
# through one of Open MPI's libraries (cpattn never allocates from inside an MPI call, so
# its own leaks keep showing; tests/lsan.supp has the same rule for the ASan run). Made
# here rather than kept as a file because this script is its only user.
supp=$(mktemp "${TMPDIR:-/tmp}/cpattn_vg.XXXXXX")
trap 'rm -f "$supp"' EXIT
for lib in libmpi libopen-rte libopen-pal libhwloc libpmix libevent; do
  printf '{\n   openmpi-%s-lifetime-state\n   Memcheck:Leak\n   match-leak-kinds: all\n   ...\n   obj:*/%s*.so*\n}\n' \
    "$lib" "$lib" >>"$supp"
done

# --num-callers=40: deep enough for every MPI stack to reach an Open MPI library frame.
# shellcheck disable=SC2054  # the commas are valgrind's list syntax
vg=(valgrind -q --error-exitcode=1 --leak-check=full --show-leak-kinds=definite,indirect,possible
    --errors-for-leak-kinds=definite,indirect,possible --track-origins=yes --num-callers=40
    "--suppressions=$supp")

failed=0
run() {
  local name=$1
  shift
  local t0 rc=0
  t0=$(date +%s)
  "$@" >"$build/valgrind-$name.log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "valgrind: $name FAILED (status $rc):" >&2
    cat "$build/valgrind-$name.log" >&2
    failed=1
  else
    echo "valgrind: $name clean ($(($(date +%s) - t0)) s)"
  fi
}

for t in test_schedule test_config test_shard; do
  run "$t" "${vg[@]}" "$build/tests/$t"
done
# One rank (valgrind under mpirun, not around it: the rank is what is checked). With
# --check the bench also makes a second, one-rank reference plan over MPI_COMM_SELF.
bench="$build/launch/cpattn-bench"
run bench_bshd_causal_ring mpirun -np 1 --oversubscribe "${vg[@]}" "$bench" --executor host \
  --seq 97 --heads 4 --kv-heads 2 --head-dim 16 --iters 1 --warmup 1 --check
run bench_thd_window_allgather mpirun -np 1 --oversubscribe "${vg[@]}" "$bench" --executor host \
  --layout thd --mask window --window 9,3 --schedule allgather --dtype bf16 --seq 120 --heads 4 --kv-heads 1 \
  --head-dim 8 --iters 1 --warmup 1 --check

if [ "$failed" -ne 0 ]; then
  echo "valgrind: FAILED" >&2
  exit 1
fi
echo "valgrind: PASSED, no errors"
