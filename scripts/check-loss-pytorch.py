#!/usr/bin/env python3
"""Loss parity of `gkd distill` with an independent PyTorch computation.

With λ = 0 (the dataset's completions), lr = 0 and one optimizer step over all N examples
(batch size N), gkd's logged loss must equal the token-level divergence computed here from the same
two models, loaded by `transformers`, with TRL's GKD loss (generalized_jsd_loss; forward/reverse KL
as F.kl_div): Σ over completion tokens ÷ their number. Relative tolerance 1e-4.

Usage: scripts/check-loss-pytorch.py [--teacher DIR --student DIR --data D.jsonl --n 8 --gkd BIN]
Defaults: the demo models in assets/arithmetic and the first 8 held-out problems.
"""
import argparse, json, math, os, subprocess, sys, tempfile

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trl_loss(student_logits, teacher_logits, divergence, beta, temperature):
    """TRL GKDTrainer.generalized_jsd_loss per token (no reduction), in float64."""
    s = F.log_softmax(student_logits.double() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.double() / temperature, dim=-1)
    if divergence == "fkl" or (divergence == "jsd" and beta == 0):
        return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)
    if divergence == "rkl" or (divergence == "jsd" and beta == 1):
        return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)
    b = torch.tensor(beta, dtype=torch.float64)
    m = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), dim=0)
    kl_t = F.kl_div(m, t, reduction="none", log_target=True).sum(-1)
    kl_s = F.kl_div(m, s, reduction="none", log_target=True).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default=os.path.join(ROOT, "assets/arithmetic/teacher"))
    ap.add_argument("--student", default=os.path.join(ROOT, "assets/arithmetic/student"))
    ap.add_argument("--data", default=os.path.join(ROOT, "assets/arithmetic/heldout.jsonl"))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--gkd", default=os.path.join(ROOT, "target/release/gkd"))
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="gkd-parity-")
    rows = [json.loads(l) for l in open(args.data) if l.strip()][: args.n]
    data = os.path.join(work, "data.jsonl")
    with open(data, "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n")

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.teacher, "tokenizer.json"))
    eos_id = json.load(open(os.path.join(args.teacher, "generation_config.json"))).get("eos_token_id")
    eos = [eos_id] if isinstance(eos_id, int) else (eos_id[:1] if eos_id else [])
    vocab = max(tok.get_vocab().values()) + 1
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32).eval()

    failures = 0
    cases = [("jsd", 0.5, 1.0), ("fkl", 0.5, 1.0), ("rkl", 0.5, 1.0), ("jsd", 0.1, 2.0)]
    for div, beta, temp in cases:
        out = os.path.join(work, f"out-{div}-{beta}-{temp}")
        cmd = [args.gkd, "distill", "--teacher", args.teacher, "--student", args.student, "--data", data,
               "--out", out, "--lambda", "0", "--lr", "0", "--steps", "1", "--batch-size", str(len(rows)),
               "--divergence", div, "--beta", str(beta), "--loss-temperature", str(temp), "--device", "cpu",
               "--quiet"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gkd_loss = json.loads(open(os.path.join(out, "metrics.jsonl")).readline())["loss"]

        total, count = 0.0, 0
        with torch.no_grad():
            for r in rows:
                p = tok(r["prompt"])["input_ids"]
                c = tok(r["completion"], add_special_tokens=False)["input_ids"] + eos
                ids = torch.tensor([p + c])
                sl = student(ids).logits[0, :, :vocab]
                tl = teacher(ids).logits[0, :, :vocab]
                rows_ = slice(len(p) - 1, len(p) + len(c) - 1)  # the positions predicting c
                total += trl_loss(sl[rows_], tl[rows_], div, beta, temp).sum().item()
                count += len(c)
        torch_loss = total / count
        rel = abs(gkd_loss - torch_loss) / abs(torch_loss)
        ok = rel <= 1e-4
        failures += not ok
        name = f"{div}(beta={beta})" if div == "jsd" else div
        print(f"{name:16s} T={temp}: gkd {gkd_loss:.8f}  pytorch {torch_loss:.8f}  rel diff {rel:.2e}  {'ok' if ok else 'FAIL'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
