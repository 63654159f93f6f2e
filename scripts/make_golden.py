#!/usr/bin/env python3
"""Golden reference for SmolLM2-135M-Instruct.Q4_1.gguf from an independent implementation:
Hugging Face transformers on the CPU, which dequantizes the GGUF weights to f32 (and undoes
llama.cpp's Q/K row permutation) and runs its own Llama forward pass in f32.

Writes tests/fixtures/smollm2_golden.json with, for each prompt: the token ids, the top-20 (id,
logit) at the last prompt position, greedy decoding of 32 tokens with the top1-top2 margin at every
step and the top-20 at a few steps, and a few dequantized weight values (to check the loader on
its own).

Set-up (CPU only):  pip install torch transformers gguf
Run:                python3 scripts/make_golden.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json, os, sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

GEN_TOKENS = 32
TOPK = 20
# Decode steps (0 = the logits after the prompt) whose full top-20 is recorded.
TOPK_STEPS = [0, 1, 4, 16, 31]

PLAIN = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the tallest mountain in the world?"}]
UNICODE = "In 1969, 3 astronauts flew 384,400 km \u2014 na\u00efve caf\u00e9 \u6771\u4eac \U0001F680. Next: 12+34="
CODE = "def fibonacci(n):\n    "


def main():
    gguf_path = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "/work/cache/SmolLM2-135M-Instruct.Q4_1.gguf")
    folder, name = os.path.split(gguf_path)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()

    chat_text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    prompts = [
        ("plain", PLAIN),
        ("chat", chat_text),
        ("unicode_digits", UNICODE),
        ("code", CODE),
    ]
    out = {
        "model": name,
        "model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "made_by": "scripts/make_golden.py",
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, CPU, float32, "
                     "weights dequantized from the GGUF by transformers",
        "gen_tokens": GEN_TOKENS,
        "topk_steps": TOPK_STEPS,
        "prompts": [],
        "weights": weight_samples(model),
    }
    for label, text in prompts:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        out["prompts"].append(run_prompt(model, label, text, ids))
        print(label, len(ids), "tokens ->", repr(tok.decode(out["prompts"][-1]["generated"])), file=sys.stderr)
    out["chat_messages"] = CHAT

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "smollm2_golden.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print("wrote", os.path.normpath(path), file=sys.stderr)


def topk(logits):
    v, i = torch.topk(logits, TOPK)
    return [[int(a), round(float(b), 5)] for a, b in zip(i, v)]


@torch.no_grad()
def run_prompt(model, label, text, ids):
    seq = list(ids)
    generated, margins, tops = [], [], {}
    for step in range(GEN_TOKENS):
        logits = model(torch.tensor([seq])).logits[0, -1].float()
        top2 = torch.topk(logits, 2)
        margins.append(round(float(top2.values[0] - top2.values[1]), 5))
        if step in TOPK_STEPS:
            tops[str(step)] = topk(logits)
        nxt = int(top2.indices[0])
        generated.append(nxt)
        seq.append(nxt)
    return {"label": label, "text": text, "ids": ids, "generated": generated, "margins": margins, "topk": tops}


def weight_samples(model):
    """A few dequantized values per tensor, HF names and row order: rows x first 8 columns."""
    sd = model.state_dict()
    picks = {
        "model.embed_tokens.weight": [0, 1, 2, 49151],
        "model.layers.0.self_attn.q_proj.weight": [0, 1, 2, 31, 32, 33, 63, 64, 575],
        "model.layers.0.self_attn.k_proj.weight": [0, 1, 31, 32, 33, 191],
        "model.layers.0.self_attn.v_proj.weight": [0, 1, 191],
        "model.layers.29.mlp.down_proj.weight": [0, 575],
        "model.layers.0.input_layernorm.weight": None,
        "model.norm.weight": None,
    }
    out = {}
    for name, rows in picks.items():
        w = sd[name].float()
        if rows is None:
            out[name] = {"shape": list(w.shape), "values": [round(float(x), 6) for x in w[:8]]}
        else:
            out[name] = {"shape": list(w.shape), "rows": rows,
                         "values": [[round(float(x), 6) for x in w[r, :8]] for r in rows]}
    return out


if __name__ == "__main__":
    main()
