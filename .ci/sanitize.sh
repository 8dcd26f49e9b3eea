#!/usr/bin/env bash
# .ci/sanitize.sh -- every CTest test on a host-only build with AddressSanitizer and
# UndefinedBehaviorSanitizer (CPATTN_SANITIZE=ON), with zero reports allowed.
#
#   .ci/sanitize.sh                     from the repository root
#   BUILD_DIR=... JOBS=... .ci/sanitize.sh
#
# A report fails twice over: the sanitized process exits non-zero (ASan's exit code 1,
# UBSan aborts: the build uses -fno-sanitize-recover=undefined), which fails its test,
# and the log of every test is searched for report headers afterwards. The second net
# catches reports from processes whose status a test does not look at, such as a rank
# that a fault test expects to die. About 5 minutes on 2 cores (the CPU reference test
# takes ~70 s of it under ASan).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${BUILD_DIR:-build-sanitize}
jobs=${JOBS:-2}

# Open MPI refuses to run as root without these (CMake also adds --allow-run-as-root to
# the tests' mpirun lines; the scripts the tests call may run mpirun themselves).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# fast_unwind_on_malloc=0: Debian's Open MPI has no frame pointers, so only the slow
# unwinder sees through its frames; tests/lsan.supp needs whole allocation stacks to
# recognise Open MPI's own never-freed state (the file says which and why).
# detect_stack_use_after_return: catches pointers to a returned frame's locals too.
# verify_asan_link_order=0: the install tests build consumers from the installed package
# through pkg-config, which knows nothing of sanitizers; such a consumer gets the ASan
# runtime through libcpattn's dependency instead of first in line, which ASan would
# otherwise refuse to start with. The library's own code is still fully instrumented.
export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:halt_on_error=1:verify_asan_link_order=0"
export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

echo "sanitize: configuring $build (ASan + UBSan, host executor only)"
cmake -S . -B "$build" -DCPATTN_ENABLE_CUDA=OFF -DCPATTN_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$jobs"

log="$build/sanitize-ctest.log"
start=$(date +%s)
status=0
# -V: every test's output goes to the log, passing ones included, for the search below.
ctest --test-dir "$build" -V -j "$jobs" >"$log" 2>&1 || status=$?
echo "sanitize: ctest finished with status $status after $(($(date +%s) - start)) s"
grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)|\(SEGFAULT\)|\(Subprocess aborted\)" "$log" || true

reports=$(grep -c -E "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|WARNING: AddressSanitizer" "$log" || true)
if [ "$reports" -ne 0 ]; then
  echo "sanitize: $reports sanitizer report(s) in $log:" >&2
  grep -n -A25 -E "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|WARNING: AddressSanitizer" "$log" | head -200 >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  sed -n '/The following tests FAILED/,$p' "$log" >&2
  echo "sanitize: FAILED (every test's output, prefixed by its number: $log)" >&2
  exit 1
fi
echo "sanitize: PASSED, no sanitizer reports"
