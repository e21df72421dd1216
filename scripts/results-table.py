#!/usr/bin/env python3
"""Markdown table (mean ± sample std over seeds) of held-out exact match from scripts/run-results'
runs.jsonl. Usage: scripts/results-table.py results/runs.jsonl"""
import json, statistics, sys
from collections import defaultdict

runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = defaultdict(list)
for r in runs:
    if r["method"] == "sft":
        key = ("SFT of the student", "cross-entropy")
    else:
        name = {1: "on-policy GKD (λ = 1)", 0.5: "mixed (λ = 0.5)", 0: "supervised KD (λ = 0)"}[r["lambda"]]
        key = (name, "JSD(0.5)" if r["divergence"] == "jsd" else "forward KL")
    groups[key].append((r["seed"], r["summary"]["eval_exact_match"], r["summary"]["last_loss"], r["summary"]["seconds"]))
print("| method | loss | held-out exact match (mean ± std) | per seed | seconds / run |")
print("|---|---|---|---|---|")
for (name, div), v in groups.items():
    em = [x[1] * 100 for x in v]
    sd = statistics.stdev(em) if len(em) > 1 else float("nan")
    per = ", ".join(f"{x[1]*100:.0f}" for x in sorted(v))
    print(f"| {name} | {div} | {statistics.mean(em):.1f} ± {sd:.1f} % (n = {len(em)}) | {per} | {statistics.mean(x[3] for x in v):.0f} |")
