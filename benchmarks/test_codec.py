"""Codec encode / decode throughput per format x backend (head_dim 128)."""
import pytest

import nexvk


@pytest.mark.parametrize("fmt", nexvk.FORMATS)
@pytest.mark.parametrize("op", ["encode", "decode"])
def test_codec(benchmark, op, fmt, backend, vectors, n_vectors, rounds):
    c = nexvk.codec(fmt, 128, backend=backend)
    c.decode(c.encode(vectors[:256]))  # build pipelines outside the timing
    if op == "encode":
        fn, arg = c.encode, vectors
    else:
        fn, arg = c.decode, c.encode(vectors)
    benchmark.group = f"codec-{op}"
    benchmark.extra_info.update(vectors=n_vectors, head_dim=128)
    benchmark.pedantic(fn, args=(arg,), rounds=rounds, iterations=1, warmup_rounds=0)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["vectors_per_s"] = n_vectors / benchmark.stats.stats.median
