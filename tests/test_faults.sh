#!/bin/sh
# test_faults.sh -- reliability tests of cpattn-bench under mpirun: a job whose ranks
# disagree, a rank that stalls, a rank that dies. Each must end within a bound, with a
# non-zero status and the error printed by the ranks that are left.
#
#   test_faults.sh CASE BENCH MPIEXEC NPFLAG [MPIEXEC_PREFLAGS...]
#   CASE: mismatch | stall | exit
#
# Run by CTest (tests/reliability.cmake). Exit status 0 = pass; on failure the job's
# output is printed with the reason.
set -u

if [ $# -lt 4 ]; then
  echo "usage: $0 mismatch|stall|exit BENCH MPIEXEC NPFLAG [PREFLAGS...]" >&2
  exit 2
fi
case_name=$1
bench=$2
mpiexec=$3
np=$4
shift 4
# What is left in "$@" are the launcher's own flags (--oversubscribe, --allow-run-as-root).

# A small problem that runs in well under a second, so that the time a test takes is the
# timeout under test and nothing else. FAULT_EXECUTOR=cuda runs the same cases on GPUs
# (one per rank; exit 77 = skipped with fewer than two): there a stalled or dead peer
# leaves NCCL kernels spinning on the device, and the survivor's bounded wait
# (cpattnCommSynchronize in the bench) must abort its communicator and report.
executor=${FAULT_EXECUTOR:-host}
if [ "$executor" = cuda ]; then
  ngpu=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU") || ngpu=0
  if [ "$case_name" != mismatch ] && [ "$ngpu" -lt 2 ]; then
    echo "SKIP: $case_name on GPUs needs 2 GPUs, $ngpu visible"
    exit 77
  fi
  small="--executor cuda --seq 4096 --kv-heads 2 --head-dim 64 --iters 1 --warmup 1 --no-check --no-profile"
  timeout_ms=5000 # the first call on a GPU loads kernels: the bound must not catch that
else
  small="--executor host --seq 64 --kv-heads 2 --head-dim 8 --iters 1 --warmup 1 --no-check --no-profile"
  timeout_ms=2000
fi
# The bound: the survivors report within the timeout plus 10 s.
bound_s=$((timeout_ms / 1000 + 10))
# A hard stop well past the bound, so that a hang fails this test with a message of its
# own instead of reaching CTest's TIMEOUT.
kill_after_s=45

out=$(mktemp "${TMPDIR:-/tmp}/cpattn_faults.XXXXXX") || exit 2
trap 'rm -f "$out"' EXIT INT TERM

now_ns() {
  t=$(date +%s%N)
  case $t in
    *N) echo $(($(date +%s) * 1000000000)) ;; # a date without %N: whole seconds
    *) echo "$t" ;;
  esac
}

fail() {
  echo "FAIL ($case_name): $*" >&2
  echo "---- job output ----" >&2
  cat "$out" >&2
  exit 1
}

# Runs the job with a hard stop; sets rc and elapsed_ms.
run_job() {
  t0=$(now_ns)
  timeout -k 5 "$kill_after_s" "$@" >"$out" 2>&1
  rc=$?
  t1=$(now_ns)
  elapsed_ms=$(((t1 - t0) / 1000000))
  echo "$case_name: exit status $rc after $elapsed_ms ms"
}

expect_line() { # a fixed string that must appear in the job's output
  grep -F -q -- "$1" "$out" || fail "missing from the output: $1"
}

expect_bounded() {
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    fail "the job hung: killed after ${kill_after_s} s"
  fi
  [ "$rc" -ne 0 ] || fail "the job exited with status 0"
  [ "$elapsed_ms" -le $((bound_s * 1000)) ] || fail "took ${elapsed_ms} ms, more than ${bound_s} s"
}

is_open_mpi=0
"$mpiexec" --version 2>/dev/null | grep -q -E "Open MPI|OpenRTE" && is_open_mpi=1

case $case_name in
  mismatch)
    # Two command lines in one job (MPMD): rank 0 asks for 8 query heads, rank 1 for 4.
    # Each config is valid on its own, so only the collective check at plan creation can
    # catch it; every rank must say so and name the field, and nobody may hang or crash.
    # shellcheck disable=SC2086
    run_job "$mpiexec" "$@" "$np" 1 "$bench" $small --heads 8 : "$np" 1 "$bench" $small --heads 4
    expect_bounded
    # 2 is cpattn-bench's status for a failed cpattnPlanCreate: a crash or an abort
    # would show as something else.
    [ "$rc" -eq 2 ] || fail "exit status $rc, expected 2 (cpattnPlanCreate failed on every rank)"
    for r in 0 1; do
      expect_line "cpattn-bench: rank $r: cpattnPlanCreate: cpattnConfigMismatch"
      grep -F "cpattn-bench: rank $r: cpattnPlanCreate" "$out" | grep -F -q "config->numHeadsQ differs" ||
        fail "rank $r does not name config->numHeadsQ"
    done
    ;;

  stall)
    # Rank 1 sleeps inside iteration 0 (after the barrier the bench puts before every
    # call); rank 0 is then in cpattnForward waiting for rank 1's K/V block. Its wait is
    # bounded by --timeout-ms: it must return cpattnTimeout, which the bench prints
    # before it aborts the job (that also ends the sleeping rank).
    # shellcheck disable=SC2086
    run_job "$mpiexec" "$@" "$np" 2 "$bench" $small --heads 4 --timeout-ms "$timeout_ms" --fault stall:1:0
    expect_bounded
    expect_line "cpattn-bench: rank 1 injects fault 'stall' before iteration 0"
    expect_line "cpattn-bench: rank 0: cpattnForward failed: cpattnTimeout"
    expect_line "cpattn-bench: rank 0: giving up after the error above"
    ;;

  exit)
    # Rank 1 leaves with _exit(3), without MPI_Finalize: a dead peer. By default Open MPI's
    # mpirun kills the whole job the moment a process exits non-zero or without
    # MPI_Finalize, so the survivor never gets to report. Two ORTE settings (Open MPI 4.x;
    # `ompi_info --all` lists both) keep the job alive instead:
    #   orte_abort_on_non_zero_status 0  a process's non-zero exit does not abort the job
    #   orte_allowed_exit_without_sync 1 nor does its exit without MPI_Finalize
    # Then rank 0 sits in cpattnForward until its bounded wait fails, prints the error and
    # calls MPI_Abort, which ends the job with a non-zero status even under these settings
    # (with abort_on_non_zero_status 0, mpirun 4.1 itself returns 0 however its processes
    # exit: the MPI_Abort is what makes the job's status honest). A dead peer on one node
    # shows as a timeout (the shared-memory transport cannot tell "dead" from "slow");
    # across nodes the TCP transport may notice the closed connection first, so an MPI
    # error is accepted too.
    keep_alive=""
    [ "$is_open_mpi" -eq 1 ] &&
      keep_alive="--mca orte_abort_on_non_zero_status 0 --mca orte_allowed_exit_without_sync 1"
    # shellcheck disable=SC2086
    run_job "$mpiexec" "$@" $keep_alive "$np" 2 "$bench" $small --heads 4 --timeout-ms "$timeout_ms" \
      --fault exit:1:0
    expect_bounded
    expect_line "cpattn-bench: rank 1 injects fault 'exit' before iteration 0"
    if [ "$is_open_mpi" -eq 1 ]; then
      grep -E -q "cpattn-bench: rank 0: cpattnForward failed: (cpattnTimeout|cpattnRemoteError|cpattnSystemError)" \
        "$out" || fail "the survivor (rank 0) did not report the dead peer"
      expect_line "cpattn-bench: rank 0: giving up after the error above"
    fi
    # Another MPI may kill the job when rank 1 dies, before rank 0 can report: then a
    # bounded, non-zero end (checked above) is the best a test can ask of the library.
    ;;

  *)
    echo "unknown case '$case_name' (mismatch, stall or exit)" >&2
    exit 2
    ;;
esac
echo "PASS ($case_name)"
exit 0
