"""Hugging Face `generate` beside `gkd bench generate` in the same GPU run: the Qwen2.5-0.5B-shaped
model with random-init weights in bf16, 128-token random prompts, 128 new tokens sampled at T = 1
(no top-k), at batch 8 and 64, with the static cache (transformers compiles the forward itself:
its documented fast path; ../shared/anchors/gkd_anchor3.py) and with the default dynamic cache.
Reports the first call's time (compilation) and new tokens/s of a later call. One JSON line per
case on stdout, and the list in the file given as the first argument.

    python3 scripts/peers-generate.py OUT.json [batches=8,64] [prompt=128] [new=128]
"""
import json
import sys
import time

import torch


def main():
    out = sys.argv[1]
    batches = [int(b) for b in (sys.argv[2] if len(sys.argv) > 2 else "8,64").split(",")]
    prompt = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    new = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    from transformers import Qwen2Config, Qwen2ForCausalLM
    V = 151936
    c = Qwen2Config(vocab_size=V, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True,
                    max_position_embeddings=4096)
    with torch.device("cuda"):
        m = Qwen2ForCausalLM(c).to(torch.bfloat16).eval()
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    rows = []
    for cache in ("static", "dynamic"):
        m.generation_config.cache_implementation = "static" if cache == "static" else None
        for B in batches:
            p = torch.randint(1, V, (B, prompt), device="cuda")

            def gen():
                with torch.no_grad():
                    m.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=new, min_new_tokens=new,
                               do_sample=True, temperature=1.0, top_k=0)
                torch.cuda.synchronize()

            t0 = time.perf_counter(); gen(); first = time.perf_counter() - t0
            gen()
            t0 = time.perf_counter(); gen(); s = time.perf_counter() - t0
            row = dict(peer=f"hf_generate_{cache}_cache", batch=B, prompt=prompt, new=new,
                       first_call_s=round(first, 2), s=round(s, 3), new_tokens_per_s=round(B * new / s))
            print(json.dumps(row), flush=True)
            rows.append(row)
    with open(out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
