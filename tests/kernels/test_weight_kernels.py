"""mul_mv, mul_mm and get_rows on the device against their numpy twins (gguf's dequantizer,
then an fp32 product), for every weight type, on both code paths of the tuning table (the GPU
path runs on lavapipe too), with odd sizes: rows and T off the workgroup and tile sizes.
NOTE: llvmpipe needs 15+ s to compile a production-size mul_mm tile, so the per-type tests use
small tiles (same code path, other spec constants) and one test runs the table's own rows."""
import numpy as np
import pytest

from nexvk.kernels import get_rows, ggml_types as gt, mul_mm, mul_mv, tuning
from nexvk.kernels.weights import DeviceWeight

U2 = 2.0 ** -48                  # (fp32 unit roundoff)^2


def nmse(got, want):
    assert np.isfinite(got).all()
    return float(((got - want) ** 2).sum() / max((want ** 2).sum(), 1e-30))


def _weight(dev, kind, rows, cols, seed=0, **kw):
    raw = gt.random_bytes(kind, rows, cols, seed)
    return gt.dequantize(kind, raw, rows, cols), DeviceWeight.from_bytes(
        dev, f"test/{kind}/{rows}x{cols}/{kw.get('max_rows')}", kind, raw, rows, cols, **kw)


@pytest.fixture
def weights(device):
    yield lambda *a, **kw: _weight(device, *a, **kw)
    device.release("test/")


SMALL = {  # both code paths with tiles that compile in about a second
    "cpu": ({"WG": 8, "NR": 2, "TPR": 1}, {"WG": 8, "NR": 2, "TT": 4, "SHX": 0}),
    "gpu": ({"WG": 64, "NR": 2, "TPR": 16}, {"WG": 16, "NR": 1, "TT": 4, "SHX": 1}),
}


def _products(device, weights, kind, mv, mm):
    cols = 512 if gt.get(kind).block == 256 else 160
    W, dw = weights(kind, 37, cols)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((11, cols)).astype(np.float32)
    y0 = rng.standard_normal((11, 37)).astype(np.float32)
    bound = 64 * cols * U2
    assert nmse(mul_mv.run(device, dw, x[:1], **mv), mul_mv.ref(W, x)) < bound
    assert nmse(mul_mv.run(device, dw, x, y=y0[0], last=True, **mv),
                mul_mv.ref(W, x, y=y0[0], last_row=10)) < bound
    assert nmse(mul_mm.run(device, dw, x, **mm), mul_mm.ref(W, x)) < bound
    assert nmse(mul_mm.run(device, dw, x[:5], y=y0[:5], **mm), mul_mm.ref(W, x[:5], y=y0[:5])) < bound


@pytest.mark.parametrize("path", ["cpu", "gpu"])
@pytest.mark.parametrize("kind", list(gt.TYPES))
def test_products_match_numpy(device, weights, kind, path):
    _products(device, weights, kind, *SMALL[path])


@pytest.mark.parametrize("row", ["cpu", "gpu"])
def test_the_tuning_table_rows_match_numpy(device, weights, row):
    """The table's own spec constants (the GPU row's 32-token mul_mm tile would take lavapipe
    over a minute to compile: its code path is covered above)."""
    mm = tuning.TABLE[row]["mul_mm"] if row == "cpu" else SMALL["gpu"][1]
    _products(device, weights, "q4_1", tuning.TABLE[row]["mul_mv"], mm)


@pytest.mark.parametrize("kind", list(gt.TYPES))
def test_get_rows_matches_numpy(device, weights, kind):
    cols = 512 if gt.get(kind).block == 256 else 160
    W, dw = weights(kind, 37, cols)
    ids = [36, 0, 5, 5, 17]
    got = get_rows.run(device, dw, ids, scale=3.0)
    assert nmse(got, get_rows.ref(W, ids, 3.0)) < 64 * U2


@pytest.mark.parametrize("kind", ["q8_0", "q4_k"])
def test_a_weight_split_into_parts_reads_as_one(device, weights, kind):
    cols = 512 if kind == "q4_k" else 96
    W, dw = weights(kind, 45, cols, max_rows=16)
    assert [(p.row0, p.rows) for p in dw.parts] == [(0, 16), (16, 16), (32, 13)]
    x = np.random.default_rng(2).standard_normal((9, cols)).astype(np.float32)
    mv, mm = SMALL["cpu"]
    assert nmse(mul_mv.run(device, dw, x, **mv), mul_mv.ref(W, x)) < 64 * cols * U2
    assert nmse(mul_mm.run(device, dw, x, **mm), mul_mm.ref(W, x)) < 64 * cols * U2
    ids = [44, 0, 15, 16, 31, 32]
    assert nmse(get_rows.run(device, dw, ids), get_rows.ref(W, ids)) < 64 * U2


def test_the_real_tensors_multiply_like_numpy(device, smollm):
    """SmolLM2's Q4_1 down projection and a slice of its Q8_0 embedding, read from the file."""
    for name, rows in [("blk.0.ffn_down.weight", None), ("token_embd.weight", 300)]:
        kind, r, cols, off, _ = smollm.info[name]
        rows = rows or r
        dw = DeviceWeight.from_file(device, f"test/{name}", smollm.path, off, kind, rows, cols)
        W = gt.dequantize(kind, smollm.raw(name, rows), rows, cols)
        x = np.random.default_rng(3).standard_normal((1, cols)).astype(np.float32)
        assert nmse(mul_mv.run(device, dw, x, **SMALL["cpu"][0]), mul_mv.ref(W, x)) < 64 * cols * U2
    device.release("test/")


def test_bad_arguments_fail_before_the_device(device, weights):
    W, dw = weights("q4_1", 8, 64)
    s = device.pool.get("test/small", 10, np.float32, kind="device")
    with pytest.raises(ValueError, match="mul_mv x"):
        mul_mv.dispatches(device, dw, s, s, s)
    with pytest.raises(ValueError, match="power of two"):
        tuning.get(device, "mul_mv", TPR=3)
    with pytest.raises(ValueError, match="token ids"):
        get_rows.run(device, dw, [8])
