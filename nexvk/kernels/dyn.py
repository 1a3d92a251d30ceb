"""The Dyn buffer: the per-step words every token-step kernel reads (mirror of
shaders/include/dyn_head.glsl). A step is recorded once and replayed with new words here."""
import numpy as np

T, POS0, IDS = 0, 1, 4  # words 2, 3 belong to attention (scale, sparse-V threshold)


def size(max_tokens):
    """Words of a Dyn buffer for steps of up to max_tokens tokens."""
    return IDS + max_tokens


def fill(words, n_tokens, pos0, ids=()):
    """Write a step's T, pos0 and token ids into `words` (a uint32 host view)."""
    ids = np.asarray(ids, np.uint32).reshape(-1)
    if n_tokens < 1 or len(ids) > len(words) - IDS:
        raise ValueError(f"a step of {n_tokens} token(s) with {len(ids)} id(s) does not fit "
                         f"a Dyn buffer of {len(words)} words")
    words[T], words[POS0] = n_tokens, pos0
    words[IDS:IDS + len(ids)] = ids
    return words
