"""test_torch_binding.py -- cpattn_torch on GPUs against PyTorch's own attention.

    CPATTN_LIBRARY=build/libcpattn.so PYTHONPATH=python \
        torchrun --nproc_per_node=2 python/test_torch_binding.py

1. Values and gradients: every rank holds the same full q, k, v (same seed), takes its
   shard in cpattn's order (local_positions), runs cpattn forward + backward, and compares
   its shard of o, dq, dk, dv with F.scaled_dot_product_attention on the whole sequence:
   ||err|| / ||ref|| <= 1e-2 (bf16), no NaN. BSHD causal and THD causal with documents.
2. Training: a tiny model (two attention layers with projections, fp32 weights, bf16
   attention) trained for 8 Adam steps with cpattn on the shards and, on every rank, with
   SDPA on the whole sequence from the same weights: the loss must fall (by 3% at least,
   or the comparison would be empty) and the two losses agree step by step within 2e-2
   relative.
Exits 0 when everything passes, 1 otherwise; rank 0 prints a summary line per check.
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

import cpattn_torch as ct

# NVLink multicast off in NCCL, PyTorch and NVSHMEM (the shared GPU machines require it;
# launch/cpattn-run sets the same), before any communicator exists.
for _var, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                     ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_var, _value)


def rel(a, b):
    a, b = a.float(), b.float()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def sdpa_full(q, k, v, causal):
    # (B, S, H, D) -> SDPA's (B, H, S, D); GQA by repeating KV heads for the reference
    rep = q.shape[2] // k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.repeat_interleave(rep, 2).transpose(1, 2), v.repeat_interleave(rep, 2).transpose(1, 2)
    return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).transpose(1, 2)


def check_bshd(attn, rank, world):
    torch.manual_seed(0)
    B, S, Hq, Hkv, D = 1, 4096, 8, 2, 128
    dev = torch.device("cuda", torch.cuda.current_device())
    full = [torch.randn(B, S, h, D, device=dev, dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv)]
    gfull = torch.randn(B, S, Hq, D, device=dev, dtype=torch.bfloat16)
    pos, _ = attn.local_positions(S, batch=B)
    pos = pos.to(dev)
    q, k, v = [t[:, pos].detach().clone().requires_grad_(True) for t in full]
    o = attn(q, k, v, seq_len=S)
    o.backward(gfull[:, pos])
    ref = [t.detach().clone().requires_grad_(True) for t in full]
    oref = sdpa_full(*ref, causal=True)
    oref.backward(gfull)
    errs = [rel(o, oref[:, pos]), rel(q.grad, ref[0].grad[:, pos]), rel(k.grad, ref[1].grad[:, pos]),
            rel(v.grad, ref[2].grad[:, pos])]
    return max(errs), errs


def check_thd(rank, world):
    attn = ct.ContextParallelAttention(mask="causal", layout="thd")
    torch.manual_seed(1)
    cu = [0, 1000, 1001, 3000, 5000]  # documents of 1000, 1, 1999, 2000 tokens
    T, Hq, Hkv, D = cu[-1], 8, 8, 64
    dev = torch.device("cuda", torch.cuda.current_device())
    full = [torch.randn(T, h, D, device=dev, dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv)]
    gfull = torch.randn(T, Hq, D, device=dev, dtype=torch.bfloat16)
    pos, seq = attn.local_positions(T, batch=len(cu) - 1, cu_seqlens=cu)
    idx = (torch.tensor(cu, dtype=torch.int64)[seq.long()] + pos).to(dev)  # global packed rows
    q, k, v = [t[idx].detach().clone().requires_grad_(True) for t in full]
    o = attn(q, k, v, cu_seqlens=cu)
    o.backward(gfull[idx])
    ref = [t.detach().clone().requires_grad_(True) for t in full]
    outs = []
    for s in range(len(cu) - 1):  # the reference: each document on its own
        a, b = cu[s], cu[s + 1]
        if b > a:
            outs.append(sdpa_full(*[r[a:b].unsqueeze(0) for r in ref], causal=True)[0])
    oref = torch.cat(outs)
    oref.backward(gfull)
    errs = [rel(o, oref[idx]), rel(q.grad, ref[0].grad[idx]), rel(k.grad, ref[1].grad[idx]),
            rel(v.grad, ref[2].grad[idx])]
    attn.close()
    return max(errs), errs


class Tiny(torch.nn.Module):
    """Two attention layers with projections; `attend` is cpattn or SDPA."""

    def __init__(self, d=256, heads=4):
        super().__init__()
        self.h, self.d = heads, d
        self.qkv = torch.nn.ModuleList([torch.nn.Linear(d, 3 * d, bias=False) for _ in range(2)])
        self.out = torch.nn.ModuleList([torch.nn.Linear(d, d, bias=False) for _ in range(2)])

    def forward(self, x, attend):
        for qkv, out in zip(self.qkv, self.out):
            B, S, _ = x.shape
            q, k, v = qkv(x).view(B, S, 3, self.h, self.d // self.h).unbind(2)
            # fp32 weights and activations (bf16 weights would round SGD/Adam steps
            # away); attention itself runs in bf16, as a trainer under autocast would.
            q, k, v = (t.to(torch.bfloat16).contiguous() for t in (q, k, v))
            x = x + out(attend(q, k, v).float().reshape(B, S, self.d))
        return x


def check_training(attn, rank, world, steps=8):
    torch.manual_seed(2)
    dev = torch.device("cuda", torch.cuda.current_device())
    B, S, d = 1, 2048, 256
    x = torch.randn(B, S, d, device=dev)
    target = torch.randn(B, S, d, device=dev)
    pos, _ = attn.local_positions(S, batch=B)
    pos = pos.to(dev)
    dist_model = Tiny(d).to(dev)
    ref_model = Tiny(d).to(dev)
    ref_model.load_state_dict(dist_model.state_dict())
    # Adam: every weight moves by about lr per step, so the loss visibly falls within a
    # few steps and the two curves are compared while they move.
    opt_d = torch.optim.Adam(dist_model.parameters(), lr=2e-3)
    opt_r = torch.optim.Adam(ref_model.parameters(), lr=2e-3)
    worst = 0.0
    first = last = None
    for step in range(steps):
        # context parallel: the loss of this rank's tokens, summed over ranks
        y = dist_model(x[:, pos], lambda q, k, v: attn(q, k, v, seq_len=S))
        loss = ((y.float() - target[:, pos].float()) ** 2).sum() / (S * d)
        opt_d.zero_grad()
        loss.backward()
        for p in dist_model.parameters():  # weights are replicated: sum their gradients
            dist.all_reduce(p.grad)
        opt_d.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        # the same model on the whole sequence, on one GPU
        yr = ref_model(x, lambda q, k, v: sdpa_full(q, k, v, causal=True))
        lr_ = ((yr.float() - target.float()) ** 2).sum() / (S * d)
        opt_r.zero_grad()
        lr_.backward()
        opt_r.step()
        worst = max(worst, abs(total.item() - lr_.item()) / abs(lr_.item()))
        first = lr_.item() if first is None else first
        last = lr_.item()
        if rank == 0:
            print("  step %d: loss cpattn %.5f, single GPU %.5f" % (step, total.item(), lr_.item()), flush=True)
    # A loss that does not move would make the comparison empty: training must train.
    if not last < 0.97 * first:
        if rank == 0:
            print("  the single-GPU loss went from %.5f to %.5f: not training" % (first, last), flush=True)
        return float("inf")
    return worst


def main():
    # The device first: the process group and cpattn's id broadcast use the current one.
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    attn = ct.ContextParallelAttention(mask="causal", layout="bshd")
    results = []
    e, parts = check_bshd(attn, rank, world)
    results.append(("bshd causal GQA values+grads", e, 1e-2, parts))
    e, parts = check_thd(rank, world)
    results.append(("thd causal documents values+grads", e, 1e-2, parts))
    e = check_training(attn, rank, world)
    results.append(("training loss vs single GPU", e, 2e-2, None))
    attn.close()
    ok = True
    for name, err, tol, parts in results:
        t = torch.tensor([err], device="cuda")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        passed = t.item() <= tol
        ok &= passed
        if rank == 0:
            print("%-36s worst %.3g (tol %g)%s: %s" % (name, t.item(), tol, "" if parts is None else " o/dq/dk/dv %s" %
                                                    ["%.2g" % p for p in parts], "PASS" if passed else "FAIL"),
                  flush=True)
    dist.destroy_process_group()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
