#!/usr/bin/env python3
"""Tiny random Hugging Face models and transformers' log-probabilities for gkd's parity tests.

Writes tests/fixtures/<name>/ for each family: config.json, safetensors weights, tokenizer files
and reference.json (what transformers computes). Then, when the gkd binary is built, checks the
other direction: a model written by `gkd init` loads in transformers unchanged and gives the same
log-probabilities as `gkd score`.

    pip install torch transformers safetensors tokenizers
    cargo build --release && python3 scripts/make-fixtures.py

Options: --out DIR (default tests/fixtures), --gkd PATH (default target/release/gkd),
--skip-roundtrip. Sizes are kept tiny (hidden 32-48, 2 layers, ~300 tokens): < 2 MB in all.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (AutoModelForCausalLM,  # noqa: E402
                          AutoTokenizer, GPT2Config, LlamaConfig, MistralConfig,
                          PreTrainedTokenizerFast, Qwen2Config)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CORPUS = """The quick brown fox jumps over the lazy dog. A teacher model and a student model
read the same prompt; the student samples a completion and the teacher scores it, token by token.
Knowledge distillation moves what the large model knows into the small one. On-policy data
comes from the student itself, so the student learns from its own mistakes. The divergence
between the two next-token distributions is the loss: forward KL, reverse KL, or the generalized
Jensen-Shannon divergence in between. Numbers like 0 1 2 3 4 5 6 7 8 9 10 42 100 and 2024 appear too.
"""

SPECIALS = ["<s>", "</s>", "<pad>"]
TEXT = "The student samples a completion; the teacher scores it."


def build_tokenizer(vocab_size=300):
    """A byte-level BPE (as GPT-2 / Llama 3 / Qwen2 use) with <s> prepended, like Llama."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def randomize(model, seed):
    """Weights large enough that next-token distributions are far from uniform (transformers'
    0.02 init makes every log-probability ≈ −ln V, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    conv1d = isinstance(model.config, GPT2Config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if ("norm" in name or "ln_" in name) and name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif "wte" in name or "wpe" in name or "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[0] if conv1d else p.shape[1]
                p.copy_(torch.randn(p.shape, generator=g) * 1.5 / math.sqrt(fan_in))


def logprobs(model, ids):
    """ln p(ids[i+1] | ids[..=i]) for one sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits.double(), dim=-1)
    return [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


def greedy(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def families(v, tok):
    bos, eos, pad = (tok.convert_tokens_to_ids(t) for t in SPECIALS)
    ids = dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    return {
        # Learned positions, LayerNorm, tanh GELU, Conv1D layout, tied head.
        "gpt2": (GPT2Config(vocab_size=v, n_positions=64, n_embd=32, n_layer=2, n_head=4, attn_pdrop=0.0,
                            embd_pdrop=0.0, resid_pdrop=0.0, **ids), {}),
        # GQA with 3 query heads per KV head, rope_theta 5e5, llama3 rope scaling (all three bands
        # of wavelengths are hit with head_dim 8 and 256 original positions), untied head,
        # an embedding larger than the tokenizer (as real checkpoints pad it).
        "llama": (LlamaConfig(vocab_size=v + 20, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=1024,
                              rope_theta=500000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
                              tie_word_embeddings=False, rms_norm_eps=1e-5, **ids), {}),
        # q/k/v biases, tied head, rope_theta 1e6; weights stored in bf16.
        "qwen2": (Qwen2Config(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                              rope_theta=1000000.0, tie_word_embeddings=True, **ids), {"dtype": torch.bfloat16}),
        # 4 query heads on one KV head, untied head; weights in f16, sharded with an index.
        "mistral": (MistralConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512,
                                  sliding_window=4096, tie_word_embeddings=False, **ids),
                    {"dtype": torch.float16, "max_shard_size": "40KB"}),
    }


def sequences(v_tok, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, v_tok, size=n).tolist() for n in (2, 7, 13, 24)]


def make_fixture(name, config, save, tok, out, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    randomize(model, seed)
    if "dtype" in save:  # round to the stored precision first: the reference uses those weights
        model = model.to(save["dtype"]).float()
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    kw = {"max_shard_size": save["max_shard_size"]} if "max_shard_size" in save else {}
    model.to(save.get("dtype", torch.float32)).save_pretrained(d, **kw)
    tok.save_pretrained(d)
    # The reference: the saved checkpoint loaded back in fp32 and evaluated in fp64.
    ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    ref64 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, attn_implementation="eager").eval()
    seqs = sequences(len(tok), seed)
    text_ids = tok(TEXT)["input_ids"]
    prompts = [s[: max(1, len(s) // 2)] for s in seqs]
    reference = {
        "transformers": transformers.__version__,
        "sequences": seqs,
        "logprobs": [logprobs(ref64, s) for s in seqs],
        "logprobs_fp32": [logprobs(ref, s) for s in seqs],
        "text": TEXT,
        "text_ids": text_ids,
        "text_logprobs": logprobs(ref64, text_ids),
        "greedy": {"prompts": prompts, "max_new_tokens": 8, "outputs": [greedy(ref64, p, 8) for p in prompts]},
    }
    diff32 = max(abs(a - b) for x, y in zip(reference["logprobs"], reference["logprobs_fp32"]) for a, b in zip(x, y))
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(reference, f)
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    print(f"{name:8s} {sum(p.numel() for p in ref.parameters()):7d} params  {size / 1024:6.1f} KiB  "
          f"files: {', '.join(sorted(os.listdir(d)))}  (transformers fp32 vs fp64: {diff32:.2e})")


def gkd(binary, *args):
    r = subprocess.run([binary, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"gkd {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def roundtrip(binary, tok_dir):
    """gkd init → transformers: the saved model loads unchanged and scores as gkd scores it."""
    print(f"\ngkd init -> transformers {transformers.__version__} round trip ({binary}):")
    shapes = {
        "gpt2": ["--hidden", "32", "--layers", "2", "--heads", "4"],
        "llama": ["--hidden", "48", "--layers", "2", "--heads", "6", "--kv-heads", "2", "--rope-theta", "500000"],
        "qwen2": ["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--tie-word-embeddings", "true"],
        "mistral": ["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "1", "--dtype", "bf16"],
    }
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for arch, extra in shapes.items():
            d = os.path.join(tmp, arch)
            gkd(binary, "init", "--arch", arch, "--tokenizer", os.path.join(tok_dir, "tokenizer.json"),
                "--out", d, "--seed", "7", *extra)
            m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
            t = AutoTokenizer.from_pretrained(d)
            hf_ids = t(TEXT)["input_ids"]
            ours = json.loads(gkd(binary, "score", "--model", d, "--text", TEXT, "--device", "cpu"))
            if ours["ids"] != hf_ids:
                raise SystemExit(f"{arch}: gkd tokenizes {ours['ids']} but transformers {hf_ids}")
            hf = logprobs(m, hf_ids)
            diff = max(abs(a - b) for a, b in zip(hf, ours["logprobs"]))
            worst = max(worst, diff)
            # A fresh model is near-uniform (0.02 init): the spread shows the check still has teeth.
            print(f"  {arch:8s} loads in transformers ({type(m).__name__}), same tokens; logprobs span "
                  f"[{min(hf):.3f}, {max(hf):.3f}]; max |gkd - transformers| = {diff:.2e} over {len(hf)} tokens")
    verdict = "PASS" if worst <= 1e-4 else "FAIL"
    print(f"round trip: {verdict} (worst {worst:.2e}, tolerance 1e-4)")
    return worst <= 1e-4


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    ap.add_argument("--gkd", default=os.path.join(ROOT, "target", "release", "gkd"))
    ap.add_argument("--skip-roundtrip", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    os.makedirs(a.out, exist_ok=True)
    tok = build_tokenizer()
    print(f"tokenizer: {len(tok)} tokens; transformers {transformers.__version__}, torch {torch.__version__}")
    for i, (name, (config, save)) in enumerate(families(len(tok), tok).items()):
        make_fixture(name, config, save, tok, a.out, seed=100 + i)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(a.out) for f in fs)
    print(f"fixtures: {total / 1024:.0f} KiB in {a.out}")
    if a.skip_roundtrip:
        return
    if not os.path.exists(a.gkd):
        print(f"\nround trip skipped: {a.gkd} not built (cargo build --release)")
        return
    if not roundtrip(a.gkd, os.path.join(a.out, "gpt2")):
        sys.exit(1)


if __name__ == "__main__":
    main()
