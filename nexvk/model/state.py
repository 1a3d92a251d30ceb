"""Prompt caches: a model's processed prompt (its compressed KV cache and token ids) in a
file, so that a later prompt starting with the same tokens prefills only the rest.

The file is a numpy .npz (a zip of .npy arrays, written uncompressed: codes do not compress)
holding the arrays of KVCache.state(), the token ids, and a JSON header: the model's identity
(a sha256 of the GGUF's metadata and tensor table plus the first bytes of every tensor, see
`model_identity`), the cache format (formats, sinks, key transform settings, codec seed:
everything that decides what the codes mean), and a sha256 over the header and every array. A file from
another model or cache format is refused with both named; a truncated or altered one fails
the zip's own checks or the checksum and is never loaded.
"""
import functools
import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

MAGIC, VERSION = "nexvk-prompt-cache", 1
_TENSOR_HEAD = 4096  # bytes of each tensor's data that go into the model identity


def model_identity(path):
    """sha256 (hex) of the GGUF's bytes before its tensor data (every metadata key and the
    tensor table) and of the first 4 KiB of each tensor: any change of weights, vocabulary
    or settings changes it, in milliseconds for any file size (a fine-tune that left the
    first 4 KiB of every tensor untouched would not). Remembered per path, size and mtime."""
    st = os.stat(path)
    return _identity_of(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _identity_of(path, size, mtime_ns):
    from nexvk.model.gguf import open_gguf
    g = open_gguf(path)
    h = hashlib.sha256()
    with open(g.path, "rb") as f:
        h.update(f.read(g.data_offset))
        for t in sorted(g.tensors.values(), key=lambda t: t.data_offset):
            f.seek(t.data_offset)
            h.update(f.read(min(t.n_bytes, _TENSOR_HEAD)))
    return h.hexdigest()


def cache_format(model):
    """What decides the meaning of the cached codes, as plain JSON values."""
    c = model.cache
    t = c.transform
    return {"n_layers": c.n_layers, "n_kv_heads": c.n_kv_heads, "head_dim": c.head_dim,
            "k_types": list(c.spec.k_types), "v_types": list(c.spec.v_types),
            "sinks": c.layer_sinks, "windows": [int(w or 0) for w in model.arch.window],
            "transform": [bool(a) for a in t.active], "scaled": bool(t.scaled),
            "fit_mean": bool(t.fit_mean), "fit_scale": bool(t.fit_scale), "seed": model.seed}


def _checksum(header, arrays):
    """sha256 over the header (but its own checksum) and every array's name, type and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "sha256"},
                                  sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _identity(model):
    if model.source is None:
        raise ValueError("prompt caches need a model loaded from a file (Model.load)")
    return model_identity(model.source)


def save(model, path, meta=None):
    """Write the model's cached tokens to path (atomically: a temporary file, then renamed),
    with `meta` (any JSON value, e.g. a chat's messages) in the header. Returns the file's
    size in bytes."""
    if not model.tokens:
        raise ValueError("nothing to save: the cache holds no tokens")
    arrays = model.cache.state()
    arrays["tokens"] = np.array(model.tokens, np.int32)
    header = {"magic": MAGIC, "version": VERSION, "model": _identity(model),
              "model_name": Path(model.source).name, "cache": cache_format(model),
              "tokens": len(model.tokens), "meta": meta}
    header["sha256"] = _checksum(header, arrays)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def read(path):
    """(header dict, arrays) of a prompt-cache file, checked whole: ValueError when it is
    not one, is truncated, or fails its checksum."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt cache not found: {path}")
    bad = f"{path} is not a nexvk prompt cache, or is truncated or corrupt"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{bad} ({e})") from None
    try:
        header = json.loads(arrays.pop("header").tobytes())
        ok = header.get("magic") == MAGIC
    except (KeyError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ValueError(bad)
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: prompt cache version {header.get('version')}, this nexvk "
                         f"reads version {VERSION}")
    if header.get("sha256") != _checksum(header, arrays):
        raise ValueError(f"{path}: checksum mismatch, the file is corrupt; not loaded")
    return header, arrays


def load(model, path):
    """Restore a file written by save() into the model (ValueError when it comes from
    another model or cache format; the model's cache is unchanged then). Returns its meta."""
    header, arrays = read(path)
    if header["model"] != _identity(model):
        raise ValueError(f"{path} was saved by another model ({header.get('model_name')}), "
                         f"not {Path(model.source).name}")
    want = cache_format(model)
    if header["cache"] != want:
        diff = ", ".join(f"{k}: file {header['cache'].get(k)} vs {want[k]}" for k in want
                         if header["cache"].get(k) != want[k])
        raise ValueError(f"{path} holds a cache of another format ({diff}); load the model "
                         "with the same cache flags as when it was saved")
    tokens = arrays.pop("tokens")
    if tokens.ndim != 1 or not len(tokens) or len(tokens) > model.ctx:
        raise ValueError(f"{path} holds {tokens.size} tokens; this model's context is "
                         f"{model.ctx} (raise -c)")
    if tokens.min() < 0 or tokens.max() >= model.arch.vocab_size:
        raise ValueError(f"{path}: token ids outside the vocabulary")
    lengths = arrays.get("lengths")
    if not isinstance(lengths, np.ndarray) or (lengths != len(tokens)).any():
        raise ValueError(f"{path}: its layers do not all hold its {len(tokens)} tokens")
    model.cache.restore(arrays)
    model.tokens, model.pos = tokens.tolist(), len(tokens)
    return header.get("meta")


def prefill_cached(model, ids, path):
    """The prompt-cache flag (--prompt-cache, as llama.cpp's): the last token's logits of
    prompt `ids`, starting from the cache in `path` when that file exists (only the tokens
    after those it shares with the prompt are prefilled), and writing the prompt's cache
    there when the file did not exist or held other tokens. Sets model.stats["reused_tokens"]."""
    path = Path(path)
    saved = None
    if path.exists():
        load(model, path)
        saved = list(model.tokens)
    logits = model.prefill(ids, reuse=saved is not None)
    if saved != model.tokens:
        save(model, path)
    return logits
