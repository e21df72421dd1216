#!/usr/bin/env python3
"""Markdown table (mean ± sample std over seeds) of held-out exact match from the runs.jsonl of
scripts/run-results or scripts/run-rl-results. Usage: scripts/results-table.py results/runs.jsonl"""
import json, statistics, sys
from collections import defaultdict

runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = defaultdict(list)
rl = any(r["method"] == "rl" for r in runs)
for r in runs:
    if r["method"] == "sft":
        key = ("SFT of the student", "cross-entropy")
    elif r["method"] == "rl":
        a = r["alpha"]
        name = {1: "pure GKD (α = 1)", 0: "pure RL (α = 0)"}.get(a, f"RL + GKD (α = {a})")
        loss = {1: "JSD(0.5)", 0: "policy gradient"}.get(a, "JSD(0.5) + policy gradient")
        key = (name, f"{loss}, K = {r['k']}")
    else:
        name = {1: "on-policy GKD (λ = 1)", 0.5: "mixed (λ = 0.5)", 0: "supervised KD (λ = 0)"}[r["lambda"]]
        key = (name, "JSD(0.5)" if r["divergence"] == "jsd" else "forward KL")
    groups[key].append((r["seed"], r["summary"]["eval_exact_match"], r.get("train_reward_last10"), r["summary"]["seconds"]))
extra = " training reward, last 10 steps |" if rl else ""
print("| method | loss | held-out exact match (mean ± std) | per seed |" + extra + " seconds / run |")
print("|---|---|---|---|" + ("---|" if rl else "") + "---|")
for (name, div), v in groups.items():
    em = [x[1] * 100 for x in v]
    sd = statistics.stdev(em) if len(em) > 1 else float("nan")
    per = ", ".join(f"{x[1]*100:.0f}" for x in sorted(v))
    cols = f" {statistics.mean(x[2] for x in v):.3f} |" if rl else ""
    print(f"| {name} | {div} | {statistics.mean(em):.1f} ± {sd:.1f} % (n = {len(em)}) | {per} |{cols} {statistics.mean(x[3] for x in v):.0f} |")
