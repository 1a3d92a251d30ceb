#!/usr/bin/env python3
"""Fuzz GGUF reading: mutated copies of tiny models through plan, Model.load and generate.

    python tools/fuzz_gguf.py --cases 1000            # what tests/model/test_fuzz_gguf.py runs
    python tools/fuzz_gguf.py --cases 20000 --seed 7  # a longer campaign
    python tools/fuzz_gguf.py --seed 7 --replay 123 --keep /tmp/case  # write one case to look at

Two tiny models (2 layers, dim 32, 2 query heads and 1 KV head of 16; F32, F16 and Q8_0 tensors)
are written with gguf.GGUFWriter: a llama with a 263-token byte-level BPE vocabulary, and a
gemma3 (q/k and post norms, a sliding window on layer 0) with a 271-token SentencePiece one.
Each case picks one and mutates it one way, chosen by an RNG seeded with (seed, case):
  flip      1-8 bit flips, mostly in the header (metadata and tensor table)
  truncate  the file cut short, mostly inside the header
  inflate   a count, string length, array length, dimension or offset set to a huge or
            off-by-one value (positions found by gguf.GGUFReader on the intact file)
  retype    a value type, array element type, tensor type or dimension count swapped
  splice    header bytes copied over, inserted or deleted
  meta      one metadata value replaced by another type or range, or removed (re-written
            with the gguf writer, so the file itself is well formed)
  tensor    a tensor dropped, reshaped, retyped or added (a layer too many, a norm of dim 1)
  vocab     a crafted vocabulary (token_embd resized to match): chains a, aa, aaa, ...; a very
            long token; every substring of a random text; duplicate, empty or spaced tokens;
            non-finite scores (SentencePiece); chained, long or dangling merges (BPE)
Every case runs plan(), Model.load() (numpy, f16 cache, ctx 32) and a 2-token generate().
Allowed outcomes: success, or ValueError. A failure is anything else: another exception, a
MemoryError under the RLIMIT_AS cap (the worker's own size + --mem MiB), a crash, or a case
running longer than --timeout seconds; each is printed with its case number for --replay.

Cases run in worker processes, one per batch (not one per file, which would spend seconds per
case on imports): a worker prints each case's number before starting it, so when a case kills
it the parent records that case and starts a new worker after it.
"""
import argparse
import faulthandler
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ("flip", "truncate", "inflate", "retype", "splice", "meta", "tensor", "vocab")
ARCHS = ("llama", "gemma3")  # the base files: byte-level BPE llama, SentencePiece gemma3
WEIGHTS = (0.18, 0.09, 0.18, 0.09, 0.09, 0.13, 0.12, 0.12)
# one thread each: a fuzz worker must not reserve address space per core
_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# ---- the tiny model ------------------------------------------------------------------------
def _byte_tokens():
    """GPT-2's byte-to-unicode alphabet: the 256 base tokens of a byte-level BPE vocab."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _vocab(kind):
    """Metadata of a tiny vocabulary: byte-level BPE ("gpt2") or SentencePiece ("llama")."""
    from gguf import GGUFValueType as V
    if kind == "gpt2":
        merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r")]
        tokens = _byte_tokens() + [a + b for a, b in merges] + ["<|endoftext|>"]
        types = [1] * (len(tokens) - 1) + [3]  # NORMAL ... CONTROL
        extra = [("tokenizer.ggml.pre", "gpt-2", V.STRING, None),
                 ("tokenizer.ggml.merges", [f"{a} {b}" for a, b in merges], V.ARRAY, V.STRING)]
        bos = eos = len(tokens) - 1
    else:  # <unk> <s> </s>, 256 byte-fallback tokens, then pieces ranked by score
        pieces = ["▁", "t", "h", "e", "i", "n", "a", "▁t", "he", "▁the", "in", "▁a"]
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
        types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)  # UNKNOWN, CONTROL, BYTE, NORMAL
        scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
        extra = [("tokenizer.ggml.scores", scores, V.ARRAY, V.FLOAT32),
                 ("tokenizer.ggml.unknown_token_id", 0, V.UINT32, None),
                 ("tokenizer.ggml.add_bos_token", True, V.BOOL, None)]
        bos, eos = 1, 2
    return [("tokenizer.ggml.model", kind, V.STRING, None),
            ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
            ("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32), *extra,
            ("tokenizer.ggml.bos_token_id", bos, V.UINT32, None),
            ("tokenizer.ggml.eos_token_id", eos, V.UINT32, None)], len(tokens)


def tiny_parts(n_layers=2, dim=32, n_heads=2, n_kv=1, ffn=64, seed=0, arch="llama"):
    """(metadata, tensors) of the tiny model: [(key, value, type, element type)] and
    [(name, numpy array (rows, cols), GGML type)]. arch "llama" has a byte-level BPE vocab;
    "gemma3" (q/k norms, post norms, a sliding window on layer 0) a SentencePiece one."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q, GGUFValueType as V
    vocab, n_vocab = _vocab("gpt2" if arch == "llama" else "llama")
    hd = dim // n_heads
    meta = [("general.architecture", arch, V.STRING, None),
            ("general.name", "nexvk-fuzz-tiny", V.STRING, None),
            (f"{arch}.block_count", n_layers, V.UINT32, None),
            (f"{arch}.context_length", 64, V.UINT32, None),
            (f"{arch}.embedding_length", dim, V.UINT32, None),
            (f"{arch}.feed_forward_length", ffn, V.UINT32, None),
            (f"{arch}.attention.head_count", n_heads, V.UINT32, None),
            (f"{arch}.attention.head_count_kv", n_kv, V.UINT32, None),
            (f"{arch}.rope.freq_base", 10000.0, V.FLOAT32, None),
            (f"{arch}.rope.dimension_count", hd, V.UINT32, None),
            (f"{arch}.attention.layer_norm_rms_epsilon", 1e-5, V.FLOAT32, None), *vocab]
    if arch == "gemma3":
        meta += [("gemma3.attention.sliding_window", 8, V.UINT32, None),
                 ("gemma3.attention.sliding_window_pattern", [True] + [False] * (n_layers - 1),
                  V.ARRAY, V.BOOL)]
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    tensors = [("token_embd.weight", w(n_vocab, dim), Q.Q8_0),
               ("output_norm.weight", 1 + w(dim), Q.F32)]
    for i in range(n_layers):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", 1 + w(dim), Q.F32),
                    (b + "attn_q.weight", w(n_heads * hd, dim), Q.F16),
                    (b + "attn_k.weight", w(n_kv * hd, dim), Q.F16),
                    (b + "attn_v.weight", w(n_kv * hd, dim), Q.Q8_0),
                    (b + "attn_output.weight", w(dim, n_heads * hd), Q.F32),
                    (b + "ffn_norm.weight", 1 + w(dim), Q.F32),
                    (b + "ffn_gate.weight", w(ffn, dim), Q.Q8_0),
                    (b + "ffn_up.weight", w(ffn, dim), Q.F16),
                    (b + "ffn_down.weight", w(dim, ffn), Q.F32)]
        if arch == "gemma3":
            tensors += [(b + "attn_q_norm.weight", 1 + w(hd), Q.F32),
                        (b + "attn_k_norm.weight", 1 + w(hd), Q.F32),
                        (b + "post_attention_norm.weight", 1 + w(dim), Q.F32),
                        (b + "post_ffw_norm.weight", 1 + w(dim), Q.F32)]
    return meta, tensors


def write_gguf(path, meta, tensors):
    """Write metadata and tensors (as tiny_parts returns them) with gguf.GGUFWriter."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q, GGUFWriter
    from gguf.quants import quantize
    arch = next((v for k, v, _, _ in meta if k == "general.architecture"), "llama")
    w = GGUFWriter(str(path), arch if isinstance(arch, str) else "llama")
    w.kv_data[0].pop("general.architecture", None)  # only what `meta` says
    for key, value, vtype, sub in meta:
        w.add_key_value(key, value, vtype, sub)
    for name, a, qtype in tensors:
        if qtype == Q.F32:
            w.add_tensor(name, a.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_tiny_model(path, **kw):
    """The intact tiny model at `path` (keyword arguments as tiny_parts)."""
    write_gguf(path, *tiny_parts(**kw))
    return Path(path)


# ---- mutations -----------------------------------------------------------------------------
class Base:
    """The intact file's bytes, its parts, and where its header integers are."""

    def __init__(self, tmp, arch):
        import numpy as np
        from gguf import GGUFReader
        self.arch = arch
        self.meta, self.tensors = tiny_parts(arch=arch)
        self.path = write_tiny_model(Path(tmp) / f"base-{arch}.gguf", arch=arch)
        path = self.path
        self.data = path.read_bytes()
        r = GGUFReader(path)
        start = r.data.__array_interface__["data"][0]
        fields = list(r.fields.values()) + [t.field for t in r.tensors]
        self.u64, self.u32 = [], []  # per field: offsets of its 8- and 4-byte integers
        for f in fields:
            offs = {np.dtype(np.uint64): [], np.dtype(np.uint32): []}
            for p in f.parts:
                if p.size == 1 and p.dtype in offs:
                    offs[p.dtype].append(p.__array_interface__["data"][0] - start)
            self.u64 += [offs[np.dtype(np.uint64)]] if offs[np.dtype(np.uint64)] else []
            self.u32 += [offs[np.dtype(np.uint32)]] if offs[np.dtype(np.uint32)] else []
        self.header = r.data_offset


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def mutate(base, rng, tmp):
    """(kind, bytes) of one mutated file."""
    kind = str(rng.choice(KINDS, p=WEIGHTS))
    data = bytearray(base.data)
    in_header = lambda: int(rng.integers(0, base.header if rng.random() < 0.85 else len(data)))  # noqa: E731
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            data[in_header()] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        del data[in_header():]
    elif kind == "inflate":
        off = _pick(rng, _pick(rng, base.u64))
        v = int.from_bytes(data[off:off + 8], "little")
        new = _pick(rng, [2**64 - 1, 2**63, 2**40, 2**32, 2**31 - 1, v + 1, max(v - 1, 0), 2 * v,
                          v + len(data), len(data), 0])
        data[off:off + 8] = (new % 2**64).to_bytes(8, "little")
    elif kind == "retype":
        off = _pick(rng, _pick(rng, base.u32))
        new = _pick(rng, [int(rng.integers(0, 16)), int(rng.integers(0, 45)), 2**32 - 1, 2**31])
        data[off:off + 4] = new.to_bytes(4, "little")
    elif kind == "splice":
        at, n = in_header(), int(rng.integers(1, 65))
        op = _pick(rng, ["copy", "insert", "delete"])
        if op == "copy":
            src = in_header()
            data[at:at + n] = data[src:src + n]
        elif op == "insert":
            data[at:at] = rng.bytes(n)
        else:
            del data[at:at + n]
    else:
        meta, tensors = {"meta": _mutate_meta, "tensor": _mutate_tensors,
                         "vocab": _mutate_vocab}[kind](base, rng)
        path = Path(tmp) / "rewrite.gguf"
        try:
            write_gguf(path, meta, tensors)
        except Exception:  # the writer refused the value (e.g. out of its type's range)
            return mutate(base, rng, tmp)
        data = path.read_bytes()
        path.unlink()
    return kind, bytes(data)


def _mutate_meta(base, rng):
    from gguf import GGUFValueType as V
    meta = list(base.meta)
    i = int(rng.integers(len(meta)))
    key, value, _, _ = meta[i]
    ints = [value + 1, value - 1, 2 * value] if isinstance(value, int) else []
    choices = [(0, V.UINT32, None), (1, V.UINT32, None), (2**32 - 1, V.UINT32, None),
               (2**40, V.UINT64, None), (2**27, V.UINT32, None), (-1, V.INT32, None),
               (4.0, V.FLOAT32, None), (float("nan"), V.FLOAT32, None),
               (float("inf"), V.FLOAT64, None), (True, V.BOOL, None), ("", V.STRING, None),
               ("llama", V.STRING, None), ("x" * 1000, V.STRING, None),
               ([1, 2, 3], V.ARRAY, V.INT32), ([], V.ARRAY, V.UINT8),
               ([0] * 600, V.ARRAY, V.UINT8), (["a", "b"], V.ARRAY, V.STRING),
               ([True] * 40, V.ARRAY, V.BOOL), (["x y"] * 3, V.ARRAY, V.STRING)]
    choices += [(v, V.INT64, None) for v in ints]
    if rng.random() < 0.1:
        del meta[i]
    else:
        meta[i] = (key, *_pick(rng, choices))
    return meta, base.tensors


def _mutate_tensors(base, rng):
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    tensors = list(base.tensors)
    i = int(rng.integers(len(tensors)))
    name, a, qtype = tensors[i]
    op = _pick(rng, ["drop", "norm1", "transpose", "grow", "retype", "extra_layer", "rename"])
    if op == "drop":
        del tensors[i]
    elif op == "norm1":
        tensors[i] = (name, a.reshape(-1)[:1].copy(), Q.F32)
    elif op == "transpose" and a.ndim == 2:
        tensors[i] = (name, np.ascontiguousarray(a.T), Q.F32)
    elif op == "grow":
        tensors[i] = (name, np.concatenate([a, a[:1]]), Q.F32)
    elif op == "retype":
        tensors[i] = (name, a, _pick(rng, [Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.BF16]))
    elif op == "extra_layer":
        tensors += [(n.replace("blk.1.", "blk.2."), t, q) for n, t, q in base.tensors
                    if n.startswith("blk.1.")]
    else:
        tensors[i] = (name.replace("blk.1.", "blk.7.").replace("weight", "bias"), a, qtype)
    return base.meta, tensors


def _mutate_vocab(base, rng):
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    meta = {k: [v, t, e] for k, v, t, e in base.meta}
    tokens = list(meta["tokenizer.ggml.tokens"][0])
    spm = meta["tokenizer.ggml.model"][0] == "llama"
    merges = [] if spm else list(meta["tokenizer.ggml.merges"][0])
    n = int(rng.integers(20, 600))
    op = _pick(rng, ["chain", "long", "substrings", "duplicate", "empty", "spaces", "scores",
                     "merges"])
    if op == "chain":       # a, aa, ..., a x n: every split of every token is two tokens
        tokens += ["a" * k for k in range(2, n)]
        merges += [f"{'a' * (k - 1)} a" for k in range(2, n)]
    elif op == "long":      # one token of up to a million characters
        k = _pick(rng, [100, 3000, 1 << 16, 1 << 20])
        tokens.append("b" * k)
        merges.append(f"{'b' * (k - 1)} b")
    elif op == "substrings":  # every substring (up to 24 characters) of a random text
        text = "".join(rng.choice(list("abcdeht▁"), n))
        subs = {text[i:j] for i in range(len(text))
                for j in range(i + 2, min(i + 25, len(text) + 1))}
        tokens += sorted(subs - set(tokens))
        merges += [f"{t[:1]} {t[1:]}" for t in sorted(subs)[:n]]
    elif op == "duplicate":
        tokens += tokens[-int(rng.integers(1, 10)):]
    elif op == "empty":
        tokens[int(rng.integers(len(tokens)))] = ""
    elif op == "spaces":
        tokens += ["x y", " ", "▁ ▁", "a\x00b", " " * n]
        merges += ["x  y", "  ", "a b c"]
    elif op == "scores" and spm:
        scores = list(meta["tokenizer.ggml.scores"][0])
        for _ in range(int(rng.integers(1, 20))):
            scores[int(rng.integers(len(scores)))] = _pick(rng, [float("nan"), float("inf"),
                                                                 -float("inf"), 3e38])
        meta["tokenizer.ggml.scores"][0] = scores
    else:                   # merges: a long chain, a dangling one, or many repeats
        merges += _pick(rng, [[f"{'t' * k} t" for k in range(1, n)], ["zz q"],
                              merges * int(rng.integers(2, 50))])
    extra = len(tokens) - len(meta["tokenizer.ggml.tokens"][0])
    meta["tokenizer.ggml.tokens"][0] = tokens
    meta["tokenizer.ggml.token_type"][0] = list(meta["tokenizer.ggml.token_type"][0]) + [1] * extra
    if spm:
        meta["tokenizer.ggml.scores"][0] = (list(meta["tokenizer.ggml.scores"][0])
                                            + [-float(i) for i in range(extra)])
    else:
        meta["tokenizer.ggml.merges"][0] = merges
    dim = base.tensors[0][1].shape[1]
    embd = (rng.standard_normal((len(tokens), dim)) * 0.2).astype(np.float32)
    tensors = [("token_embd.weight", embd, Q.Q8_0) if name == "token_embd.weight" else (name, a, q)
               for name, a, q in base.tensors]
    return [(k, *v) for k, v in meta.items()], tensors


# ---- one case ------------------------------------------------------------------------------
def run_case(path):
    """Run plan, load and a 2-token generate on `path`; returns the steps that succeeded.
    ValueError stops a case cleanly; any other exception propagates (a failure)."""
    from nexvk.model.model import Model
    from nexvk.model.plan import plan
    done = []
    try:
        plan(path, 64, "f16", "f16").lines()
        done.append("plan")
    except ValueError as e:
        _check_message(e)
    try:
        m = Model.load(path, ctx=32, k_type="f16", v_type="f16", backend="numpy")
        done.append("load")
        m.generate("the tin", n=2)
        done.append("generate")
    except ValueError as e:
        _check_message(e)
    return done


def _check_message(e):
    if not str(e).strip():
        raise AssertionError(f"ValueError with an empty message: {e!r}")


def _inject(what):
    """Deliberate failures for the harness's own test (--inject)."""
    if what == "raise":
        raise TypeError("injected")
    if what == "abort":
        os.abort()
    if what == "hang":
        time.sleep(3600)
    if what == "memory":
        import numpy as np
        np.ones(2**40, np.uint8)


def worker(seed, start, stop, mem_mb, timeout, inject, keep):
    """Run cases start..stop-1; stdout gets 'start I KIND' then one JSON line per case."""
    import numpy as np
    with tempfile.TemporaryDirectory(prefix="nexvk-fuzz-") as tmp:
        bases = [Base(tmp, arch) for arch in ARCHS]
        for base in bases:  # warm up imports and caches before the cap
            assert run_case(base.path) == ["plan", "load", "generate"], base.path
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * resource.getpagesize()
        cap = vm + (mem_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        for i in range(start, stop):
            rng = np.random.default_rng([seed, i])
            base = bases[int(rng.integers(len(bases)))]
            kind, data = mutate(base, rng, tmp)
            kind = f"{kind}/{base.arch}"
            path = Path(tmp) / f"case{i}.gguf"
            path.write_bytes(data)
            print(f"start {i} {kind}", flush=True)
            faulthandler.dump_traceback_later(timeout, exit=True)
            t0 = time.perf_counter()
            rec = {"i": i, "kind": kind, "bytes": len(data)}
            try:
                if inject and i == inject[1]:
                    _inject(inject[0])
                rec["done"] = run_case(path)
                rec["outcome"] = "ok"
            except BaseException as e:  # noqa: BLE001 - every other exception is a finding
                rec["outcome"] = type(e).__name__
                rec["detail"] = traceback.format_exc()[-3000:]
            faulthandler.cancel_dump_traceback_later()
            rec["seconds"] = time.perf_counter() - t0
            if keep and (rec["outcome"] != "ok" or i == keep[1]):
                Path(keep[0]).mkdir(parents=True, exist_ok=True)
                (Path(keep[0]) / path.name).write_bytes(data)
            print(json.dumps(rec), flush=True)
            path.unlink()


# ---- the campaign --------------------------------------------------------------------------
def campaign(cases, seed=0, start=0, mem_mb=1024, timeout=10.0, inject=None, keep=None,
             log=None):
    """Run cases start..start+cases-1 in worker processes; returns a summary dict with
    'failures' (records of every case that was not ok) and 'outcomes' counts."""
    t0 = time.perf_counter()
    records, nxt, stop = {}, start, start + cases
    env = {**os.environ, **_ENV, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    while nxt < stop:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--seed", str(seed),
               "--start", str(nxt), "--cases", str(stop - nxt), "--mem", str(mem_mb),
               "--timeout", str(timeout)]
        if inject:
            cmd += ["--inject", f"{inject[0]}@{inject[1]}"]
        if keep:
            cmd += ["--keep", str(keep[0]), "--replay", str(keep[1])]
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                    cwd=REPO)
            current = None
            for line in proc.stdout:
                if line.startswith("start "):
                    _, i, kind = line.split()
                    current = (int(i), kind)
                elif line.startswith("{"):
                    rec = json.loads(line)
                    records[rec["i"]] = rec
                    current = None
                    if log and rec["outcome"] != "ok":
                        log(f"case {rec['i']} ({rec['kind']}): {rec['outcome']}")
            rc = proc.wait()
            err.seek(0)
            stderr = err.read()
        if current is None:
            if rc != 0 or len(records) < stop - start:
                raise RuntimeError(f"fuzz worker exited with {rc} between cases:\n{stderr[-3000:]}")
            break
        i, kind = current  # the case that killed the worker
        hang = "Timeout" in stderr
        records[i] = {"i": i, "kind": kind, "outcome": "hang" if hang else f"crash (exit {rc})",
                      "detail": stderr[-3000:], "seconds": timeout if hang else None}
        if log:
            log(f"case {i} ({kind}): {records[i]['outcome']}")
        nxt = i + 1
    recs = [records[i] for i in sorted(records)]
    outcomes = Counter(r["outcome"] for r in recs)
    steps = Counter(s for r in recs for s in r.get("done", ()))
    slowest = max((r for r in recs if r.get("seconds") is not None),
                  key=lambda r: r["seconds"], default={"i": None, "seconds": 0.0})
    return {"cases": len(recs), "seed": seed, "seconds": time.perf_counter() - t0,
            "outcomes": dict(outcomes), "kinds": dict(Counter(r["kind"] for r in recs)),
            "steps": dict(steps), "slowest": (slowest["i"], slowest["seconds"]),
            "failures": [r for r in recs if r["outcome"] != "ok"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000, help="number of cases (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    ap.add_argument("--start", type=int, default=0, help="first case number (default 0)")
    ap.add_argument("--mem", type=int, default=1024,
                    help="MiB a worker may grow by before allocations fail (default 1024)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case (default 10)")
    ap.add_argument("--replay", type=int, default=None, metavar="I",
                    help="run only case I (with --keep, also write its file there)")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="write the file of every failing case (and of --replay) to DIR")
    ap.add_argument("--inject", default=None, metavar="WHAT@I", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    inject = None
    if args.inject:
        what, at = args.inject.split("@")
        inject = (what, int(at))
    keep = (args.keep, args.replay) if args.keep else None
    if args.worker:
        worker(args.seed, args.start, args.start + args.cases, args.mem, args.timeout, inject,
               keep)
        return 0
    start, cases = (args.replay, 1) if args.replay is not None else (args.start, args.cases)
    s = campaign(cases, args.seed, start, args.mem, args.timeout, inject, keep,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    for f in s["failures"]:
        print(f"--- case {f['i']} ({f['kind']}): {f['outcome']}\n{f.get('detail', '')}")
    print(f"{s['cases']} cases (seed {s['seed']}) in {s['seconds']:.1f} s: "
          f"outcomes {s['outcomes']}; kinds {s['kinds']}; steps passed {s['steps']}; "
          f"slowest case {s['slowest'][0]} ({s['slowest'][1]:.3f} s); "
          f"{len(s['failures'])} failures")
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
