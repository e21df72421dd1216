"""The TRL-equivalent on-policy GKD step beside `gkd bench distill` in the same GPU run (the loop of
../shared/anchors/gkd_anchor.py, part B): Hugging Face Qwen2.5-0.5B-shaped student and 1.5B-shaped
teacher with random-init weights in bf16; per step the student generates 128 tokens (T = 1, no
top-k) after 8 random 128-token prompts, the teacher's forward without gradients, the student's
forward, TRL's generalized JSD (β = 0.5) over the full logits, the backward and fused AdamW. Median
over 3 steps after one warm-up; tokens/s counts prompt and completion of every sample. One JSON
line on stdout, and the same in the file given as the first argument.

    python3 scripts/peers-distill.py OUT.json [batch=8] [prompt=128] [new=128]
"""
import json
import sys
import time

import torch
import torch.nn.functional as F


def trl_jsd(student_logits, teacher_logits, beta=0.5):
    s = F.log_softmax(student_logits, dim=-1)
    t = F.log_softmax(teacher_logits, dim=-1)
    b = torch.tensor(beta, dtype=s.dtype, device=s.device)
    m = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), dim=0)
    kl_t = F.kl_div(m, t, reduction="none", log_target=True)
    kl_s = F.kl_div(m, s, reduction="none", log_target=True)
    jsd = b * kl_t + (1 - b) * kl_s
    return jsd.sum() / jsd.size(0)


def main():
    out = sys.argv[1]
    B = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    P = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    G = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    from transformers import Qwen2Config, Qwen2ForCausalLM
    V = 151936
    sc = Qwen2Config(vocab_size=V, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True,
                     max_position_embeddings=4096)
    tc = Qwen2Config(vocab_size=V, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2, intermediate_size=8960, tie_word_embeddings=True,
                     max_position_embeddings=4096)
    with torch.device("cuda"):
        student = Qwen2ForCausalLM(sc).to(torch.bfloat16)
        teacher = Qwen2ForCausalLM(tc).to(torch.bfloat16).eval()
    for m in (student, teacher):
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, fused=True)
    prompts = torch.randint(1, V, (B, P), device="cuda")
    sync = torch.cuda.synchronize
    names = ("generate", "teacher_fwd", "student_fwd_loss_bwd", "optim")
    times = {k: [] for k in names}
    torch.cuda.reset_peak_memory_stats()
    for step in range(4):
        sync(); t0 = time.perf_counter()
        student.eval()
        with torch.no_grad():
            seq = student.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=G,
                                   min_new_tokens=G, do_sample=True, temperature=1.0, top_k=0)
        sync(); t1 = time.perf_counter()
        student.train()
        with torch.no_grad():
            tl = teacher(input_ids=seq).logits[:, P - 1:-1]
        sync(); t2 = time.perf_counter()
        sl = student(input_ids=seq).logits[:, P - 1:-1]
        loss = trl_jsd(sl.reshape(-1, V), tl.reshape(-1, V))
        loss.backward()
        sync(); t3 = time.perf_counter()
        opt.step(); opt.zero_grad(set_to_none=True)
        sync(); t4 = time.perf_counter()
        if step > 0:
            for k, v in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[k].append(v)
        del tl, sl, loss
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    total = sum(med.values())
    row = dict(peer="trl_equivalent_gkd_step", device=torch.cuda.get_device_name(), torch=torch.__version__,
               batch=B, prompt=P, new=G, secs=med, step_s=round(total, 3),
               tokens_per_s=round(B * (P + G) / total), peak_GiB=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    print(json.dumps(row), flush=True)
    with open(out, "w") as f:
        json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
