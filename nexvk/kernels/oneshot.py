"""Numpy in, numpy out around the recordable kernels, for tests, `nexvk validate` and the
benchmarks: host-visible scratch buffers under one name prefix, freed on exit."""
import itertools

import numpy as np

from nexvk.kernels import dyn

_ids = itertools.count()


class Scratch:
    def __init__(self, dev, tag="oneshot"):
        self.dev, self.tag, self.bufs = dev, f"{tag}{next(_ids)}/", []

    def buf(self, name, data=None, size=None, dtype=np.float32):
        """A 'device' buffer (with host view) of `size` words, its start filled with data."""
        if data is not None:
            data = np.ascontiguousarray(data).reshape(-1)
            size = max(size or 0, data.size)
        b = self.dev.pool.get(self.tag + name, size, dtype, kind="device")
        if data is not None:
            b.host[:data.size] = data
        self.bufs.append(b)
        return b

    def dyn(self, n_tokens, pos0=0, ids=()):
        b = self.buf("dyn", size=dyn.size(max(n_tokens, len(ids))), dtype=np.uint32)
        dyn.fill(b.host, n_tokens, pos0, ids)
        return b

    def run(self, dispatches, outputs):
        """Upload every buffer, dispatch, download `outputs`; returns copies of their views."""
        self.dev.run(self.bufs, dispatches, outputs)
        return [o.host.copy() for o in outputs]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.dev.release(self.tag)
