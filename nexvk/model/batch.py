"""Decode steps of several sequences in one forward: every weight read once for all of them.

A sequence is a Model from `Model.with_cache` (the weights shared, its own compressed cache
and position). `Batch(model, n)` holds the Ops and State of a step of up to n rows, and
`step(seqs, tokens)` runs one next token per sequence, each at its own position against its
own cache (NumpyOps.set_segments), giving every sequence the logits it would get alone.
Only NumpyOps steps several sequences at once (its rope and attention read `positions` and
`segments`); with any other Ops each sequence runs its own step (same results, no shared
weight read). NOTE: the vulkan step's dynamic words hold one start position and one cache.
"""
import numpy as np

from nexvk.model.forward import State, forward
from nexvk.model.ops_numpy import NumpyOps


class Batch:
    def __init__(self, model, n):
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"a batch needs at least one row, got {n!r}")
        self.model, self.n = model, n
        self.ops = self.state = None
        if type(model.ops) is NumpyOps:  # a derived Ops may read only `pos` (one segment)
            self.ops = NumpyOps(model.cache, model.sparse_v)
            self.state = State(model.arch, n, self.ops)

    def step(self, seqs, tokens):
        """Append tokens[i] to seqs[i] at its position; logits (len(seqs), vocab) float32,
        row i for sequence i (a view: copy to keep). A failed step leaves every cache as it
        was."""
        seqs = list(seqs)
        if len(tokens) != len(seqs) or not 1 <= len(seqs) <= self.n:
            raise ValueError(f"a batch step takes one token for each of 1..{self.n} sequences, "
                             f"got {len(tokens)} tokens for {len(seqs)} sequences")
        if len({id(s.cache) for s in seqs}) != len(seqs):
            raise ValueError("each sequence of a batch step needs its own cache")
        for s in seqs:
            if s.w is not self.model.w or s.ctx != self.model.ctx:
                raise ValueError("every sequence of a batch must share the batch model's "
                                 "weights and context (make them with Model.with_cache)")
        ids = np.concatenate([s.check_step([t], s.pos) for s, t in zip(seqs, tokens)])
        if self.ops is None:
            return np.concatenate([s.forward(ids[i:i + 1], s.pos) for i, s in enumerate(seqs)])
        self.ops.set_segments(self.state.tokens, ids, [(s.cache, s.pos, 1) for s in seqs])
        m = self.model
        try:
            self.ops.execute(None, lambda: forward(self.ops, m.arch, m.w, self.state, "all"))
        except BaseException:  # no sequence keeps a token of a failed step
            for s in seqs:
                s.cache.truncate(s.pos)
            raise
        for s in seqs:
            s.pos += 1
        return self.ops.read(self.state.logits)
