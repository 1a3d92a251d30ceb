"""Products with weights in their GGML formats (mul_mv decode, mul_mm prefill) on the Vulkan
device against numpy's float32 product of the same shape, for the shapes of SmolLM2-135M
(Q4_1, Q8_0 tied logits) and Gemma-3 270M Q4_K_M (Q5_0, Q4_K, Q6_K, Q8_0 logits split into
two buffers on lavapipe). Random weights of each type; the device side times one recorded
dispatch sequence (weights, x and y resident), numpy times `w @ x` on dequantized weights.

Run:  pytest benchmarks/test_matmul.py --benchmark-enable --benchmark-only -p no:cacheprovider
NEXVK_BENCH_PREFILL (default 64,256) sets the prefill token counts.
NOTE: llvmpipe compiles each mul_mm (type, K) pipeline once, for ~15 s; warmup absorbs it.
"""
import os

import numpy as np
import pytest

from nexvk.kernels import ggml_types as gt, mul_mm, mul_mv

DECODE = [  # (model, what, type, rows, cols)
    ("smollm2", "q/o 576->576", "q4_1", 576, 576),
    ("smollm2", "k/v 576->192", "q4_1", 192, 576),
    ("smollm2", "gate/up 576->1536", "q4_1", 1536, 576),
    ("smollm2", "down 1536->576", "q4_1", 576, 1536),
    ("smollm2", "logits 576->49152", "q8_0", 49152, 576),
    ("gemma3", "q 640->1024", "q5_0", 1024, 640),
    ("gemma3", "k/v 640->256", "q5_0", 256, 640),
    ("gemma3", "v 640->256", "q8_0", 256, 640),
    ("gemma3", "gate/up 640->2048", "q5_0", 2048, 640),
    ("gemma3", "o 1024->640", "q4_k", 640, 1024),
    ("gemma3", "down 2048->640", "q4_k", 640, 2048),
    ("gemma3", "down 2048->640", "q6_k", 640, 2048),
    ("gemma3", "logits 640->262144", "q8_0", 262144, 640),
]
PREFILL = [s for s in DECODE if "logits" not in s[1]]
TOKENS = [int(t) for t in os.environ.get("NEXVK_BENCH_PREFILL", "64,256").split(",") if t.strip()]


def _ids(shapes):
    return [f"{m}-{w.split()[0]}-{t}-{r}x{c}" for m, w, t, r, c in shapes]


@pytest.fixture(scope="module")
def dev():
    from nexvk.device.manager import get_device
    return get_device()


def _setup(backend, kind, rows, cols, T, request):
    """A callable running one product of this shape on `backend` (conftest parametrizes it)."""
    raw = gt.random_bytes(kind, rows, cols)
    x = np.random.default_rng(1).standard_normal((T, cols)).astype(np.float32)
    if backend == "numpy":
        w = gt.dequantize(kind, raw, rows, cols)
        return (lambda: w @ x[0]) if T == 1 else (lambda: x @ w.T)
    from nexvk.kernels.oneshot import Scratch
    from nexvk.kernels.weights import DeviceWeight
    d = request.getfixturevalue("dev")
    dw = DeviceWeight.from_bytes(d, "bench/w", kind, raw, rows, cols)
    s = Scratch(d, "bench")
    request.addfinalizer(lambda: (s.__exit__(), d.release("bench/")))
    xb, yb, dyn = s.buf("x", x), s.buf("y", size=T * rows), s.dyn(T)
    d.run([xb, dyn])
    ds = mul_mv.dispatches(d, dw, xb, yb, dyn) if T == 1 else mul_mm.dispatches(d, dw, xb, yb, dyn, T)
    return lambda: d.run((), ds)


@pytest.mark.parametrize("model,what,kind,rows,cols", DECODE, ids=_ids(DECODE))
def test_mul_mv(benchmark, request, backend, model, what, kind, rows, cols):
    fn = _setup(backend, kind, rows, cols, 1, request)
    benchmark.group = f"mul_mv {model} {what} {kind}"
    benchmark.pedantic(fn, rounds=7, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("model,what,kind,rows,cols", PREFILL, ids=_ids(PREFILL))
def test_mul_mm(benchmark, request, backend, model, what, kind, rows, cols, T):
    fn = _setup(backend, kind, rows, cols, T, request)
    benchmark.group = f"mul_mm T={T} {model} {what} {kind}"
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
