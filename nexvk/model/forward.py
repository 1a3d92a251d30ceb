"""One transformer step, written once for every family, as calls on an `Ops` backend.

`forward` reads top to bottom like llama2.c's: embed, then per layer norm, q/k/v (+ biases),
(q/k norm),
RoPE, cache write + attention, output projection and residual, norm, gated FFN and residual;
then the final norm and the logits. What differs between families comes from `Arch` (arch.py).

It does nothing but Ops calls on State handles, so a backend may execute each call at once
(ops_numpy.py) or record the whole step once and replay it per token. A handle holds
(rows, features) activations; head structure is passed as arguments (head_dim), never by
reshaping; the step's token count T and each row's position and sequence (cache) live in
the Ops object (one sequence at pos..pos+T-1, or several: see NumpyOps.set_segments).
"""


class State:
    """Activation handles for up to B tokens per step, allocated once through the ops; the
    logits of logits_rows tokens (default B; 1 when only the last token's are wanted)."""

    def __init__(self, a, B, ops, logits_rows=None):
        q, kv = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        self.B = B
        self.tokens = ops.alloc((B,), "int32")        # this step's token ids
        self.x = ops.alloc((B, a.dim))                # residual stream
        self.xb = ops.alloc((B, a.dim))               # normed input / branch output
        self.q = ops.alloc((B, q))                    # queries, n_heads x head_dim
        self.k = ops.alloc((B, kv))                   # keys, n_kv_heads x head_dim
        self.v = ops.alloc((B, kv))
        self.att = ops.alloc((B, q))                  # attention output
        self.gate = ops.alloc((B, a.ffn_dim))         # act(gate) * up, in place
        self.up = ops.alloc((B, a.ffn_dim))
        self.logits = ops.alloc((logits_rows or B, a.vocab_size), readable=True)


def forward(ops, a, w, s, logits="all"):
    """The step over the ops' T tokens (already in s.tokens) at positions pos..pos+T-1.
    logits: "all" (rows 0..T-1 of s.logits), "last" (row 0: the last token's) or "none"."""
    hd = a.head_dim
    ops.embed(w.tok_embd, s.tokens, s.x, a.embed_scale)
    for i, L in enumerate(w.layers):
        # attention
        ops.rms_norm(s.x, L.attn_norm, a.eps, s.xb)
        ops.linear(s.xb, L.attn_q, s.q, bias=getattr(L, "attn_q_bias", None))
        ops.linear(s.xb, L.attn_k, s.k, bias=getattr(L, "attn_k_bias", None))
        ops.linear(s.xb, L.attn_v, s.v, bias=getattr(L, "attn_v_bias", None))
        if a.qk_norm:
            ops.rms_norm(s.q, L.attn_q_norm, a.eps, s.q, group=hd)
            ops.rms_norm(s.k, L.attn_k_norm, a.eps, s.k, group=hd)
        rope = (hd, a.rope_dims, a.rope_base[i], a.rope_neox, a.rope_factors[i], a.rope_attn_factor)
        ops.rope(s.q, *rope)
        ops.rope(s.k, *rope)
        ops.attention(i, s.q, s.k, s.v, s.att, hd, a.attn_scale)
        _residual(ops, a, s, s.att, L.attn_output, getattr(L, "post_attention_norm", None))
        # feed-forward
        ops.rms_norm(s.x, L.ffn_norm, a.eps, s.xb)
        ops.linear(s.xb, L.ffn_gate, s.gate)
        ops.linear(s.xb, L.ffn_up, s.up)
        ops.glu(s.gate, s.up, s.gate, a.act)
        _residual(ops, a, s, s.gate, L.ffn_down, getattr(L, "post_ffw_norm", None))
    if logits == "none":
        return
    x = ops.last_row(s.x) if logits == "last" else s.x
    ops.rms_norm(x, w.output_norm, a.eps, x)
    ops.linear(x, w.output, s.logits)


def _residual(ops, a, s, h, w_out, post_norm):
    """x += w_out @ h, with the family's post-norm of the branch output before the add."""
    if a.post_norms:
        ops.linear(h, w_out, s.xb)
        ops.rms_norm(s.xb, post_norm, a.eps, s.xb)
        ops.add(s.x, s.xb)
    else:
        ops.linear(h, w_out, s.x, accumulate=True)
