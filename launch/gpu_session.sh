#!/usr/bin/env bash
# gpu_session.sh -- build, test and benchmark cpattn on a GPU machine in one go.
#
#   bash launch/gpu_session.sh build test sanitize matrix faults examples binding bench profile torch long pack
#   (any subset; stages run in the order given)
#
# Used on the lent GPU machines (Ubuntu 24.04, CUDA 13, cuDNN 9.19 inside PyTorch's
# environment, NCCL 2.28, Open MPI 4.1, no network): cmocka comes as Debian packages in
# .deps/ (apt-get download libcmocka0 libcmocka-dev), unpacked here. Every step has a
# time limit so that one hang cannot eat the whole session; logs go to $OUT (or out/).
set -u
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
BUILD=${BUILD:-build-gpu}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
CUDNN_ROOT=${CUDNN_ROOT:-$(python3 -c 'import nvidia.cudnn as c, os; print(os.path.dirname(c.__file__) if c.__file__ else list(c.__path__)[0])' 2>/dev/null)}
export CUDNN_ROOT
DEPS=$PWD/.deps/root
if [ -d .deps ] && [ ! -d "$DEPS" ]; then for f in .deps/*.deb; do dpkg -x "$f" "$DEPS"; done; fi
export LD_LIBRARY_PATH=$CUDNN_ROOT/lib:$DEPS/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
MPIRUN="mpirun --oversubscribe --bind-to none"
step() { echo; echo "=== $1 ($(date +%T))"; }

for stage in "$@"; do
  case $stage in
  build)
    step "build (cuDNN from $CUDNN_ROOT, $NGPU GPU(s))"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    timeout 300 cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCPATTN_REQUIRE_CUDA=ON \
      -DCUDNN_ROOT="$CUDNN_ROOT" -DCMAKE_PREFIX_PATH="$DEPS/usr" >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
    grep "cpattn:" "$OUT/cmake.log"
    timeout 400 cmake --build "$BUILD" -j 16 >"$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -30; exit 1; }
    echo "build ok"
    ;;
  test)
    step "cuDNN module against an fp64 CPU reference"
    CPATTN_TEST_NO_PERF=1 timeout 180 "$BUILD/tests/test_cudnn_sdpa" >"$OUT/cudnn_sdpa.log" 2>&1
    echo "exit $?"; grep -E "PASS|FAIL|passed|failed" "$OUT/cudnn_sdpa.log" | tail -20
    for np in ${TEST_NPS:-1 2}; do
      [ "$np" -le "$NGPU" ] || continue
      step "distributed attention, $np GPU(s), against single-GPU attention on the whole sequence"
      timeout 420 $MPIRUN -np $np "$BUILD/tests/test_gpu_attention" >"$OUT/gpu_attention_np$np.log" 2>&1
      echo "exit $?"; grep -E "worst|cases|deterministic|FAIL|ERROR|PASSED|FAILED|error" "$OUT/gpu_attention_np$np.log" | tail -60
    done
    ;;
  sanitize)
    step "compute-sanitizer memcheck and racecheck on small cases, 1 and $NGPU rank(s)"
    # Every rank under the tool (mpirun ... compute-sanitizer ...). The verdict attributes
    # each report: cpattn's own must be none; launch/sanitize_verdict.py says why NCCL's
    # API probes and cuDNN's generated Hopper kernels show up and are not ours.
    for np in 1 $NGPU; do
      for tool in memcheck racecheck; do
        # one tool log per rank: two ranks writing one file interleave their reports
        timeout 200 $MPIRUN -np $np compute-sanitizer --tool $tool --print-limit 200 \
          --log-file "$OUT/sanitize_${tool}_np${np}_rank%q{OMPI_COMM_WORLD_RANK}.log" \
          "$BUILD/tests/test_gpu_attention" --quick >"$OUT/sanitize_${tool}_np$np.out" 2>&1
        echo "$tool np$np: exit $?, test: $(grep -c "PASSED" "$OUT/sanitize_${tool}_np$np.out") rank(s) PASSED of $np"
      done
      [ "$np" -gt 1 ] || [ "$NGPU" -gt 1 ] || break
    done
    python3 launch/sanitize_verdict.py "$OUT"/sanitize_*_rank*.log | tee "$OUT/sanitize_verdict.txt"
    ;;
  matrix)
    step "cpattn-bench --check on $NGPU GPU(s): every schedule x mask x layout (tests/bench_check_matrix.sh)"
    MATRIX_EXECUTOR=cuda timeout 420 bash tests/bench_check_matrix.sh mpirun "$NGPU" "$BUILD/launch/cpattn-bench" \
      --oversubscribe --bind-to none >"$OUT/matrix.log" 2>&1
    echo "exit $?"; grep -E "^(ok|FAIL)|runs," "$OUT/matrix.log" | cut -c1-150
    ;;
  faults)
    step "fault injection on GPUs: a stalled and a dead peer (bounded wait, NCCL abort), a config mismatch"
    for c in stall exit mismatch; do
      FAULT_EXECUTOR=cuda timeout 120 sh tests/test_faults.sh $c "$BUILD/launch/cpattn-bench" mpirun -np \
        --oversubscribe --bind-to none >"$OUT/fault_$c.log" 2>&1
      echo "$c: exit $?"; grep -E "exit status|FAIL|cpattn-bench: rank" "$OUT/fault_$c.log" | head -8
    done
    ;;
  examples)
    step "examples: MPI bootstrap forward+backward, and a trainer's borrowed ncclComm_t"
    for ex in mpi_forward_backward borrow_nccl; do
      timeout 120 $MPIRUN -np "$NGPU" "$BUILD/examples/$ex" </dev/null >"$OUT/example_$ex.log" 2>&1
      echo "$ex: exit $?"; tail -4 "$OUT/example_$ex.log"
    done
    ;;
  binding)
    step "PyTorch binding on $NGPU GPU(s): values, gradients, a training loop against SDPA"
    CPATTN_LIBRARY=$BUILD/libcpattn.so PYTHONPATH=python timeout 300 torchrun --nproc_per_node="$NGPU" \
      python/test_torch_binding.py >"$OUT/binding.log" 2>&1
    echo "exit $?"; grep -v "^W\|^\[W" "$OUT/binding.log" | tail -25
    ;;
  bench)
    step "cpattn-bench on $NGPU GPU(s): check, then the performance matrix (JSON lines in bench.jsonl)"
    B="$BUILD/launch/cpattn-bench"
    timeout 150 $MPIRUN -np "$NGPU" $B --seq 32768 --check >"$OUT/bench_check.log" 2>&1; echo "exit $?"; grep -v "^\[" "$OUT/bench_check.log" | tail -9
    while read -r args; do
      timeout 150 $MPIRUN -np "$NGPU" $B $args --json </dev/null >>"$OUT/bench.jsonl" 2>>"$OUT/bench.err"; echo "[$args] exit $?"
    done <<'EOF2'
--seq 32768
--seq 131072
--seq 32768 --kv-heads 8 --mask none
--seq 131072 --kv-heads 8 --mask none
--seq 131072 --layout thd --doc-min 1024 --doc-max 65536
--seq 32768 --schedule a2a
--seq 131072 --schedule a2a
--seq 32768 --schedule allgather --kv-heads 8
--seq 131072 --schedule allgather --kv-heads 8
EOF2
    python3 - "$OUT/bench.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try: r = json.loads(line)
    except Exception: continue
    print("%-9s %-6s %-4s S=%-7d kv=%-2d fwd %8.2f ms %5.0f TF/s  bwd %8.2f ms %5.0f TF/s  hidden %3.0f%%/%3.0f%%" % (
        r["schedule"], r["mask"], r["layout"], r["seq"], r["kv_heads"], r["fwd_ms"], r["fwd_tflops_per_rank"],
        r["bwd_ms"], r["bwd_tflops_per_rank"], 100 * r["fwd_hidden"], 100 * r["bwd_hidden"]))
PY
    ;;
  profile)
    # Where a pass's GPU time goes (CPATTN_PROFILE_CALLS=1, kernels/exec_cuda_profile.h): every
    # cuDNN call's rate on its chunk shape, the element-wise kernels, and the rest (launch gaps,
    # exchange waits). One warm-up and one timed pass each way; --no-profile leaves out the
    # compute-only and comm-only passes, so the last forward and backward are the timed ones.
    step "per-call profile on $NGPU GPU(s): timed forward and backward of ranks 0 and 1"
    while read -r name args; do
      CPATTN_PROFILE_CALLS=1 timeout 120 $MPIRUN -np "$NGPU" "$BUILD/launch/cpattn-bench" $args --iters 1 --warmup 1 \
        --no-profile </dev/null >"$OUT/profile_$name.log" 2>&1
      echo "[$name: $args] exit $?"; grep -E "^ +all " "$OUT/profile_$name.log"
      # Two readings of the log: the last pass of each rank and direction, then its lines
      # (at most 16 calls of a report; beyond that a count).
      awk '!/^\[cpattn profile\] rank [01]\//{next} {k = $4 " " $7}
           NR == FNR {if ($6 + 0 > last[k]) last[k] = $6 + 0; next}
           $6 + 0 != last[k] {next}
           $8 ~ /^-?[0-9]+$/ && ++calls[k] > 16 {more[k]++; next}
           /element-wise ms/ && more[k] {print "[cpattn profile] rank " $4 " pass " $6 " " $7 " ... " more[k] " more call(s)"}
           {print}' "$OUT/profile_$name.log" "$OUT/profile_$name.log"
    done <<'EOF2'
causal32k --seq 32768
causal128k --seq 131072
thd128k --seq 131072 --layout thd --doc-min 1024 --doc-max 65536
EOF2
    ;;
  long)
    # The longest causal sequence (Hkv = 8) whose forward+backward completes: the first
    # of LONG_SEQS (longest first) that runs; allocation failures end a try at once.
    for seq in ${LONG_SEQS:-${LONG_SEQ:-1048576}}; do
      step "long sequence: causal, 8 KV heads, $seq tokens over $NGPU GPU(s), one timed fwd+bwd"
      CPATTN_DEBUG=INFO timeout ${LONG_TIMEOUT:-280} $MPIRUN -np "$NGPU" "$BUILD/launch/cpattn-bench" --seq "$seq" \
        --kv-heads 8 --iters 1 --warmup 0 --no-profile --json --progress </dev/null >"$OUT/bench_long_$seq.json" \
        2>"$OUT/bench_long_$seq.err"
      rc=$?; echo "exit $rc"; cat "$OUT/bench_long_$seq.json"
      grep -E "workspace:|CUDA executor:|rror|emory" "$OUT/bench_long_$seq.err" | cut -c1-300 | sort -u | head -8
      grep "^cpattn-bench:" "$OUT/bench_long_$seq.err" | tail -8
      [ "$rc" -ne 0 ] || break
    done
    ;;
  torch)
    step "PyTorch baselines (context parallel + single-GPU cuDNN), same session"
    timeout 200 torchrun --nproc_per_node="$NGPU" launch/torch_baseline.py --seq 32768 131072 >"$OUT/torch.log" 2>&1
    echo "exit $?"
    timeout 120 torchrun --nproc_per_node="$NGPU" launch/torch_baseline.py --seq 131072 --kv-heads 8 --no-causal >"$OUT/torch_gqa.log" 2>&1
    echo "exit $?"; grep -h "^JSON" "$OUT/torch.log" "$OUT/torch_gqa.log" | cut -c6- | tee "$OUT/torch.jsonl" | cut -c1-400
    ;;
  pack)
    # Only 8 files come back from a lent machine: everything in one archive.
    (cd "$OUT" && tar czf logs.tgz --exclude=logs.tgz --remove-files -- *) && echo "packed $(du -h "$OUT/logs.tgz" | cut -f1)"
    ;;
  esac
done
echo "=== done ($(date +%T))"
