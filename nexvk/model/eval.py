"""Perplexity and KL divergence against an f16 cache, with llama.cpp's perplexity semantics.

The text is tokenized as one whole (with a BOS first when the vocab says to add one) and cut
into consecutive windows of `ctx` tokens; it is read and tokenized as a stream (stream_ids),
only as far as the windows asked for need, so a file of any size takes bounded memory. Each
window runs from an empty cache with its first token replaced by BOS (when the vocab adds
one), as llama.cpp's perplexity does, and only the second half is scored: the logits at positions ctx/2 .. ctx-2 predict tokens ctx/2+1 .. ctx-1, so
ctx/2 - 1 tokens per window. With bos_insert=True each window is instead BOS followed by the
next ctx-1 tokens of the text, so no token is overwritten (the windows of Gemma-3's reference
numbers in docs/model.md). With kld=True a second cache
in f16 (sharing the same weights) runs the same windows and the next-token distributions are
compared: mean KL(p_f16 || p_fmt), its 99th percentile and top-1 agreement.
"""
import io
import itertools
import math
import sys

import numpy as np

from nexvk.cache.config import CacheConfig


APPEND = 64  # tokens per forward call after the first append (first_append)


def _log_softmax(logits):
    """(n, vocab) float32 -> float64 log-probabilities."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def kld(ref_logits, logits):
    """KL(ref || other) of the next-token distributions of two (n, vocab) logits arrays, per
    position (float64): what `nexvk ppl --kld` averages."""
    return _kl(_log_softmax(ref_logits), _log_softmax(logits))


def _kl(lp_ref, lp):
    return np.sum(np.exp(lp_ref) * (lp_ref - lp), axis=1)


BLOCK = 1 << 18     # characters tokenized per step when streaming a text
OVERLAP = 1 << 10   # characters re-read before each cut (see stream_ids)


def stream_ids(tok, text, block=BLOCK, overlap=OVERLAP):
    """The token ids of `text` (a str or a text file object), as tok.encode(whole text, no
    BOS) gives them, read and tokenized `block` characters at a time: memory stays bounded
    whatever the size of the file, and only what the caller consumes is read.

    Each step encodes the text from `overlap` characters before the last cut; the tokens
    before the cut are dropped and those from the cut on kept, up to a token boundary
    `overlap` characters before the end of what was read. A token starts exactly at the cut
    in both encodings, or the text is refused (a token that depends on text more than
    `overlap` characters away, which no vocabulary in use has)."""
    if isinstance(text, str):
        text = io.StringIO(text)
    if not hasattr(text, "read"):
        raise ValueError(f"text must be a str or a text file, got {type(text).__name__}")
    buf, base, eof, done = "", 0, False, 0   # buf[base:] is not yet emitted
    while True:
        while not eof and len(buf) - base < block + overlap:
            piece = text.read(block)
            eof = not piece
            buf += piece
        enc = tok.hf.encode(buf, add_special_tokens=False)
        ids, starts = enc.ids, [a for a, _ in enc.offsets]
        i = next((k for k, a in enumerate(starts) if a >= base), len(ids))
        if base and (i == len(ids) or starts[i] != base):
            raise ValueError(f"text near character {done + base}: its tokens depend on text "
                             f"more than {overlap} characters away; cannot stream it")
        if eof:
            yield from ids[i:]
            return
        end = len(buf) - overlap
        j = max(i, next((k for k in range(len(ids) - 1, i - 1, -1) if starts[k] <= end), i))
        while j > i and starts[j - 1] == starts[j]:  # byte tokens of one character: cut before all
            j -= 1
        if j == i:   # no token boundary in the block: read on (a very long token)
            block *= 2
            continue
        yield from ids[i:j]
        keep = max(0, starts[j] - overlap)
        buf, base, done = buf[keep:], starts[j] - keep, done + keep


def windows_of(tok, text, ctx, chunks=None, bos=None, bos_insert=False):
    """The first `chunks` (default: all) consecutive windows of ctx tokens of `text` (a str
    or a text file object, read only as far as the windows need), each int64 (ctx,). With a
    BOS (the vocab's add_bos, or `bos`): llama.cpp's default puts it in place of each
    window's first token; bos_insert=True puts it before ctx - 1 text tokens instead
    (llama.cpp with a model that must see BOS, e.g. Gemma)."""
    if chunks is not None and int(chunks) <= 0:
        raise ValueError(f"chunks must be positive, got {chunks}")
    add_bos = (tok.add_bos if bos is None else bos) and tok.bos_id is not None
    head = [tok.bos_id] if add_bos else []
    step = ctx - len(head) if bos_insert else ctx  # text tokens per window
    ids = stream_ids(tok, text)
    if add_bos and not bos_insert:
        ids = itertools.chain(head, ids)
    n, got = 0, 0
    while chunks is None or n < int(chunks):
        window = list(itertools.islice(ids, step))
        got += len(window)
        if len(window) < step:
            break
        window = np.asarray(head + window if bos_insert else window, dtype=np.int64)  # (ctx,)
        if add_bos:
            window[0] = tok.bos_id
        n += 1
        yield window
    if n == 0:
        raise ValueError(f"text has {got} tokens, fewer than one window of {ctx}")


def _forward(model, window, first_append=None):
    """Logits of every position of `window`, from position 0: one forward call, or the first
    `first_append` tokens and then calls of APPEND tokens."""
    model.reset()
    if first_append is None:
        return model.forward(window, 0)
    out = np.empty((len(window), model.arch.vocab_size), np.float32)
    bounds = [0, *range(first_append, len(window), APPEND), len(window)]
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            out[a:b] = model.forward(window[a:b], a)
    return out


def perplexity(model_or_path, text, ctx=512, chunks=None, k_type="f16", v_type="f16", kld=False,
               backend="numpy", device=None, progress=True, sparse_v=None, bos=None, seed=0,
               kld_base=None, bos_insert=False, cache_opts=None, *, cache=None,
               first_append=None, threads=None):
    """Perplexity of `text` (a str or a text file object; see the module docstring); returns
    a dict: ppl, ppl_err, nll, n_tokens, n_chunks, ctx, k_type, v_type, cache (the
    configuration in words), bits_per_value (all metadata included, at ctx) and, with kld=True,
    kld_mean, kld_err, kld_p99, top1_agree (percent), ppl_f16.

    cache: the CacheConfig to measure (for a Model, its backend and device are the model's);
    or, as before CacheConfig, k_type, v_type, backend, device, sparse_v, seed and
    cache_opts (more KVCache keywords: plain, sinks, layer_types, key_mean, key_scale; for a
    Model, None keeps its own).

    kld_base: an optional dict that keeps the f16 cache's scored logits per window (like
    llama.cpp's --kl-divergence-base file). Pass the same dict to several calls with the same
    model, text and ctx to run the f16 cache once per window; an f16/f16 run fills it too.
    bos_insert: windows of BOS + ctx-1 text tokens instead of llama.cpp's (module docstring).
    first_append: how a window arrives in the cache: its first P tokens in one forward call,
    then the rest in calls of APPEND tokens (None: the whole window in one prefill), as a
    chat or a short prompt fills it; the f16 reference is always one prefill.
    threads: the cpu backend's, for a model loaded here."""
    from nexvk.model.model import Model
    if ctx < 4:
        raise ValueError(f"ctx must be at least 4 for perplexity, got {ctx}")
    if first_append is not None and not (isinstance(first_append, (int, np.integer))
                                         and not isinstance(first_append, bool)
                                         and 1 <= first_append <= ctx):
        raise ValueError(f"first_append must be a number of tokens in 1..{ctx}, got "
                         f"{first_append!r}")
    if isinstance(model_or_path, Model):
        base_model = model_or_path
        if base_model.ctx < ctx:
            raise ValueError(f"model context {base_model.ctx} is smaller than ctx {ctx}")
        if cache is not None:
            model = base_model.with_cache(cache=cache.replace(
                backend=base_model.config.backend, device=base_model.config.device), ctx=ctx)
        else:
            opts = {} if cache_opts is None else {"cache_opts": cache_opts}
            model = base_model.with_cache(k_type, v_type, ctx=ctx, sparse_v=sparse_v, **opts)
    elif cache is not None:
        model = Model.load(model_or_path, ctx=ctx, progress=progress, cache=cache,
                           threads=threads)
    else:
        model = Model.load(model_or_path, ctx=ctx, k_type=k_type, v_type=v_type, backend=backend,
                           device=device, sparse_v=sparse_v, seed=seed, progress=progress,
                           cache_opts=cache_opts, threads=threads)
    k_type, v_type, sparse_v = model.config.k_type, model.config.v_type, model.config.sparse_v
    spec = model.cache.spec
    is_f16 = set(spec.k_types + spec.v_types) == {"f16"} and not sparse_v
    ref = None  # the f16 model, made on first need
    if kld_base is not None:
        key = ("weights", id(model.w), "ctx", ctx, "bos", bos, bos_insert, "text",
               hash(text) if isinstance(text, str) else id(text))
        if kld_base.setdefault("key", key) != key:
            raise ValueError("kld_base was filled for another model, text, ctx or bos setting")
    it = enumerate(windows_of(model.tokenizer, text, ctx, chunks, bos, bos_insert))
    first = ctx // 2

    nll, kl, agree, nll_ref = [], [], [], []
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"ppl {k_type}/{v_type} ctx {ctx}", unit="window", file=sys.stderr,
                  total=chunks)
    n = 0
    for i, window in it:
        n += 1
        target = window[first + 1:]                  # (ctx - first - 1,)
        rows = np.arange(target.size)
        logits = _forward(model, window, first_append)[first:ctx - 1]  # (n_scored, vocab)
        if is_f16 and kld_base is not None:
            kld_base[i] = logits.copy()
        lp = _log_softmax(logits)
        nll.append(-lp[rows, target])
        if kld:
            if is_f16:
                base = logits
            elif kld_base is not None and i in kld_base:
                base = kld_base[i]
            else:
                if ref is None:
                    ref = model.with_cache(cache=CacheConfig(
                        "f16", "f16", backend=model.config.backend, device=model.config.device,
                        max_batch=model.config.max_batch))
                ref.reset()
                base = ref.forward(window, 0)[first:ctx - 1]
                if kld_base is not None:
                    base = kld_base[i] = base.copy()
            lp_ref = _log_softmax(base)
            nll_ref.append(-lp_ref[rows, target])
            kl.append(_kl(lp_ref, lp))
            agree.append(lp_ref.argmax(axis=1) == lp.argmax(axis=1))
        if progress:
            it.set_postfix(ppl=f"{math.exp(np.concatenate(nll).mean()):.4f}")

    nll = np.concatenate(nll)
    mean = float(nll.mean())
    err = float(np.sqrt(max(np.mean(nll ** 2) - mean ** 2, 0.0) / max(nll.size - 1, 1)))
    out = dict(ppl=math.exp(mean), ppl_err=math.exp(mean) * err, nll=mean, n_tokens=int(nll.size),
               n_chunks=n, ctx=ctx, k_type=k_type, v_type=v_type, cache=spec.describe(),
               bits_per_value=model.cache.bits_per_value)
    if kld:
        kl = np.concatenate(kl)
        out.update(kld_mean=float(kl.mean()),
                   kld_err=float(kl.std(ddof=1) / math.sqrt(kl.size)) if kl.size > 1 else 0.0,
                   kld_p99=float(np.percentile(kl, 99)),
                   top1_agree=100.0 * float(np.concatenate(agree).mean()),
                   ppl_f16=math.exp(float(np.concatenate(nll_ref).mean())))
    return out


def format_result(r):
    """The result dict as the lines `nexvk ppl` prints."""
    lines = [f"cache: {r['cache']}; {r['bits_per_value']:.3f} bits/value at {r['ctx']} tokens "
             "(norms, scales, sinks and key means included)",
             f"ppl {r['k_type']}/{r['v_type']}: {r['ppl']:.4f} +/- {r['ppl_err']:.4f} "
             f"({r['n_tokens']} tokens scored, {r['n_chunks']} windows of {r['ctx']})"]
    if "kld_mean" in r:
        lines.append(f"vs f16 cache: ppl_f16 {r['ppl_f16']:.4f}, KLD mean {r['kld_mean']:.6f} "
                     f"+/- {r['kld_err']:.6f}, KLD p99 {r['kld_p99']:.6f}, "
                     f"top-1 agreement {r['top1_agree']:.2f}%")
    return lines
