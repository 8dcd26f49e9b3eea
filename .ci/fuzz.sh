#!/usr/bin/env bash
# .ci/fuzz.sh -- builds the libFuzzer targets of tests/fuzz/ with ASan and UBSan, replays
# each committed seed corpus (the regression inputs among it included), then fuzzes each
# target for FUZZ_SECONDS. Any crash, leak, UBSan report, broken invariant (a trap in the
# target), timeout or out-of-memory fails the script; libFuzzer's reproducer is kept.
#
#   .ci/fuzz.sh                                   from the repository root
#   FUZZ_SECONDS=600 BUILD_DIR=... .ci/fuzz.sh    longer runs
#
# The targets are compiled straight from the host sources (no CMake): libFuzzer needs
# clang, and the library's own build may use gcc. New inputs the fuzzer finds go to
# $BUILD_DIR/corpus/, never into the committed corpus; to keep a finding, add its bytes
# to tests/fuzz/make_corpus.sh. About 2.5 minutes with the default 60 s per target.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-60}
targets=(fuzz_config fuzz_schedule)

cc=${FUZZ_CC:-}
if [ -z "$cc" ]; then
  for c in clang clang-14 clang-15 clang-16; do
    if command -v "$c" >/dev/null; then cc=$c; break; fi
  done
fi
[ -n "$cc" ] || { echo "fuzz: clang not found (Debian: apt-get install clang)" >&2; exit 1; }

# The host build of the library: every source of src/ plus the CPU kernels, the host
# executor and the stand-in for the CUDA executor (nothing here needs CUDA or MPI).
sources=(src/*.c kernels/attn_ref.c kernels/exec_host.c kernels/exec_cuda_stub.c)
# shellcheck disable=SC2054  # the commas are clang's list syntax
flags=(-g -O1 -std=c11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter -Iinclude -Isrc -Ikernels -Itests/fuzz
       -D_GNU_SOURCE)
mkdir -p "$build"
for t in "${targets[@]}"; do
  echo "fuzz: building $t with $cc"
  "$cc" "${flags[@]}" "${sources[@]}" "tests/fuzz/$t.c" -lm -lpthread -o "$build/$t"
done

export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
failed=0
for t in "${targets[@]}"; do
  seeds="tests/fuzz/corpus/$t"
  work="$build/corpus/$t"
  art="$build/artifacts/$t"
  mkdir -p "$work" "$art"
  # 1. Every committed input on its own: the regressions must stay fixed.
  if ! "$build/$t" "$seeds"/* >"$build/$t-replay.log" 2>&1; then
    echo "fuzz: $t FAILED on a committed input:" >&2
    tail -40 "$build/$t-replay.log" >&2
    failed=1
    continue
  fi
  echo "fuzz: $t replayed $(find "$seeds" -type f | wc -l) committed inputs"
  # 2. Fuzzing. New inputs go to the first directory; the committed one is read only.
  #    -max_len: the targets read at most ~70 bytes, longer inputs only repeat work.
  #    -timeout: one input taking 10 s is a hang (each takes microseconds).
  if ! "$build/$t" -max_total_time="$seconds" -max_len=128 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$art/" -print_final_stats=1 "$work" "$seeds" >"$build/$t.log" 2>&1; then
    echo "fuzz: $t FAILED; reproducer(s) in $art:" >&2
    ls -l "$art" >&2
    grep -E -A30 "ERROR:|runtime error|deadly signal" "$build/$t.log" | head -60 >&2 || tail -40 "$build/$t.log" >&2
    failed=1
    continue
  fi
  runs=$(grep -E "stat::number_of_executed_units" "$build/$t.log" | awk '{print $2}')
  cov=$(grep -E "DONE" "$build/$t.log" | grep -o "cov: [0-9]*" || true)
  echo "fuzz: $t clean: ${runs:-?} inputs in ${seconds} s (${cov:-cov: ?}), working corpus $(find "$work" -type f | wc -l) inputs"
done
if [ "$failed" -ne 0 ]; then
  echo "fuzz: FAILED" >&2
  exit 1
fi
echo "fuzz: PASSED"
