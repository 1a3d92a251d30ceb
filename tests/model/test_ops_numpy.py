"""The numpy Ops, each against its definition written out here: RoPE in both pair layouts,
RMSNorm per row and per head, the two GLU activations, linear with a fused residual, and the
row semantics the device Ops share (T rows per step, one for a last_row handle)."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from nexvk.model.ops_numpy import NumpyOps


def ops_at(pos, T, capacity=128):
    ops = NumpyOps(SimpleNamespace(capacity=capacity))
    ops.set_step(ops.alloc((T,), "int32"), np.zeros(T, np.int64), pos)
    return ops


@pytest.mark.parametrize("neox", [False, True])
def test_rope_is_a_relative_rotation(rng, neox):
    """Norms are kept, position 0 is the identity, <q_m, k_n> depends only on m - n."""
    hd = 64
    q = rng.standard_normal((1, 2 * hd)).astype(np.float32)  # two heads
    k = rng.standard_normal((1, 2 * hd)).astype(np.float32)

    def at(x, p):
        y = x.copy()
        ops_at(p, 1).rope(y, hd, hd, 10000.0, neox)
        return y

    np.testing.assert_array_equal(at(q, 0), q)
    np.testing.assert_allclose(np.linalg.norm(at(q, 37)), np.linalg.norm(q), rtol=1e-5)
    d1 = float(np.sum(at(q, 10) * at(k, 3)))
    d2 = float(np.sum(at(q, 50) * at(k, 43)))
    assert abs(d1 - d2) < 1e-4 * abs(d1) + 1e-4
    # position 1 rotates pair 0 by 1 rad: dims (0, 1) when adjacent, (0, hd/2) in NeoX
    e0 = np.zeros((1, 2 * hd), np.float32)
    e0[0, hd] = 1  # second head's dim 0
    r = at(e0, 1)[0, hd:]
    partner = hd // 2 if neox else 1
    np.testing.assert_allclose(r[[0, partner]], [np.cos(1.0), np.sin(1.0)], rtol=1e-6)
    assert np.count_nonzero(r) == 2 and not at(e0, 1)[0, :hd].any()


def test_rope_rows_take_consecutive_positions(rng):
    hd = 32
    x = rng.standard_normal((3, hd)).astype(np.float32)
    both = x.copy()
    ops_at(5, 3).rope(both, hd, 16, 1e6, True)  # partial rotation: dims 16.. untouched
    for i in range(3):
        one = x[i:i + 1].copy()
        ops_at(5 + i, 1).rope(one, hd, 16, 1e6, True)
        np.testing.assert_array_equal(both[i], one[0])
    np.testing.assert_array_equal(both[:, 16:], x[:, 16:])


def test_rms_norm_per_row_and_per_head(rng):
    x = rng.standard_normal((4, 12)).astype(np.float32)
    ops = ops_at(0, 3)  # T = 3: row 3 is beyond the step and stays as it was
    out = np.zeros_like(x)
    w = rng.standard_normal(12).astype(np.float32)
    ops.rms_norm(x, w, 1e-6, out)
    want = x[:3] / np.sqrt((x[:3] ** 2).mean(1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(out[:3], want, rtol=1e-5)
    assert not out[3].any()
    g = rng.standard_normal(4).astype(np.float32)
    y = x.copy()
    ops.rms_norm(y, g, 1e-6, y, group=4)  # three heads of 4, in place
    heads = x[:3].reshape(3, 3, 4)
    want = heads / np.sqrt((heads ** 2).mean(2, keepdims=True) + 1e-6) * g
    np.testing.assert_allclose(y[:3], want.reshape(3, 12), rtol=1e-5)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_glu(rng, act):
    gate = (3 * rng.standard_normal((2, 50))).astype(np.float32)
    up = rng.standard_normal((2, 50)).astype(np.float32)
    if act == "silu":
        f = lambda g: g / (1 + math.exp(-g))  # noqa: E731
    else:
        f = lambda g: 0.5 * g * (1 + math.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))  # noqa: E731
    want = np.vectorize(f)(gate.astype(np.float64)) * up
    ops_at(0, 2).glu(gate, up, gate, act)  # out aliases gate
    np.testing.assert_allclose(gate, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown activation"):
        ops_at(0, 2).glu(gate, up, gate, "relu")


@pytest.mark.parametrize("T", [1, 5, 12])  # one row, a few (in blocks of w), many
def test_linear_and_fused_residual(rng, T, monkeypatch):
    from nexvk.model import ops_numpy
    monkeypatch.setattr(ops_numpy, "_BLOCK_BYTES", 5 * 16 * 4)  # blocks of 5 rows of w: 5+5+5+5+4
    x = rng.standard_normal((16, 16)).astype(np.float32)
    w = rng.standard_normal((24, 16)).astype(np.float32)
    before = rng.standard_normal((16, 24)).astype(np.float32)
    out, res = before.copy(), before.copy()
    ops = ops_at(0, T)
    ops.linear(x, w, out)
    ops.linear(x, w, res, accumulate=True)
    want = x[:T].astype(np.float64) @ w.T
    np.testing.assert_allclose(out[:T], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res[:T], before[:T] + want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[T:], before[T:])
    np.testing.assert_array_equal(res[T:], before[T:])


def test_embed_last_row_and_read(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    ops = NumpyOps(SimpleNamespace(capacity=16))
    tokens, x = ops.alloc((6,), "int32"), ops.alloc((6, 4))
    ops.set_step(tokens, np.array([3, 1, 7]), 0)
    ops.embed(table, tokens, x, scale=2.0)
    np.testing.assert_array_equal(ops.read(x), 2.0 * table[[3, 1, 7]])
    last, logits = ops.last_row(x), ops.alloc((6, 3))
    ops.linear(last, np.eye(3, 4, dtype=np.float32), logits)  # one row in, one row out
    np.testing.assert_array_equal(ops.read(logits, 1), 2.0 * table[[7], :3])
    assert not logits[1:].any()
