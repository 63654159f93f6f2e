#!/usr/bin/env python3
"""A tiny llama GGUF written by llama.cpp's own writer (gguf-py, `pip install gguf`), so the Rust
reader is checked against an independent writer: tests/fixtures/tiny_llama_ggufpy.gguf.
Weights are F32 except ffn_down (Q8_0, quantized by gguf-py); Q and K rows are permuted the way
llama.cpp's converter does (HF rotate-half -> interleaved pairs), so the reader must undo it.
HF row r of every 2-D tensor holds values r * 1000 + column."""
import os
import numpy as np
import gguf

H, HEADS, KV, FFN, VOCAB = 32, 4, 2, 64, 12
HD = H // HEADS


def permute(w, n_head):
    # convert_hf_to_gguf.py LlamaModel.permute: (n_head, 2, rows/n_head/2, cols) -> swap axes 1, 2
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def mat(rows, cols):
    return (np.arange(rows)[:, None] * 1000 + np.arange(cols)[None, :]).astype(np.float32)


path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tiny_llama_ggufpy.gguf")
w = gguf.GGUFWriter(path, "llama")
w.add_name("tiny gguf-py test")
w.add_block_count(1)
w.add_context_length(128)
w.add_embedding_length(H)
w.add_feed_forward_length(FFN)
w.add_head_count(HEADS)
w.add_head_count_kv(KV)
w.add_rope_dimension_count(HD)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("default")
w.add_token_list([f"tok{i}" for i in range(VOCAB)])
w.add_token_types([1] * (VOCAB - 2) + [3, 3])
w.add_token_merges(["t o", "to k"])
w.add_bos_token_id(VOCAB - 2)
w.add_eos_token_id(VOCAB - 1)
w.add_add_bos_token(True)
w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
w.add_tensor("token_embd.weight", mat(VOCAB, H))
w.add_tensor("blk.0.attn_norm.weight", np.ones(H, dtype=np.float32))
w.add_tensor("blk.0.attn_q.weight", permute(mat(H, H), HEADS))
w.add_tensor("blk.0.attn_k.weight", permute(mat(KV * HD, H), KV))
w.add_tensor("blk.0.attn_v.weight", mat(KV * HD, H))
w.add_tensor("blk.0.attn_output.weight", mat(H, H))
w.add_tensor("blk.0.ffn_norm.weight", np.ones(H, dtype=np.float32))
w.add_tensor("blk.0.ffn_gate.weight", mat(FFN, H))
w.add_tensor("blk.0.ffn_up.weight", mat(FFN, H))
small = (np.arange(H)[:, None] * 0.01 + np.arange(FFN)[None, :] * 0.001).astype(np.float32)
w.add_tensor("blk.0.ffn_down.weight", gguf.quants.quantize(small, gguf.GGMLQuantizationType.Q8_0),
             raw_dtype=gguf.GGMLQuantizationType.Q8_0)
w.add_tensor("output_norm.weight", np.ones(H, dtype=np.float32))
w.add_tensor("output.weight", mat(VOCAB, H))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote", os.path.normpath(path), os.path.getsize(path), "bytes")
