#!/usr/bin/env python3
"""check_binding_abi.py -- what of cpattn_torch can be checked without a GPU or PyTorch.

    CPATTN_LIBRARY=build/libcpattn.so python3 python/check_binding_abi.py
    PYTHONPATH=<prefix>/share/cpattn/python python3 check_binding_abi.py   (installed)

cpattn_torch mirrors two C structs in ctypes; a field out of place there is not an error,
it is a silently wrong config. This script loads cpattn_torch (with a stand-in for torch
when PyTorch is absent, as in CI), finds the library the way the binding does, and checks
against the real library, on the CPU only:
  1. _Config: the library accepts its size, and reads each field where the binding writes it
     (a value put in one field must be reported back under that field's name);
  2. _Tensor: cpattnTensorInit fills the binding's struct as the binding reads it;
  3. local_positions: cpattn's zigzag and contiguous orders, rebuilt here from the header's
     words, match what the library returns (BSHD and THD, several rank counts).
Exits 0 when everything matches, 1 otherwise (tests/install.cmake runs it on an install).
"""
import ctypes
import importlib.util
import sys
import types


def stub_torch():
    """Just enough of torch for cpattn_torch to import and build configs."""
    torch = types.ModuleType("torch")
    for name in ("float32", "bfloat16", "float16", "int64", "int32", "uint8"):
        setattr(torch, name, name)
    torch.tensor = lambda data, dtype=None: list(data)
    torch.nn = types.SimpleNamespace(Module=object)
    torch.autograd = types.SimpleNamespace(Function=object)
    torch.cuda = types.SimpleNamespace()
    dist = types.ModuleType("torch.distributed")
    torch.distributed = dist
    sys.modules.update({"torch": torch, "torch.distributed": dist})


if importlib.util.find_spec("torch") is None:  # the real one is used where installed
    stub_torch()
import cpattn_torch as ct  # noqa: E402

failures = []


def expect(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def chunks(length, n):
    return [(i * length // n, (i + 1) * length // n) for i in range(n)]


def reference_positions(lengths, causal, rank, world):
    """The header's rule: each sequence cut into 2P chunks (zigzag: rank r holds r and
    2P-1-r) or P chunks (contiguous: rank r holds r); local tokens sequence by sequence."""
    pos, seq = [], []
    for s, length in enumerate(lengths):
        if causal:
            c = chunks(length, 2 * world)
            mine = [c[rank], c[2 * world - 1 - rank]]
        else:
            mine = [chunks(length, world)[rank]]
        for a, b in mine:
            pos += range(a, b)
            seq += [s] * (b - a)
    return pos, seq


def main():
    ct._lib = lib = ct._load()
    lib.cpattnConfigValidate.argtypes = [ctypes.POINTER(ct._Config)]
    lib.cpattnTensorInit.argtypes = [ctypes.POINTER(ct._Tensor), ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                     ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    print("library:", ct._find_library())

    # A stand-in module object: __init__ would need a process group and a GPU.
    attn = ct.ContextParallelAttention.__new__(ct.ContextParallelAttention)
    attn.opts = dict(mask=1, layout=0, schedule=1, window=(-1, -1), a2a=0, scale=0.0, det=0)

    def config(**fields):
        c = attn._config(1, 1024, 8, 2, 64, 64, ct.torch.bfloat16, None)
        for k, v in fields.items():
            setattr(c, k, v)
        return c

    # 1. _Config
    res = lib.cpattnConfigValidate(ctypes.byref(config()))
    expect(res == 0, "a valid config from the binding is refused: %s" % lib.cpattnGetLastError().decode())
    # Each probe puts a bad value in one field; the library must name that field with that
    # value ("config->windowLeft = -2 ..."), which it can only do if it read it there.
    probes = [("batch", 0, {}), ("numHeadsQ", 0, {}), ("numHeadsKV", 0, {}), ("headDimQK", 300, {}),
              ("headDimV", 300, {}), ("seqLen", 0, {}), ("mask", 7, {}), ("windowLeft", -2, {"mask": 2}),
              ("windowRight", -3, {"mask": 2}), ("softmaxScale", -1, {}), ("schedule", 9, {}),
              ("a2aGroupSize", 2, {}), ("balance", 9, {}), ("executor", 9, {}), ("deterministic", 2, {}),
              ("timeoutMs", -5, {}), ("layout", 9, {}), ("dtype", 9, {}), ("version", 20000, {})]
    for field, bad, others in probes:
        res = lib.cpattnConfigValidate(ctypes.byref(config(**others, **{field: bad})))
        msg = lib.cpattnGetLastError().decode()
        expect(res != 0 and ("config->%s = %g" % (field, bad)) in msg,
               "_Config.%s = %r: library said %d, %r" % (field, bad, res, msg))
    bad = config()
    bad.size -= 8
    expect(lib.cpattnConfigValidate(ctypes.byref(bad)) != 0, "the library accepted a wrong config size")

    # 2. _Tensor
    t = ct._Tensor()
    res = lib.cpattnTensorInit(ctypes.byref(t), 0x1000, 1, 0, 2, 5, 3, 8)  # BSHD (2, 5, 3, 8)
    expect(res == 0 and t.data == 0x1000 and t.dtype == 1 and t.ndim == 4 and list(t.dims) == [2, 5, 3, 8]
           and list(t.strides) == [120, 24, 8, 1], "_Tensor does not read what cpattnTensorInit wrote")

    # 3. local_positions against the header's rule
    cases = [("bshd", "causal", [1000]), ("bshd", "none", [97]), ("thd", "causal", [1000, 1, 1999, 0, 7]),
             ("thd", "none", [5, 64, 3])]
    for layout, mask, lengths in cases:
        attn.opts.update(layout=ct._LAYOUTS[layout], mask=ct._MASKS[mask])
        cu = [0]
        for length in lengths:
            cu.append(cu[-1] + length)
        for world in (1, 2, 3, 4):
            attn.world = world
            for rank in range(world):
                attn.rank = rank
                if layout == "thd":
                    pos, seq = attn.local_positions(cu[-1], batch=len(lengths), cu_seqlens=cu)
                else:
                    pos, seq = attn.local_positions(lengths[0])
                want_pos, want_seq = reference_positions(lengths, mask == "causal", rank, world)
                expect(list(pos) == want_pos and (layout != "thd" or list(seq) == want_seq),
                       "%s %s lengths %s: rank %d of %d holds other tokens" % (layout, mask, lengths, rank, world))
    print("check_binding_abi: %s" % ("%d failure(s)" % len(failures) if failures else "all checks passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
