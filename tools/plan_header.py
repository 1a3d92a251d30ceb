#!/usr/bin/env python3
"""Write a header-only GGUF of a real model's dimensions, for `nexvk plan` without the file.

The metadata and tensor table are those llama.cpp's converter and llama-quantize give the
model (tensor names, shapes and Q4_K_M's per-tensor types: Q6_K for output.weight and for
attn_v / ffn_down on the layers llama.cpp's use_more_bits picks, Q4_K elsewhere, F32 norms
and biases); the tensor data is a hole (the file is truncated to its full size, so it is
sparse and takes no disk space). Nothing can run from it; `nexvk plan` reads only the header.

    python tools/plan_header.py qwen2.5-14b /tmp/qwen2.5-14b.gguf
    nexvk plan /tmp/qwen2.5-14b.gguf -c 32768 -ctk turbo3 -ctv turbo3 --memory 4GiB
"""
import argparse
import os
import sys

import gguf
import numpy as np

T = gguf.GGMLQuantizationType
# dimensions from each model's Hugging Face config.json
MODELS = {
    "qwen2.5-14b": dict(arch="qwen2", name="Qwen2.5-14B-Instruct (header only)", layers=48,
                        dim=5120, ffn=13824, heads=40, kv_heads=8, vocab=152064, ctx=32768,
                        rope_base=1e6, eps=1e-6, bias=True, tied=False),
    "qwen2.5-7b": dict(arch="qwen2", name="Qwen2.5-7B-Instruct (header only)", layers=28,
                       dim=3584, ffn=18944, heads=28, kv_heads=4, vocab=152064, ctx=32768,
                       rope_base=1e6, eps=1e-6, bias=True, tied=False),
}


def use_more_bits(i, n):
    """llama.cpp's choice of the Q4_K_M layers that keep attn_v and ffn_down in Q6_K."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensors(m):
    """(name, numpy-order shape, GGML type) of every tensor, in the converter's order."""
    d, hd = m["dim"], m["dim"] // m["heads"]
    kv = m["kv_heads"] * hd
    yield "token_embd.weight", (m["vocab"], d), T.Q4_K
    for i in range(m["layers"]):
        b, more = f"blk.{i}.", use_more_bits(i, m["layers"])
        yield b + "attn_norm.weight", (d,), T.F32
        for n, rows in (("attn_q", d), ("attn_k", kv), ("attn_v", kv)):
            yield b + n + ".weight", (rows, d), T.Q6_K if n == "attn_v" and more else T.Q4_K
            if m["bias"]:
                yield b + n + ".bias", (rows,), T.F32
        yield b + "attn_output.weight", (d, d), T.Q4_K
        yield b + "ffn_norm.weight", (d,), T.F32
        yield b + "ffn_gate.weight", (m["ffn"], d), T.Q4_K
        yield b + "ffn_up.weight", (m["ffn"], d), T.Q4_K
        yield b + "ffn_down.weight", (d, m["ffn"]), T.Q6_K if more else T.Q4_K
    yield "output_norm.weight", (d,), T.F32
    if not m["tied"]:
        yield "output.weight", (m["vocab"], d), T.Q6_K


def write(model, path):
    m = MODELS[model]
    w = gguf.GGUFWriter(str(path), m["arch"])
    w.add_name(m["name"])
    w.add_block_count(m["layers"])
    w.add_context_length(m["ctx"])
    w.add_embedding_length(m["dim"])
    w.add_feed_forward_length(m["ffn"])
    w.add_head_count(m["heads"])
    w.add_head_count_kv(m["kv_heads"])
    w.add_rope_freq_base(m["rope_base"])
    w.add_layer_norm_rms_eps(m["eps"])
    w.add_vocab_size(m["vocab"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    total = 0
    for name, shape, kind in tensors(m):
        block, size = gguf.GGML_QUANT_SIZES[kind]
        nbytes = int(np.prod(shape)) // block * size
        if kind == T.F32:
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes)
        else:  # the writer takes a quantized tensor's shape in bytes per row
            w.add_tensor_info(name, (*shape[:-1], shape[-1] // block * size), np.dtype(np.uint8),
                              nbytes, raw_dtype=kind)
        total += -(-nbytes // w.data_alignment) * w.data_alignment
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    # the data section as a hole: aligned start + every tensor's padded bytes
    start = os.path.getsize(path)
    start = -(-start // w.data_alignment) * w.data_alignment
    os.truncate(path, start + total)
    return start + total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("out")
    a = p.parse_args(argv)
    size = write(a.model, a.out)
    print(f"{a.out}: {size / 2**30:.2f} GiB as a sparse file (header only)", file=sys.stderr)


if __name__ == "__main__":
    main()
