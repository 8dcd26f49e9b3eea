#!/usr/bin/env python3
"""PyTorch baselines for cpattn: PyTorch's own context parallelism and single-GPU cuDNN attention.

What it measures (bf16, layout (B, H, S, D), one process per GPU):

  torch_cp            torch.distributed.tensor.experimental.context_parallel: PyTorch's ring
                      attention, with the cuDNN SDPA backend and, for causal attention, its
                      head-tail ("zigzag") load balancing. The whole sequence S is split over the
                      world size.
  torch_cudnn_single  F.scaled_dot_product_attention with the cuDNN backend on the whole sequence
                      on one GPU (rank 0): the kernel's own rate, the ceiling a CP scheme can
                      approach per GPU.

Launch (two GPUs, one process each):

  torchrun --nproc_per_node=2 launch/torch_baseline.py --seq 32768 131072

  One process also works, with or without torchrun (CP then runs over a one-GPU mesh, which
  measures the wrapper's own overhead):

  python3 launch/torch_baseline.py --seq 32768

  Other options: --batch 1 --heads 32 --kv-heads 8 (GQA) --head-dim 128 --no-causal --iters 10
  --warmup 3 --mode cp|single|both --rotate allgather|alltoall --no-balance --no-check
  --prelaunch-ms 2 (see below). --device cpu is a harness smoke test only (gloo, float32, math
  backend, wall-clock timings not worth reading; PyTorch's CP handles only the CUDA SDPA kernels,
  so expect the torch_cp line to carry an error, which exercises the error path).

What it prints (stdout):

  Progress lines, "[rank R] ...", flushed as they happen.
  One line per measurement on rank 0: "JSON {...}" with at least
    impl, world, seq, batch, heads, kv_heads, head_dim, causal, fwd_ms, bwd_ms,
    fwd_tflops_per_gpu, bwd_tflops_per_gpu, note, error
  plus check_rel_err = max|CP - ref| / max|ref| and check_ok (<= 1e-2), where ref is single-GPU
  cuDNN on the whole sequence on rank 0 and the CP output is gathered with
  context_parallel_unshard; out_finite / grad_finite (no NaN/Inf on any rank); load_balance,
  rotate, gqa (how K/V with fewer heads were fed), fwd_ms_min/bwd_ms_min, and versions.
  Grep them with:  grep '^JSON ' log | cut -c6-
  A readable table at the end on rank 0.

Conventions (the same as the rest of the project's measurements, see shared/research):

  forward FLOPs  = 4 * B * H * S^2 * D, halved for causal (2 * B * H * S^2 * D)
  backward FLOPs = 2.5 x forward
  TFLOP/s per GPU = FLOPs / world / time   (world = 1 for the single-GPU line)
  fwd_ms / bwd_ms = median over --iters timed iterations (after --warmup) of, per iteration,
  the slowest rank's CUDA-event time. Each iteration runs a fresh forward (timed) and then
  out.backward(grad) (timed separately), so the forward is never inside the backward's time.
  Ranks are aligned with a CPU barrier (gloo) before each timed region.
  The forward is the training forward (inputs require grad, the log-sum-exp is kept).
  Host-side dispatch is inside the timed region unless --prelaunch-ms puts a GPU sleep in
  front of the start event (then the host runs ahead and only GPU time is counted, as inside a
  real model where earlier layers keep the GPU busy). PyTorch CP's Python/DTensor dispatch is
  part of what a user pays, so the default counts it.

PyTorch API relied on (2.11; the implementation lives in
torch.distributed.tensor.experimental._context_parallel._attention, re-exported by the older
module torch.distributed.tensor.experimental._attention; every name is looked up defensively and a
missing one becomes the torch_cp line's "error"):

  context_parallel(mesh, buffers=[q, k, v], buffer_seq_dims=[2, 2, 2], no_restore_buffers={...})
      a context manager: shards the buffers in place along S (head-tail reordered when
      balancing) and patches F.scaled_dot_product_attention with the ring for its duration.
      Buffers must not require grad (they are resized); the backward must run inside it.
  _cp_options.enable_load_balance   head-tail balancing on/off (read at entry, in the ring and
                                    by context_parallel_unshard)
  set_rotate_method("allgather" | "alltoall"), _cp_options.rotate_method (PyTorch default:
                                    allgather; the dK/dV ring always uses all-to-all)
  context_parallel_unshard(mesh, [out], [2])   all-gather + undo of the head-tail order
  init_device_mesh("cuda", (world,), mesh_dim_names=("cp",))
  torch.nn.attention.sdpa_kernel([SDPBackend.CUDNN_ATTENTION]), F.scaled_dot_product_attention(
      ..., enable_gqa=True)

Robustness (GPU time is scarce, so one failure must not end the run):

  Every measurement is wrapped; its exception becomes the JSON "error" and the run goes on.
  All ranks run the same collective sequence: every step ends in a small gloo all-reduce of a
  "did I fail" flag, so all ranks leave a failed measurement at the same point. Control
  traffic goes over a separate gloo group (CPU), so a rank waiting for rank 0's single-GPU
  measurement, or for an error to be agreed, never sits inside an NCCL collective. A rank that
  fails *inside* PyTorch's ring (between NCCL calls) can still leave its peer stuck in NCCL;
  --nccl-timeout-s (default 180 s) bounds that: the NCCL watchdog then ends the job.
  NVLink multicast is forced off before torch is imported (the GPU machines require it).
"""

import os

# NVLink multicast (NVLS) must stay off on the project's GPU machines: a program that uses it can
# take the host's shared GPUs out of service. Set before torch (and so NCCL) is imported.
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ["NVSHMEM_DISABLE_NVLS"] = "1"

import argparse
import contextlib
import datetime
import gc
import importlib
import json
import socket
import statistics
import sys
import time

# torch is imported in main(), after argument parsing, so that --help and argument errors work on
# a machine without torch.
torch = None
F = None
dist = None

RANK = 0
WORLD = 1
LOCAL_RANK = 0
GLOO = None  # CPU process group for control traffic (flags, barriers, results)
PEER_FAILED = "another rank failed (see its error)"


# --------------------------------------------------------------------------------------------
# small helpers (no torch needed)
# --------------------------------------------------------------------------------------------

def log(msg, all_ranks=False):
    if all_ranks or RANK == 0:
        print(f"[rank {RANK}] {msg}", flush=True)


def fmt_exc(e, limit=600):
    """One line, bounded: JSON consumers and the table must stay readable (OOM texts are long)."""
    s = f"{type(e).__name__}: {e}".replace("\n", " ").replace("\r", " ")
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def parse_seq(text):
    """Accept 32768, 32k, 128K, 1M."""
    t = text.strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1024, t[:-1]
    elif t.endswith("m"):
        mult, t = 1024 * 1024, t[:-1]
    try:
        v = int(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad sequence length {text!r}")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"sequence length must be positive, got {text!r}")
    return v


def attn_flops(batch, heads, seq, head_dim, causal):
    """Forward FLOPs of attention by the project's convention (backward = 2.5x this)."""
    f = 4.0 * batch * heads * seq * seq * head_dim
    return f / 2.0 if causal else f


def tflops(flops, ms, world):
    if ms is None or ms <= 0:
        return None
    return flops / world / (ms * 1e-3) / 1e12


def median_or_none(xs):
    return statistics.median(xs) if xs else None


def rnd(x, nd=3):
    return None if x is None else round(float(x), nd)


def build_parser():
    p = argparse.ArgumentParser(
        description="PyTorch context-parallel and single-GPU cuDNN attention baselines "
                    "(launch: torchrun --nproc_per_node=2 launch/torch_baseline.py --seq 32768 131072)")
    p.add_argument("--seq", type=parse_seq, nargs="+", default=[32768, 131072],
                   help="total sequence lengths S (whole sequence, split over the ranks for CP); "
                        "accepts 32768 or 32k")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32, help="query heads H")
    p.add_argument("--kv-heads", type=int, default=None, help="K/V heads Hkv (default: = heads)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True,
                   help="causal attention (default) or --no-causal")
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                   help="PyTorch CP head-tail load balancing for causal (default on; PyTorch "
                        "refuses it for non-causal, so it is off there)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations (median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--mode", choices=["cp", "single", "both"], default="both")
    p.add_argument("--rotate", choices=["allgather", "alltoall"], default=None,
                   help="PyTorch CP K/V rotation (default: PyTorch's own default)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare the gathered CP output with single-GPU cuDNN on rank 0 (default on)")
    p.add_argument("--prelaunch-ms", type=float, default=0.0,
                   help="GPU sleep enqueued before each timed region so host dispatch is hidden "
                        "(0 = off: host dispatch is counted)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--nccl-timeout-s", type=int, default=180,
                   help="NCCL watchdog timeout: bounds a hang if one rank fails inside the ring")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu = harness smoke test only (float32, math backend)")
    return p


def check_args(p, args):
    if args.kv_heads is None:
        args.kv_heads = args.heads
    for name in ("batch", "heads", "kv_heads", "head_dim"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.heads % args.kv_heads != 0:
        p.error(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    if args.iters < 1:
        p.error("--iters must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.iters < 5:
        print("warning: fewer than 5 timed iterations; the median is noisy", flush=True)


# --------------------------------------------------------------------------------------------
# distributed setup
# --------------------------------------------------------------------------------------------

def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(args):
    """Returns (ok, error). Without torchrun we are a world of one and fill in the rendezvous."""
    global RANK, WORLD, LOCAL_RANK, GLOO
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    RANK = int(os.environ["RANK"])
    WORLD = int(os.environ["WORLD_SIZE"])
    LOCAL_RANK = int(os.environ.get("LOCAL_RANK", "0"))

    if args.device == "cuda":
        ndev = torch.cuda.device_count()
        if ndev == 0:
            return False, "no CUDA device visible"
        torch.cuda.set_device(LOCAL_RANK % ndev)

    if not dist.is_available():
        return False, "torch.distributed is not available in this build"
    backend = "nccl" if args.device == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=args.nccl_timeout_s)
    try:
        kw = dict(backend=backend, timeout=timeout)
        if args.device == "cuda":
            # device_id binds the rank to its GPU up front (no "guessing device" warnings, eager
            # NCCL init). Older releases lack the argument: retry without it.
            try:
                dist.init_process_group(device_id=torch.device("cuda", torch.cuda.current_device()), **kw)
            except TypeError:
                dist.init_process_group(**kw)
        else:
            dist.init_process_group(**kw)
        # Control group on the CPU with a long timeout: ranks other than 0 wait here while rank 0
        # measures the single-GPU baseline, which can take minutes at long sequences.
        GLOO = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=3600))
    except Exception as e:
        return False, f"init_process_group({backend}) failed: {fmt_exc(e)}"
    return True, None


def any_failed(failed):
    """All ranks call this at the same points. Returns True if any rank reports a failure.

    It is also the barrier that aligns ranks before a timed region (a gloo all-reduce on the CPU,
    so a waiting rank never sits in NCCL)."""
    if GLOO is None or WORLD == 1:
        return bool(failed)
    t = torch.tensor([1 if failed else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=GLOO)
    return bool(t.item())


def gather_objects(obj):
    if GLOO is None or WORLD == 1:
        return [obj]
    out = [None] * WORLD
    dist.all_gather_object(out, obj, group=GLOO)
    return out


# --------------------------------------------------------------------------------------------
# PyTorch context-parallel API lookup (it is experimental and moves between releases)
# --------------------------------------------------------------------------------------------

class CPApi:
    """Finds the pieces of PyTorch's CP that we use, without crashing when one is missing.

    In 2.9+ the implementation lives in torch.distributed.tensor.experimental._context_parallel
    ._attention and the older module ..._attention re-exports it; the public entry point is
    torch.distributed.tensor.experimental.context_parallel."""

    MODULES = (
        "torch.distributed.tensor.experimental._attention",
        "torch.distributed.tensor.experimental._context_parallel._attention",
        "torch.distributed.tensor.experimental._context_parallel",
        "torch.distributed.tensor.experimental.context_parallel",
    )

    def __init__(self):
        self.missing = []
        self.found = {}
        self.mods = []
        for name in self.MODULES:
            try:
                self.mods.append((name, importlib.import_module(name)))
            except Exception:
                pass
        self.context_parallel = None
        try:
            from torch.distributed.tensor.experimental import context_parallel as cp_pub
            if callable(cp_pub):
                self.context_parallel = cp_pub
                self.found["context_parallel"] = "torch.distributed.tensor.experimental"
        except Exception:
            pass
        if self.context_parallel is None:
            self.context_parallel = self._attr("context_parallel")
        if self.context_parallel is None:
            self.missing.append("torch.distributed.tensor.experimental.context_parallel")
        self.cp_options = self._attr("_cp_options")
        if self.cp_options is None or not hasattr(self.cp_options, "enable_load_balance"):
            self.missing.append("_attention._cp_options.enable_load_balance")
            self.cp_options = None
        self.set_rotate_method = self._attr("set_rotate_method")
        self.unshard = self._attr("context_parallel_unshard")
        # For cleaning up after an exception inside the context (see force_cleanup).
        self._disable_impl = self._attr("_disable_context_parallel_dispatcher_impl")
        self._disable_dtensor = self._attr("_disable_cp_dtensor_dispatcher")

    def _attr(self, name):
        for modname, mod in self.mods:
            obj = getattr(mod, name, None)
            if obj is not None:
                self.found.setdefault(name, modname)
                return obj
        return None

    def rotate_name(self):
        try:
            return self.cp_options.rotate_method.name.lower().replace("_", "")  # allgather/alltoall
        except Exception:
            return None

    def describe(self):
        parts = [f"{k} <- {v}" for k, v in sorted(self.found.items())]
        if self.missing:
            parts.append("MISSING: " + ", ".join(self.missing))
        if self.set_rotate_method is None:
            parts.append("no set_rotate_method")
        if self.unshard is None:
            parts.append("no context_parallel_unshard")
        return "; ".join(parts)

    def force_cleanup(self, orig_sdpa):
        """context_parallel() is a generator context manager without try/finally: if the body
        raises, it never unpatches F.scaled_dot_product_attention nor the DTensor SDPA handlers,
        and every later SDPA call (the single-GPU baseline too) would go through the ring. Undo
        both by hand; each step is idempotent."""
        for fn in (self._disable_impl, self._disable_dtensor):
            if fn is not None:
                try:
                    fn()
                except Exception:
                    pass
        if F.scaled_dot_product_attention is not orig_sdpa:
            F.scaled_dot_product_attention = orig_sdpa


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------

class Clock:
    """CUDA events on the current stream (all SDPA and merge kernels run there, and NCCL's
    streams are joined back to it before the output is usable), or wall time on the CPU."""

    def __init__(self, device, prelaunch_ms):
        self.cuda = device == "cuda"
        self.sleep_cycles = 0
        self.prelaunch_note = None
        if self.cuda and prelaunch_ms > 0:
            try:
                # Calibrate torch.cuda._sleep (spins for N GPU clock cycles) against events.
                n = 5_000_000
                torch.cuda._sleep(n // 10)
                a, b = self.mark(), None
                torch.cuda._sleep(n)
                b = self.mark()
                torch.cuda.synchronize()
                cyc_per_ms = n / max(self.ms(a, b), 1e-3)
                self.sleep_cycles = int(prelaunch_ms * cyc_per_ms)
            except Exception as e:
                self.prelaunch_note = f"--prelaunch-ms ignored ({fmt_exc(e, 120)})"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def ms(self, a, b):
        if self.cuda:
            return a.elapsed_time(b)
        return (b - a) * 1e3

    def prelaunch(self):
        if self.sleep_cycles:
            torch.cuda._sleep(self.sleep_cycles)


def timed_loop(fwd, leaves, warmup, iters, sync_fail, clock, label):
    """Run warmup+iters iterations of (forward, backward). Returns (fwd_ms list, bwd_ms list, err).

    sync_fail(flag) is called at the same points on every rank (CP: any_failed, a CPU barrier
    that also spreads failures; single GPU: identity). All ranks therefore leave together.
    A fresh forward builds a new graph each iteration; out.backward(grad) is timed alone."""
    fwd_ms, bwd_ms = [], []
    grad = None
    err = None
    total = warmup + iters
    for it in range(total):
        if it == 0 or it == warmup:
            log(f"{label}: {'warm-up' if it < warmup else 'timing'} ({warmup if it < warmup else iters} iterations)")
        out = None
        # ---- forward
        if sync_fail(err is not None):
            return fwd_ms, bwd_ms, err or PEER_FAILED
        try:
            for t in leaves:
                t.grad = None
            clock.prelaunch()
            e0 = clock.mark()
            out = fwd()
            e1 = clock.mark()
            if grad is None:
                # randn_like keeps out's strides (cuDNN's output can be in BSHD memory order).
                grad = torch.randn_like(out)
            clock.sync()
            t_fwd = clock.ms(e0, e1)
        except Exception as e:
            err = fmt_exc(e)
            out = None
        # ---- backward (the forward above is finished and outside this region)
        if sync_fail(err is not None):
            return fwd_ms, bwd_ms, err or PEER_FAILED
        try:
            clock.prelaunch()
            e2 = clock.mark()
            out.backward(grad)
            e3 = clock.mark()
            clock.sync()
            if it >= warmup:
                fwd_ms.append(t_fwd)
                bwd_ms.append(clock.ms(e2, e3))
        except Exception as e:
            err = fmt_exc(e)
        del out
    if sync_fail(err is not None):
        return fwd_ms, bwd_ms, err or PEER_FAILED
    return fwd_ms, bwd_ms, None


# --------------------------------------------------------------------------------------------
# inputs and attention calls
# --------------------------------------------------------------------------------------------

def make_qkv(args, seq, requires_grad, dev, dtype):
    """Same seed on every rank (and per S), so every rank builds the same full sequence and
    PyTorch's CP can keep its own shard without communication. Random normal, never zeros."""
    g = torch.Generator(device=dev)
    g.manual_seed(args.seed + seq)
    B, H, Hkv, D = args.batch, args.heads, args.kv_heads, args.head_dim
    q = torch.randn((B, H, seq, D), generator=g, device=dev, dtype=dtype)
    k = torch.randn((B, Hkv, seq, D), generator=g, device=dev, dtype=dtype)
    v = torch.randn((B, Hkv, seq, D), generator=g, device=dev, dtype=dtype)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v


def gqa_modes(args):
    """How K/V with fewer heads are fed to SDPA, in order of preference."""
    if args.kv_heads == args.heads:
        return ["mha"]
    # enable_gqa=True lets the kernel read shared K/V heads (if the cuDNN path supports it);
    # otherwise repeat K/V to H heads first, which costs memory and, under CP, ring traffic.
    return ["enable_gqa", "repeat_interleave"]


def make_fwd(q, k, v, causal, mode, rep):
    # F.scaled_dot_product_attention is looked up at call time on purpose: inside
    # context_parallel() PyTorch replaces that module attribute with its ring wrapper.
    if mode == "enable_gqa":
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    if mode == "repeat_interleave":
        # The repeat is part of the timed forward (and its reduction part of the backward):
        # a model that must repeat pays it.
        return lambda: F.scaled_dot_product_attention(
            q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), is_causal=causal)
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def sdpa_backend_ctx(args):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if args.device == "cuda":
        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION])
    return sdpa_kernel([SDPBackend.MATH])


def gqa_note(mode, rep):
    if mode == "enable_gqa":
        return "GQA via enable_gqa=True"
    if mode == "repeat_interleave":
        return f"GQA via repeat_interleave of K/V heads x{rep} inside the timed forward (enable_gqa=True failed)"
    return None


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------

def base_record(impl, world, seq, args, env):
    return {
        "impl": impl, "world": world, "seq": seq, "batch": args.batch, "heads": args.heads,
        "kv_heads": args.kv_heads, "head_dim": args.head_dim, "causal": bool(args.causal),
        "fwd_ms": None, "bwd_ms": None, "fwd_tflops_per_gpu": None, "bwd_tflops_per_gpu": None,
        "note": "", "error": None,
        "check_rel_err": None, "check_max_abs_err": None,
        "fwd_ms_min": None, "bwd_ms_min": None, "iters": args.iters, "warmup": args.warmup,
        "launched_world": WORLD, "prelaunch_ms": args.prelaunch_ms, **env,
    }


def finish_record(rec, per_rank, args):
    """Merge the per-rank dicts: per-iteration max over ranks, then median over iterations."""
    errs, notes = [], []
    for r, d in enumerate(per_rank):
        if d.get("error"):
            errs.append(d["error"] if len(per_rank) == 1 else f"rank{r}: {d['error']}")
        for n in d.get("notes", []):
            # A peer's "another rank failed" note adds nothing next to the failing rank's own.
            if n and n not in notes and not (len(per_rank) > 1 and PEER_FAILED in n):
                notes.append(n)
    real = [e for e in errs if PEER_FAILED not in e]
    rec["error"] = "; ".join(real or errs) or None
    rec["note"] = "; ".join(notes)
    d0 = per_rank[0]
    for key in ("gqa", "load_balance", "rotate", "local_seq", "out_finite", "grad_finite",
                "check_rel_err", "check_max_abs_err", "check_ok"):
        if key in d0:
            rec[key] = d0[key]
    for key in ("out_finite", "grad_finite"):
        vals = [d.get(key) for d in per_rank if d.get(key) is not None]
        if vals:
            rec[key] = all(vals)
    if rec["error"] is None:
        n = min(len(d.get("fwd", [])) for d in per_rank)
        if n > 0:
            fwd = [max(d["fwd"][i] for d in per_rank) for i in range(n)]
            bwd = [max(d["bwd"][i] for d in per_rank) for i in range(n)]
            ff = attn_flops(args.batch, args.heads, rec["seq"], args.head_dim, args.causal)
            rec["fwd_ms"] = rnd(median_or_none(fwd))
            rec["bwd_ms"] = rnd(median_or_none(bwd))
            rec["fwd_ms_min"] = rnd(min(fwd))
            rec["bwd_ms_min"] = rnd(min(bwd))
            rec["fwd_tflops_per_gpu"] = rnd(tflops(ff, rec["fwd_ms"], rec["world"]), 1)
            rec["bwd_tflops_per_gpu"] = rnd(tflops(2.5 * ff, rec["bwd_ms"], rec["world"]), 1)
        else:
            rec["error"] = "no timed iterations completed"
    return rec


def _json_safe(v):
    # NaN/Inf (e.g. a NaN output in the check) are not valid JSON: write them as strings.
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return str(v)
    return v


def emit(rec, records):
    if RANK == 0:
        print("JSON " + json.dumps({k: _json_safe(v) for k, v in rec.items()}), flush=True)
    records.append(rec)


def print_table(records):
    if RANK != 0 or not records:
        return
    cols = [("impl", 18), ("world", 5), ("seq", 8), ("B", 3), ("H", 4), ("Hkv", 4), ("D", 4),
            ("causal", 6), ("fwd_ms", 9), ("fwd_TF/gpu", 10), ("bwd_ms", 9), ("bwd_TF/gpu", 10),
            ("check", 9)]

    def cell(v, w):
        if v is None:
            s = "-"
        elif isinstance(v, float):
            s = f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else (f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}")
        else:
            s = str(v)
        return s.rjust(w)

    lines = ["", "=" * 60 + " summary (TFLOP/s per GPU; fwd FLOPs = 4*B*H*S^2*D, halved if causal; bwd = 2.5x fwd)",
             " ".join(name.rjust(w) for name, w in cols) + "  note / error"]
    for r in records:
        vals = [r["impl"], r["world"], r["seq"], r["batch"], r["heads"], r["kv_heads"], r["head_dim"],
                "yes" if r["causal"] else "no", r["fwd_ms"], r["fwd_tflops_per_gpu"], r["bwd_ms"],
                r["bwd_tflops_per_gpu"], r.get("check_rel_err")]
        tail = ("ERROR: " + r["error"]) if r["error"] else r.get("note", "")
        if len(tail) > 160:
            tail = tail[:157] + "..."
        lines.append(" ".join(cell(v, w) for v, (_, w) in zip(vals, cols)) + "  " + tail)
    print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------------------------
# the two measurements
# --------------------------------------------------------------------------------------------

def bench_single(args, seq, clock, dev, dtype):
    """Rank 0 only (no collectives inside). Returns the per-rank dict."""
    d = {"error": None, "notes": [], "fwd": [], "bwd": []}
    rep = args.heads // args.kv_heads
    label = f"S={seq} torch_cudnn_single"
    try:
        q, k, v = make_qkv(args, seq, True, dev, dtype)
    except Exception as e:
        d["error"] = f"allocating inputs: {fmt_exc(e)}"
        return d
    try:
        with sdpa_backend_ctx(args):
            for mode in gqa_modes(args):
                fwd = make_fwd(q, k, v, args.causal, mode, rep)
                f, b, err = timed_loop(fwd, [q, k, v], args.warmup, args.iters, lambda x: x, clock, label)
                if err is None:
                    d.update(fwd=f, bwd=b, gqa=mode, error=None)
                    n = gqa_note(mode, rep)
                    if n:
                        d["notes"].append(n)
                    d["grad_finite"] = all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v)
                                           if t.grad is not None)
                    break
                d["error"] = err
                if mode == "enable_gqa":
                    d["notes"].append(f"enable_gqa=True failed: {err[:200]}")
                    log(f"{label}: enable_gqa failed ({err[:120]}); retrying with repeat_interleave")
                    if args.device == "cuda":
                        torch.cuda.empty_cache()
    except Exception as e:
        d["error"] = fmt_exc(e)
    return d


def reference_output(args, q, k, v):
    """Single-GPU cuDNN on the whole sequence, for the CP correctness check (K/V repeated for
    GQA so the reference does not depend on which GQA path works)."""
    rep = args.heads // args.kv_heads
    with torch.no_grad(), sdpa_backend_ctx(args):
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=args.causal)


def compare(full, ref):
    """max |cp - ref| / max |ref| (normwise; elementwise ratios blow up near zero), per head to
    bound the float32 temporaries."""
    max_abs = 0.0
    max_ref = 0.0
    for h in range(ref.shape[1]):
        a = full[:, h].float()
        b = ref[:, h].float()
        max_abs = max(max_abs, float((a - b).abs().max()))
        max_ref = max(max_ref, float(b.abs().max()))
    return max_abs / max(max_ref, 1e-30), max_abs


def bench_cp(args, seq, clock, api, mesh, orig_sdpa, dev, dtype):
    """All ranks. Returns this rank's dict; every rank reaches the end (gather) even on error."""
    d = {"error": None, "notes": [], "fwd": [], "bwd": []}
    rep = args.heads // args.kv_heads
    label = f"S={seq} torch_cp"
    err = None

    # --- configuration (identical decisions on every rank: no collective needed)
    if api is None or api.context_parallel is None or api.cp_options is None:
        missing = api.missing if api is not None else ["(lookup raised, see the log)"]
        err = "PyTorch CP API not found: " + ", ".join(missing)
    elif mesh is None:
        err = "no device mesh (init_device_mesh failed on some rank, see the log)"
    balance = bool(args.causal and args.balance)
    if err is None:
        try:
            api.cp_options.enable_load_balance = balance
            if args.rotate is not None:
                if api.set_rotate_method is None:
                    raise RuntimeError("--rotate given but set_rotate_method was not found")
                api.set_rotate_method(args.rotate)
            d["rotate"] = api.rotate_name()
        except Exception as e:
            err = fmt_exc(e)
    d["load_balance"] = balance
    if not args.causal:
        d["notes"].append("load balancing off: PyTorch's ring refuses it without is_causal=True")
    elif not args.balance:
        d["notes"].append("load balancing off (--no-balance)")
    elif seq % (2 * WORLD) != 0:
        d["notes"].append(f"S not divisible by 2*world={2 * WORLD}: PyTorch silently shards without balancing")
    if seq % WORLD != 0:
        d["notes"].append(f"S not divisible by world={WORLD}")

    # --- full inputs on every rank (same seed); reference on rank 0 before sharding
    q = k = v = ref = None
    if err is None:
        try:
            q, k, v = make_qkv(args, seq, False, dev, dtype)
            if RANK == 0 and args.check:
                try:
                    ref = reference_output(args, q, k, v)
                except Exception as e:
                    ref = None
                    d["notes"].append(f"check skipped: reference failed: {fmt_exc(e, 200)}")
                    if args.device == "cuda":
                        torch.cuda.empty_cache()
        except Exception as e:
            err = f"allocating inputs: {fmt_exc(e)}"
    if any_failed(err is not None):
        d["error"] = err or PEER_FAILED
        return d

    # --- enter context_parallel: shards q/k/v in place along S (dim 2), head-tail reordered
    # when balancing; patches F.scaled_dot_product_attention with the ring. No communication
    # happens here (each rank keeps its own part of the identical full tensors).
    stack = contextlib.ExitStack()
    entered = False
    try:
        stack.enter_context(sdpa_backend_ctx(args))
        bufs = [q, k, v]
        try:
            # no_restore_buffers: skip the copy-back of the full tensors at exit (we never use
            # them again), which also saves three full-size clones.
            cm = api.context_parallel(mesh, buffers=bufs, buffer_seq_dims=[2, 2, 2],
                                      no_restore_buffers=set(bufs))
        except TypeError:
            cm = api.context_parallel(mesh, buffers=bufs, buffer_seq_dims=[2, 2, 2])
        stack.enter_context(cm)
        entered = True
    except Exception as e:
        err = f"entering context_parallel: {fmt_exc(e)}"
    failed = any_failed(err is not None)

    try:
        if entered and not failed:
            # q/k/v now hold this rank's shard. The buffers themselves must not require grad
            # (context_parallel resizes them, and resize_ refuses tensors that require grad), so
            # the autograd leaves are detached aliases of the shards. Backward runs inside the
            # context: the ring's backward is dispatched through handlers that exist only there.
            ql, kl, vl = (t.detach().requires_grad_(True) for t in (q, k, v))
            d["local_seq"] = int(ql.shape[2])
            with torch.enable_grad():
                for mode in gqa_modes(args):
                    fwd = make_fwd(ql, kl, vl, args.causal, mode, rep)
                    f, b, e = timed_loop(fwd, [ql, kl, vl], args.warmup, args.iters, any_failed, clock, label)
                    if e is None:
                        d.update(fwd=f, bwd=b, gqa=mode, error=None)
                        n = gqa_note(mode, rep)
                        if n:
                            d["notes"].append(n)
                        break
                    d["error"] = e
                    if mode == "enable_gqa":
                        d["notes"].append(f"enable_gqa=True failed under CP: {e[:200]}")
                        log(f"{label}: enable_gqa failed ({e[:120]}); retrying with repeat_interleave")
                        if args.device == "cuda":
                            torch.cuda.empty_cache()
            ok = d["error"] is None  # same on all ranks: timed_loop agreed on failure

            # --- correctness: NaN/Inf in output and gradients on every rank, then the gathered
            # output against the single-GPU reference on rank 0.
            if ok:
                cerr = None
                out = None
                try:
                    d["grad_finite"] = all(bool(torch.isfinite(t.grad).all()) for t in (ql, kl, vl)
                                           if t.grad is not None)
                    with torch.no_grad():
                        out = make_fwd(ql, kl, vl, args.causal, d["gqa"], rep)()
                    d["out_finite"] = bool(torch.isfinite(out).all())
                except Exception as e:
                    cerr = fmt_exc(e)
                if not any_failed(cerr is not None) and args.check:
                    if api.unshard is None:
                        d["notes"].append("check skipped: context_parallel_unshard not found")
                    else:
                        try:
                            # Undoes the sharding (and the head-tail reorder, read from the same
                            # _cp_options.enable_load_balance) with an all-gather: every rank calls it.
                            full = api.unshard(mesh, [out], [2])[0]
                            if RANK == 0 and ref is not None:
                                rel, mx = compare(full, ref)
                                d["check_rel_err"] = float(f"{rel:.3e}")
                                d["check_max_abs_err"] = float(f"{mx:.3e}")
                                # bf16 keeps 8 significant bits (unit roundoff 3.9e-3): two correct
                                # bf16 attentions differ by a few ulps of the largest output, so
                                # 1e-2 of max|ref| separates rounding from a wrong result.
                                d["check_ok"] = bool(rel <= 1e-2)
                            del full
                        except Exception as e:
                            cerr = fmt_exc(e)
                        any_failed(cerr is not None)  # keep the collective sequence aligned
                if cerr:
                    d["notes"].append(f"check failed to run: {cerr[:200]}")
                del out
    except Exception as e:
        # Should not happen (the phases above catch their own errors), but never leave the
        # context with the ring still patched in.
        d["error"] = d["error"] or fmt_exc(e)
    finally:
        try:
            stack.close()
        except Exception as e:
            d["notes"].append(f"leaving context_parallel raised: {fmt_exc(e, 200)}")
        if api is not None:
            api.force_cleanup(orig_sdpa)
    if err and not d["error"]:
        d["error"] = err
    return d


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main():
    global torch, F, dist
    parser = build_parser()
    args = parser.parse_args()
    check_args(parser, args)

    try:
        import torch as _torch
        import torch.distributed as _dist
        import torch.nn.functional as _F
    except Exception as e:
        print(f"[rank ?] cannot import torch: {fmt_exc(e)}", flush=True)
        return 2
    torch, dist, F = _torch, _dist, _F
    orig_sdpa = F.scaled_dot_product_attention
    if args.device == "cuda" and not torch.cuda.is_available():
        print("[rank ?] FATAL: no CUDA device visible (use --device cpu for a harness smoke test)", flush=True)
        return 1

    ok, init_err = init_distributed(args)
    if not ok and WORLD > 1:
        # Without a process group the ranks cannot agree on anything: stop here.
        print(f"[rank {RANK}] FATAL: {init_err}", flush=True)
        return 1

    dev = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    env = {"dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__}
    if args.device == "cuda":
        try:
            env["cudnn"] = torch.backends.cudnn.version()
            env["gpu"] = torch.cuda.get_device_name(dev)
        except Exception:
            pass
        try:
            nv = torch.cuda.nccl.version()
            env["nccl"] = ".".join(str(x) for x in nv) if isinstance(nv, (tuple, list)) else str(nv)
        except Exception:
            pass

    log(f"torch {torch.__version__}, world {WORLD}, device {env.get('gpu', args.device)}, "
        f"cudnn {env.get('cudnn')}, nccl {env.get('nccl')}; NCCL_NVLS_ENABLE={os.environ['NCCL_NVLS_ENABLE']} "
        f"TORCH_SYMM_MEM_DISABLE_MULTICAST={os.environ['TORCH_SYMM_MEM_DISABLE_MULTICAST']}")
    log(f"config: seq={args.seq} B={args.batch} H={args.heads} Hkv={args.kv_heads} D={args.head_dim} "
        f"causal={args.causal} mode={args.mode} iters={args.iters} warmup={args.warmup} "
        f"rotate={args.rotate or 'default'} balance={args.balance} check={args.check}")
    if init_err:
        log(f"torch.distributed unavailable ({init_err}); CP measurements will report it as an error")

    api = None
    mesh = None
    if args.mode in ("cp", "both") and ok:
        try:
            api = CPApi()
            log(f"CP API: {api.describe()}")
        except Exception as e:
            log(f"CP API lookup failed: {fmt_exc(e)}")
            api = None
        try:
            from torch.distributed.device_mesh import init_device_mesh
            mesh = init_device_mesh(args.device, (WORLD,), mesh_dim_names=("cp",))
        except Exception as e:
            log(f"init_device_mesh failed: {fmt_exc(e)}", all_ranks=True)
            mesh = None
        # Every rank must agree that the mesh exists, or CP would be entered by some ranks only.
        if any_failed(mesh is None):
            mesh = None

    clock = Clock(args.device, args.prelaunch_ms)
    if clock.prelaunch_note:
        log(clock.prelaunch_note)

    records = []
    t_start = time.time()
    try:
        for seq in args.seq:
            if args.mode in ("single", "both"):
                rec = base_record("torch_cudnn_single", 1, seq, args, env)
                if RANK == 0:
                    log(f"S={seq} torch_cudnn_single: start")
                    d = bench_single(args, seq, clock, dev, dtype)
                    if clock.prelaunch_note:
                        d["notes"].append(clock.prelaunch_note)
                    finish_record(rec, [d], args)
                    emit(rec, records)
                gc.collect()
                if args.device == "cuda":
                    torch.cuda.empty_cache()
                any_failed(False)  # other ranks wait here (gloo) while rank 0 measures alone

            if args.mode in ("cp", "both"):
                rec = base_record("torch_cp", WORLD, seq, args, env)
                log(f"S={seq} torch_cp: start (local S={seq // max(WORLD, 1)})")
                try:
                    if not ok:
                        # No process group (one process only gets here): nothing to run CP over.
                        d = {"error": init_err, "notes": [], "fwd": [], "bwd": []}
                    else:
                        d = bench_cp(args, seq, clock, api, mesh, orig_sdpa, dev, dtype)
                except Exception as e:
                    # Last resort; the ranks may now be out of step, but say what happened.
                    d = {"error": f"unexpected: {fmt_exc(e)}", "notes": [], "fwd": [], "bwd": []}
                    if api is not None:
                        api.force_cleanup(orig_sdpa)
                per_rank = gather_objects(d)
                finish_record(rec, per_rank, args)
                emit(rec, records)
                gc.collect()
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            log(f"S={seq} done, {time.time() - t_start:.1f} s elapsed")
    except Exception as e:
        # A control collective (gloo) failed: a peer died (e.g. the NCCL watchdog ended it after a
        # hang). Nothing more can be agreed on; report what was measured so far.
        print(f"[rank {RANK}] FATAL: control collective failed, stopping: {fmt_exc(e)}", flush=True)
        print_table(records)
        return 1

    print_table(records)
    try:
        if dist.is_initialized():
            any_failed(False)
            dist.destroy_process_group()
    except Exception:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
