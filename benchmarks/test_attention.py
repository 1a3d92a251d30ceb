"""Decode attention (one query token, one layer) per shape x format x ctx x backend x sparse V."""
import pytest

from nexvk import bench


@pytest.mark.parametrize("sparse", [0.0, bench.SPARSE_V], ids=["dense", "sparseV"])
@pytest.mark.parametrize("fmt", bench.ATTN_FORMATS)
@pytest.mark.parametrize("shape", list(bench.SHAPES))
def test_attention(benchmark, shape, fmt, ctx, sparse, backend, attention_data, rounds):
    kv, q = attention_data(shape, ctx)
    cache = bench.attention_cache(shape, fmt, ctx, backend, kv=kv)
    benchmark.group = f"attention-{shape}-{ctx}"
    benchmark.pedantic(cache.attention, args=(0, q), kwargs={"sparse_v": sparse or None},
                       rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["skip_rate"] = cache.stats["skip_rate"]
