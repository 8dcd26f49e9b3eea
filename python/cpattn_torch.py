"""cpattn_torch -- context-parallel attention for PyTorch through cpattn's C API.

Nothing to compile beyond cpattn itself: libcpattn.so is loaded with ctypes, from
$CPATTN_LIBRARY if set, else from the cpattn install this file belongs to (`cmake --install`
puts it in <prefix>/share/cpattn/python, the library in <prefix>/lib), else through the
dynamic loader's path (LD_LIBRARY_PATH, ldconfig). The library must be a CUDA build. The
communicator is made from a
torch.distributed process group (cpattn creates its own non-blocking NCCL communicator,
bootstrapped by broadcasting a unique id over the group), and every call runs on PyTorch's
current CUDA stream.

    import torch.distributed as dist, cpattn_torch as ct
    dist.init_process_group("nccl")
    attn = ct.ContextParallelAttention(mask="causal", layout="bshd")
    o = attn(q, k, v)            # q: (B, S_local, Hq, D) bf16 CUDA, this rank's shard
    o.sum().backward()           # dq, dk, dv through cpattnBackward

Shards follow cpattn's order (zigzag for causal): `attn.local_positions(seq_len)` gives the
global position of each local token, to cut shards out of full tensors or to apply RoPE.

Status: written against cpattn 0.1's C API; not yet run on GPUs (see the README).
"""
import collections
import ctypes
import os

import torch
import torch.distributed as dist

_LAYOUTS = {"bshd": 0, "sbhd": 1, "thd": 2}
_MASKS = {"none": 0, "causal": 1, "window": 2}
_SCHEDULES = {"auto": 0, "ring": 1, "a2a": 2, "allgather": 3, "hybrid": 4}
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_VERSION_CODE = 100  # CPATTN_VERSION_CODE of 0.1.0; the library checks major.minor


class _Config(ctypes.Structure):
    # Field for field cpattnConfig_t (include/cpattn.h); `size` tells the library which.
    _fields_ = [("size", ctypes.c_size_t), ("version", ctypes.c_int), ("layout", ctypes.c_int),
                ("dtype", ctypes.c_int), ("batch", ctypes.c_int), ("numHeadsQ", ctypes.c_int),
                ("numHeadsKV", ctypes.c_int), ("headDimQK", ctypes.c_int), ("headDimV", ctypes.c_int),
                ("seqLen", ctypes.c_int64), ("cuSeqlens", ctypes.POINTER(ctypes.c_int32)),
                ("mask", ctypes.c_int), ("windowLeft", ctypes.c_int), ("windowRight", ctypes.c_int),
                ("softmaxScale", ctypes.c_float), ("schedule", ctypes.c_int), ("a2aGroupSize", ctypes.c_int),
                ("balance", ctypes.c_int), ("executor", ctypes.c_int), ("deterministic", ctypes.c_int),
                ("timeoutMs", ctypes.c_int)]


class _Tensor(ctypes.Structure):
    # cpattnTensor_t: a non-owning view (pointer, dtype, dims and strides in elements)
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int), ("ndim", ctypes.c_int),
                ("dims", ctypes.c_int64 * 4), ("strides", ctypes.c_int64 * 4)]


def _find_library():
    if os.environ.get("CPATTN_LIBRARY"):
        return os.environ["CPATTN_LIBRARY"]
    here = os.path.dirname(os.path.abspath(__file__))
    prefix = os.path.normpath(os.path.join(here, "..", "..", ".."))  # <prefix>/share/cpattn/python
    for libdir in ("lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu"):
        path = os.path.join(prefix, libdir, "libcpattn.so.0")
        if os.path.exists(path):
            return path
    return "libcpattn.so.0"  # the soname: whatever the loader finds


def _load():
    lib = ctypes.CDLL(_find_library())
    vp, i64p, cfgp, tp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(_Config), ctypes.POINTER(_Tensor)
    sig = {
        "cpattnGetErrorString": ([ctypes.c_int], ctypes.c_char_p),
        "cpattnGetLastError": ([], ctypes.c_char_p),
        "cpattnGetNcclUniqueId": ([vp, ctypes.c_size_t], ctypes.c_int),
        "cpattnCommInitNcclRank": ([ctypes.POINTER(vp), ctypes.c_int, ctypes.c_int, vp, ctypes.c_int], ctypes.c_int),
        "cpattnCommDestroy": ([vp], ctypes.c_int),
        "cpattnPlanCreate": ([ctypes.POINTER(vp), vp, cfgp], ctypes.c_int),
        "cpattnPlanDestroy": ([vp], ctypes.c_int),
        "cpattnPlanGetWorkspaceSize": ([vp, ctypes.POINTER(ctypes.c_size_t)], ctypes.c_int),
        "cpattnGetLocalTokenCount": ([cfgp, ctypes.c_int, ctypes.c_int, i64p], ctypes.c_int),
        "cpattnGetLocalPositions": ([cfgp, ctypes.c_int, ctypes.c_int, i64p, ctypes.POINTER(ctypes.c_int32)],
                                    ctypes.c_int),
        "cpattnForward": ([vp, tp, tp, tp, tp, vp, vp, ctypes.c_size_t, vp], ctypes.c_int),
        "cpattnBackward": ([vp, tp, tp, tp, tp, tp, vp, tp, tp, tp, vp, ctypes.c_size_t, vp], ctypes.c_int),
    }
    for name, (args, res) in sig.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


_lib = None


def _check(res, what):
    if res != 0:
        raise RuntimeError("%s: %s: %s" % (what, _lib.cpattnGetErrorString(res).decode(),
                                           _lib.cpattnGetLastError().decode()))


def _descriptor(t):
    """A cpattnTensor_t for a torch tensor; its dims are in the layout's own order."""
    d = _Tensor()
    d.data = t.data_ptr()
    d.dtype = _DTYPES[t.dtype]
    d.ndim = t.dim()
    for i in range(t.dim()):
        d.dims[i] = t.shape[i]
        d.strides[i] = t.stride(i)
    return d


class _Comm:
    """Owns a cpattnComm_t. Plans hold a reference to it, so that however Python drops
    objects (the module closed while an autograd graph still holds a plan), every plan is
    destroyed before its communicator, as cpattnCommDestroy requires."""

    def __init__(self, handle):
        self.handle = handle

    def __del__(self):
        if _lib is not None and self.handle:
            _lib.cpattnCommDestroy(self.handle)
            self.handle = None


class _Plan:
    """A cpattn plan with its workspace, a uint8 tensor (PyTorch's allocator aligns it).
    The workspace is stateless between calls but must not be used by two streams at once:
    run one module's calls on one stream at a time (what autograd does)."""

    def __init__(self, comm, cfg, device):
        self.comm = comm
        self.handle = ctypes.c_void_p()
        _check(_lib.cpattnPlanCreate(ctypes.byref(self.handle), comm.handle, ctypes.byref(cfg)),
               "cpattnPlanCreate")
        n = ctypes.c_size_t()
        _check(_lib.cpattnPlanGetWorkspaceSize(self.handle, ctypes.byref(n)), "cpattnPlanGetWorkspaceSize")
        self.workspace = torch.empty(max(n.value, 256), dtype=torch.uint8, device=device)

    def _stream(self, t):
        return ctypes.c_void_p(torch.cuda.current_stream(t.device).cuda_stream)

    def run_forward(self, q, k, v, o, lse):
        d = [_descriptor(t) for t in (q, k, v, o)]
        _check(_lib.cpattnForward(self.handle, *[ctypes.byref(x) for x in d], lse.data_ptr(),
                                  self.workspace.data_ptr(), self.workspace.numel(), self._stream(q)),
               "cpattnForward")

    def run_backward(self, q, k, v, o, do, lse, dq, dk, dv):
        d = [_descriptor(t) for t in (q, k, v, o, do)]
        g = [_descriptor(t) for t in (dq, dk, dv)]
        _check(_lib.cpattnBackward(self.handle, *[ctypes.byref(x) for x in d], lse.data_ptr(),
                                   *[ctypes.byref(x) for x in g], self.workspace.data_ptr(),
                                   self.workspace.numel(), self._stream(q)), "cpattnBackward")

    def __del__(self):
        if _lib is not None and self.handle:
            # A plan must not be destroyed under work enqueued with it; the last reference
            # can go (cache eviction, autograd freeing its graph) before the GPU is done.
            try:
                torch.cuda.synchronize(self.workspace.device)
            except Exception:  # interpreter shutdown: CUDA may already be gone
                pass
            _lib.cpattnPlanDestroy(self.handle)
            self.handle = None


class _AttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan, lse_shape):
        o = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
        lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
        plan.run_forward(q, k, v, o, lse)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.plan = plan
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        ctx.plan.run_backward(q, k, v, o, do.contiguous(), lse, dq, dk, dv)
        return dq, dk, dv, None, None


class ContextParallelAttention(torch.nn.Module):
    """Attention over a sequence sharded across the ranks of a torch.distributed group.

    mask: "none" | "causal" | "window" (with window=(left, right)); layout: "bshd" | "sbhd"
    | "thd" (pass cu_seqlens of the whole packed batch); schedule: "ring" | "a2a" |
    "allgather" | "hybrid" (with a2a_group). Inputs are this rank's shards, bf16 or fp16 CUDA
    tensors with a unit innermost stride, on the device that was current at construction.

    Plans (validation, schedule, cuDNN graphs, workspace) are cached per shape and dtype,
    at most max_plans of them, least recently used first out. THD with other document
    lengths is another shape: packing that changes every batch builds a plan per batch.
    """

    def __init__(self, group=None, mask="causal", layout="bshd", schedule="ring", window=(-1, -1),
                 a2a_group=0, softmax_scale=0.0, deterministic=False, max_plans=8):
        super().__init__()
        global _lib
        if _lib is None:
            _lib = _load()
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.opts = dict(mask=_MASKS[mask], layout=_LAYOUTS[layout], schedule=_SCHEDULES[schedule],
                         window=tuple(window), a2a=a2a_group, scale=float(softmax_scale), det=int(deterministic))
        # One process makes the NCCL id; the group carries it to the others (with the NCCL
        # backend, broadcast_object_list uses the current device: set it first). A failure
        # travels too, so that no rank waits for an id that never comes.
        box = [None]
        if self.rank == 0:
            idbuf = ctypes.create_string_buffer(128)
            res = _lib.cpattnGetNcclUniqueId(idbuf, 128)
            box[0] = bytes(idbuf.raw) if res == 0 else "cpattnGetNcclUniqueId on rank 0: %s: %s" % (
                _lib.cpattnGetErrorString(res).decode(), _lib.cpattnGetLastError().decode())
        src = dist.get_global_rank(group, 0) if group is not None else 0
        dist.broadcast_object_list(box, src=src, group=group)
        if isinstance(box[0], str):
            raise RuntimeError(box[0])
        handle = ctypes.c_void_p()
        _check(_lib.cpattnCommInitNcclRank(ctypes.byref(handle), self.world, self.rank,
                                           ctypes.create_string_buffer(box[0], 128), self.device.index),
               "cpattnCommInitNcclRank")
        self.comm = _Comm(handle)
        self.plans = collections.OrderedDict()
        self.max_plans = max(1, int(max_plans))

    def _config(self, batch, seq_len, hq, hkv, dqk, dv, dtype, cu_seqlens):
        o = self.opts
        c = _Config()
        c.size, c.version = ctypes.sizeof(_Config), _VERSION_CODE
        c.layout, c.dtype, c.batch = o["layout"], _DTYPES[dtype], batch
        c.numHeadsQ, c.numHeadsKV, c.headDimQK, c.headDimV = hq, hkv, dqk, dv
        c.seqLen = seq_len
        if cu_seqlens is not None:  # the library copies it at plan creation
            c._cu = (ctypes.c_int32 * len(cu_seqlens))(*[int(x) for x in cu_seqlens])
            c.cuSeqlens = c._cu
        c.mask = o["mask"]
        c.windowLeft, c.windowRight = o["window"] if o["mask"] == 2 else (-1, -1)
        c.softmaxScale, c.schedule = o["scale"], o["schedule"]
        c.a2aGroupSize = o["a2a"] if o["schedule"] == 4 else 0
        c.balance, c.executor, c.deterministic, c.timeoutMs = 0, 2, o["det"], 0
        return c

    def local_positions(self, seq_len, batch=1, cu_seqlens=None):
        """Global position of each local token within its sequence, and its sequence index
        (THD; 0 otherwise): to cut this rank's shard out of full tensors, or for RoPE."""
        c = self._config(batch, seq_len, 1, 1, 8, 8, torch.bfloat16, cu_seqlens)
        n = ctypes.c_int64()
        _check(_lib.cpattnGetLocalTokenCount(ctypes.byref(c), self.rank, self.world, ctypes.byref(n)),
               "cpattnGetLocalTokenCount")
        pos = (ctypes.c_int64 * max(n.value, 1))()
        seq = (ctypes.c_int32 * max(n.value, 1))()
        _check(_lib.cpattnGetLocalPositions(ctypes.byref(c), self.rank, self.world, pos, seq),
               "cpattnGetLocalPositions")
        return torch.tensor(pos[:n.value], dtype=torch.int64), torch.tensor(seq[:n.value], dtype=torch.int32)

    def forward(self, q, k, v, seq_len=None, cu_seqlens=None):
        """q, k, v: this rank's shards. BSHD (B, S_local, H, D) and SBHD (S_local, B, H, D)
        take seq_len, the global tokens of each sequence (default S_local * world, right
        when the length divides evenly); THD (T_local, H, D) takes cu_seqlens of the whole
        packed batch (a list or CPU tensor)."""
        if self.comm is None:
            raise RuntimeError("ContextParallelAttention used after close()")
        if q.device != self.device or k.device != self.device or v.device != self.device:
            raise ValueError("q, k and v must be on %s, the communicator's device" % self.device)
        layout = self.opts["layout"]
        if layout == 2:
            if cu_seqlens is None:
                raise ValueError("layout thd needs cu_seqlens")
            cu = [int(x) for x in cu_seqlens]
            batch, seq_len, hq, hkv = len(cu) - 1, cu[-1], q.shape[1], k.shape[1]
            lse_shape = (q.shape[0], hq)  # cpattn's THD LSE: [tokens][heads]
        else:
            s_dim, b_dim = (1, 0) if layout == 0 else (0, 1)
            batch, hq, hkv = q.shape[b_dim], q.shape[2], k.shape[2]
            seq_len = seq_len or q.shape[s_dim] * self.world
            cu = None
            lse_shape = (batch, hq, q.shape[s_dim])  # [batch][heads][local tokens]
        key = (batch, seq_len, hq, hkv, q.shape[-1], v.shape[-1], q.dtype, tuple(cu) if cu else None)
        plan = self.plans.get(key)
        if plan is None:
            cfg = self._config(batch, seq_len, hq, hkv, q.shape[-1], v.shape[-1], q.dtype, cu)
            plan = self.plans[key] = _Plan(self.comm, cfg, q.device)  # collective: same order on every rank
            while len(self.plans) > self.max_plans:
                self.plans.popitem(last=False)
        else:
            self.plans.move_to_end(key)
        return _AttentionFn.apply(q, k, v, plan, lse_shape)

    def close(self):
        """Destroys the plans, then the communicator (call before destroying the group).
        Waits for the device first: a plan must not be destroyed under running work. Plans
        still held by a live autograd graph go (with the communicator) when it does."""
        torch.cuda.synchronize(self.device)
        self.plans.clear()
        self.comm = None
