#!/usr/bin/env python3
"""Writes the demo's character-level tokenizer (tokenizer.json + tokenizer_config.json +
special_tokens_map.json) into the directory given as the only argument.

Vocabulary: <s>=0, </s>=1, <pad>=2, <unk>=3, then newline and the printable ASCII characters
32..126 in order. A BPE model without merges and without a pre-tokenizer splits text into single
characters; the Fuse decoder joins them back. No BOS is added (no post-processor)."""
import json, os, sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
specials = ["<s>", "</s>", "<pad>", "<unk>"]
chars = ["\n"] + [chr(c) for c in range(32, 127)]
vocab = {t: i for i, t in enumerate(specials + chars)}
tok = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(specials)
    ],
    "normalizer": None,
    "pre_tokenizer": None,
    "post_processor": None,
    "decoder": {"type": "Fuse"},
    "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
              "ignore_merges": False, "vocab": vocab, "merges": []},
}
with open(os.path.join(out, "tokenizer.json"), "w") as f:
    json.dump(tok, f, indent=1, ensure_ascii=True)
    f.write("\n")
cfg = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
       "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512}
with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump(cfg, f, indent=1)
    f.write("\n")
with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
    json.dump({k: cfg[k] for k in ["bos_token", "eos_token", "pad_token", "unk_token"]}, f, indent=1)
    f.write("\n")
