"""The peers of `gkd bench divergence`, timed on the same GPU in the same session.

Same definitions as ../shared/anchors/gkd_anchor.py part A (TRL's generalized JSD reimplemented in
eager PyTorch; Liger-Kernel's JSD on log-softmax inputs; Liger's fused linear JSD), without the
torch.compile case, so it runs in about a minute. JSD(beta=0.5), forward + backward w.r.t. the
student, bf16 inputs, median of CUDA-event timings.
Usage: python3 scripts/peers-divergence.py OUT.json   (Liger optional: importable or skipped)
"""
import json, math, sys
import torch
import torch.nn.functional as F


def trl_jsd(s, t, beta=0.5):
    s = F.log_softmax(s, dim=-1)
    t = F.log_softmax(t, dim=-1)
    b = torch.tensor(beta, dtype=s.dtype, device=s.device)
    m = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), dim=0)
    jsd = b * F.kl_div(m, t, reduction="none", log_target=True) + (1 - b) * F.kl_div(m, s, reduction="none", log_target=True)
    return jsd.sum() / jsd.size(0)


def timeit(fn, reps=10, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def peak(fn):
    torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(); torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def main(out):
    rows = []
    try:
        from liger_kernel.transformers import LigerJSD, LigerFusedLinearJSD
    except Exception as e:
        LigerJSD = LigerFusedLinearJSD = None
        rows.append(dict(case="liger_import", error=repr(e)[:300]))
    x = torch.empty(2**30 // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    ms = timeit(lambda: y.copy_(x))
    rows.append(dict(case="torch_copy_2GiB", ms=round(ms, 4), tb_s=round(2 * x.numel() * 2 / ms / 1e9, 3)))
    del x, y
    for N, V in [(8192, 32000), (4096, 151936)]:
        g = torch.Generator(device="cuda").manual_seed(V)
        s = (torch.randn(N, V, device="cuda", generator=g) * 2).to(torch.bfloat16).requires_grad_(True)
        t = (torch.randn(N, V, device="cuda", generator=g) * 2).to(torch.bfloat16)
        cases = {"trl_eager_bf16": lambda: trl_jsd(s, t)}
        if LigerJSD is not None:
            lj = LigerJSD(beta=0.5)
            cases["liger_jsd(+log_softmax)"] = lambda: lj(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1))
        for name, f in cases.items():
            def go(f=f):
                s.grad = None
                f().backward()
            try:
                rows.append(dict(N=N, V=V, case=name, ms=round(timeit(go), 3), peak_GiB=round(peak(go), 3)))
            except Exception as e:
                rows.append(dict(N=N, V=V, case=name, error=repr(e)[:300]))
            print(rows[-1], flush=True)
        del s, t
        torch.cuda.empty_cache()
        if LigerFusedLinearJSD is not None:
            Hs, Ht = 896, 1536
            xs = torch.randn(N, Hs, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            ws = (torch.randn(V, Hs, device="cuda") / math.sqrt(Hs)).to(torch.bfloat16).requires_grad_(True)
            xt = torch.randn(N, Ht, device="cuda", dtype=torch.bfloat16)
            wt = (torch.randn(V, Ht, device="cuda") / math.sqrt(Ht)).to(torch.bfloat16)
            fl = LigerFusedLinearJSD(jsd_beta=0.5, temperature=1.0)
            def go():
                xs.grad = None; ws.grad = None
                fl(xs, ws, xt, wt, None).backward()
            try:
                rows.append(dict(N=N, V=V, case="liger_fused_linear_jsd", ms=round(timeit(go, reps=5, warm=2), 3), peak_GiB=round(peak(go), 3)))
            except Exception as e:
                rows.append(dict(N=N, V=V, case="liger_fused_linear_jsd", error=repr(e)[:300]))
            print(rows[-1], flush=True)
            del xs, ws, xt, wt
            torch.cuda.empty_cache()
    res = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, rows=rows)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
