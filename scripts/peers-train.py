"""The Hugging Face eager SFT step beside `gkd bench train` in the same GPU run: a
Qwen2.5-0.5B-shaped (or GPT-2-small-shaped) transformers model with random-init weights in bf16,
batch 8 × 1024 random tokens, loss over every position, backward, fused torch AdamW; median of
CUDA-event timings; tokens/s and MFU with the same FLOP count as gkd (6·N + 6·L·C·T per token,
llm.c's), over a 989 TFLOP/s dense bf16 peak. One JSON line per shape on stdout, and the list in
the file given as the first argument.

    python3 scripts/peers-train.py OUT.json [qwen2.5-0.5b,gpt2-124m] [batch] [seq]
"""
import json
import sys

import torch


def model_for(shape):
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM
    if shape == "qwen2.5-0.5b":
        c = Qwen2Config(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                        num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True,
                        max_position_embeddings=4096)
        return Qwen2ForCausalLM(c), c.num_hidden_layers, c.hidden_size
    if shape == "gpt2-124m":
        c = GPT2Config(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)
        return GPT2LMHeadModel(c), c.n_layer, c.n_embd
    raise SystemExit(f"unknown shape {shape}")


def timeit(f, reps=5, warm=2):
    for _ in range(warm):
        f()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "peers-train.json"
    shapes = (sys.argv[2] if len(sys.argv) > 2 else "qwen2.5-0.5b").split(",")
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    seq = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
    rows = []
    for shape in shapes:
        with torch.device("cuda"):
            model, layers, hidden = model_for(shape)
        model = model.to(torch.bfloat16)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        ids = torch.randint(0, model.config.vocab_size, (batch, seq), device="cuda")

        def step():
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        torch.cuda.reset_peak_memory_stats()
        ms = timeit(step)
        n = sum(p.numel() for p in model.parameters())
        tok_s = batch * seq / (ms / 1e3)
        flops = 6 * n + 6 * layers * hidden * seq
        row = dict(peer="transformers eager SFT step", shape=shape, batch=batch, seq=seq, params=n,
                   ms=round(ms, 2), tokens_per_s=round(tok_s), tflops=round(tok_s * flops / 1e12, 1),
                   mfu=round(tok_s * flops / 989e12, 3),
                   peak_GiB=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   torch=torch.__version__, gpu=torch.cuda.get_device_name())
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model, opt
        torch.cuda.empty_cache()
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
