"""The peer of benches/attention.rs, timed on the same GPU in the same session: PyTorch's
scaled_dot_product_attention forced to the FlashAttention-2 backend, causal, at the same shape
(8 sequences of 1024 tokens, 14 query / 2 key-value heads, head dim 64, bf16). Forward and
forward + backward, median of CUDA-event timings; TFLOP/s with the same FLOP count as the bench
(causal forward 4·B·Hq·T²·D/2, backward 2.5× the forward) and the ratio to torch's bf16 GEMM at
4096³. The flash backend has no grouped-query heads, so K and V are expanded to 14 heads first
(outside the timed region for the forward, inside it for the backward's gradient sum).
Prints one JSON line.  Usage: python3 scripts/peers-attention.py
"""
import json
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, T, HQ, HKV, D = 8, 1024, 14, 2, 64


def timeit(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def main():
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, HQ, T, D, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, HKV, T, D, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, HKV, T, D, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(B, HQ, T, D, device="cuda", generator=g, dtype=torch.bfloat16)
    rep = HQ // HKV

    def fwd():
        with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ke, ve = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)

    def fwd_bwd():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ke, ve = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            out = F.scaled_dot_product_attention(q, ke, ve, is_causal=True)
        torch.autograd.backward(out, dout)
        q.grad = k.grad = v.grad = None

    n = 4096
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    bm = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    gemm_ms = timeit(lambda: a @ bm, reps=10)
    gemm = 2 * n**3 / (gemm_ms * 1e-3)
    fwd_flops = 4 * B * HQ * T * T * D / 2
    fwd_ms = timeit(fwd)
    both_ms = timeit(fwd_bwd)
    rate = lambda flops, ms: flops / (ms * 1e-3)
    print(json.dumps(dict(
        peer="torch_sdpa_flash",
        torch=torch.__version__,
        device=torch.cuda.get_device_name(),
        shape=dict(batch=B, t=T, q_heads=HQ, kv_heads=HKV, head_dim=D, dtype="bf16"),
        fwd_ms=round(fwd_ms, 4),
        fwd_bwd_ms=round(both_ms, 4),
        fwd_tflops=round(rate(fwd_flops, fwd_ms) / 1e12, 2),
        fwd_bwd_tflops=round(rate(3.5 * fwd_flops, both_ms) / 1e12, 2),
        gemm_bf16_tflops=round(gemm / 1e12, 2),
        fwd_of_gemm=round(rate(fwd_flops, fwd_ms) / gemm, 3),
        fwd_bwd_of_gemm=round(rate(3.5 * fwd_flops, both_ms) / gemm, 3),
    )))


if __name__ == "__main__":
    main()
