"""The Dyn buffer: the per-step words every token-step kernel reads, declared here once.

A step is recorded once and replayed with new words: T (tokens in this step), POS0 (position
of its first token), SCALE and SPARSE_V (attention's score scale and sparse-V threshold, as
float32 bits), then the step's token ids, one word each. tools/build_shaders.py passes WORDS
to every shader as DYN_<NAME> defines (shaders/include/dyn_head.glsl reads them), so Python
and GLSL cannot disagree on an index.
"""
import numpy as np

WORDS = {"T": 0, "POS0": 1, "SCALE": 2, "SPARSE_V": 3, "IDS": 4}
T, POS0, SCALE, SPARSE_V, IDS = WORDS.values()


def size(max_tokens):
    """Words of a Dyn buffer for steps of up to max_tokens token ids."""
    return IDS + max_tokens


def defines():
    """{"DYN_T": 0, ...}: the shaders' names for the words."""
    return {f"DYN_{name}": i for name, i in WORDS.items()}


def fill(words, n_tokens, pos0, ids=(), scale=None, sparse_v=None):
    """Write a step's T, pos0, token ids and (when given) attention's scale and sparse-V
    threshold into `words` (a uint32 host view)."""
    ids = np.asarray(ids, np.uint32).reshape(-1)
    if n_tokens < 1 or len(ids) > len(words) - IDS:
        raise ValueError(f"a step of {n_tokens} token(s) with {len(ids)} id(s) does not fit "
                         f"a Dyn buffer of {len(words)} words")
    words[T], words[POS0] = n_tokens, pos0
    floats = words[SCALE:SPARSE_V + 1].view(np.float32)
    if scale is not None:
        floats[0] = scale
    if sparse_v is not None:
        floats[1] = sparse_v
    words[IDS:IDS + len(ids)] = ids
    return words
