"""A store's tokens as arrays in position order (KVCache.state / restore, prompt caches).

Every store lays a layer out the same way when read through `_parts` (the numpy store's
arrays: codes and scales by slot, float16 sinks), so one state serves every backend and any
capacity or ring size: a state holds the rows of positions sinks..n-1 that the layer keeps,
oldest first, and the sink rows.
"""
import numpy as np


class StateRows:
    """state / check_state / restore of one layer for a store with `_parts(layer, read)`
    (its stored arrays as the numpy store lays them out; read=False: zeros of those shapes
    to fill) and `_write(layer, parts)` (store them)."""

    def _positions(self, layer, n, ring):
        """Positions of the code rows kept for n tokens in a ring of `ring` slots (the last
        ring ones from position sinks on), and their slots."""
        S = self.c.sinks[layer]
        pos = np.arange(max(S, n - ring), max(S, n))
        return pos, (pos - S) % ring if ring else pos

    def state(self, layer, n):
        """The layer's rows of positions < n in position order (see KVCache.state)."""
        S = self.c.sinks[layer]
        out = {}
        for name, a in self._parts(layer):
            if name.startswith("sink"):
                out[name] = a[:min(n, S)].copy()
            else:
                out[name] = a[self._positions(layer, n, len(a))[1]]
        return out

    def check_state(self, layer, n, state):
        """The rows restore() writes for n tokens from a KVCache.state(), checked first."""
        S = self.c.sinks[layer]
        rows = {}
        for name, a in self._parts(layer, read=False):
            key = f"{name}{layer}"
            got = state.get(key)
            if name.startswith("sink"):
                rows[name] = state_array(state, key, (min(n, S),) + a.shape[1:], a.dtype)
                continue
            pos, _ = self._positions(layer, n, len(a))
            m = got.shape[0] if isinstance(got, np.ndarray) and got.ndim else -1
            if not len(pos) <= m <= n - min(n, S):  # the saved rows must reach back as far
                raise ValueError(f"saved cache part {key!r} holds {m} positions; this cache "
                                 f"needs the last {len(pos)} of {n}")
            rows[name] = state_array(state, key, (m,) + a.shape[1:], a.dtype)[m - len(pos):]
        return rows

    def restore(self, layer, n, rows):
        parts = self._parts(layer, read=False)
        for name, a in parts:
            if name.startswith("sink"):
                a[:len(rows[name])] = rows[name]
            else:
                a[self._positions(layer, n, len(a))[1]] = rows[name]
        self._write(layer, parts)


def state_array(state, name, shape, dtype):
    """state[name] checked to have this shape and dtype (ValueError naming it otherwise)."""
    a = state.get(name) if isinstance(state, dict) else None
    if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype != dtype:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else "missing"
        raise ValueError(f"saved cache part {name!r} must be {np.dtype(dtype)} "
                         f"{tuple(shape)}, got {got}")
    return a
