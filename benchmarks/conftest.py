"""pytest-benchmark suite for nexvk (kept apart from the unit tests in tests/).

Run:  pytest benchmarks --benchmark-enable --benchmark-only -p no:cacheprovider
(pyproject's addopts has --benchmark-skip for the unit suite; --benchmark-enable overrides it.)

Sizes come from the environment so a GPU run can go bigger:
  NEXVK_BENCH_VECTORS  codec vectors per call (default 65536; `nexvk bench` uses 2^18)
  NEXVK_BENCH_CTX      comma-separated attention contexts (default 1024,4096)
  NEXVK_BENCH_ROUNDS   timed rounds per case (default 3)
The measured code is nexvk.bench's; this file only parametrizes it.
"""
import os

import pytest

import nexvk
from nexvk import bench

VECTORS = int(os.environ.get("NEXVK_BENCH_VECTORS", 1 << 16))
CONTEXTS = [int(c) for c in os.environ.get("NEXVK_BENCH_CTX", "1024,4096").split(",") if c.strip()]
ROUNDS = int(os.environ.get("NEXVK_BENCH_ROUNDS", 3))


@pytest.fixture(scope="session")
def rounds():
    return ROUNDS


def pytest_generate_tests(metafunc):
    """Parametrize `backend` (vulkan skipped, with the reason, only when there is no device),
    `ctx` (NEXVK_BENCH_CTX) and `vectors_n` for every benchmark that asks for them."""
    if "backend" in metafunc.fixturenames:
        no_dev = pytest.mark.skipif(not nexvk.devices(), reason="no Vulkan device (nexvk.devices() is empty)")
        metafunc.parametrize("backend", ["numpy", pytest.param("vulkan", marks=no_dev)])
    if "ctx" in metafunc.fixturenames:
        metafunc.parametrize("ctx", CONTEXTS)


@pytest.fixture(scope="session")
def n_vectors():
    return VECTORS


@pytest.fixture(scope="session")
def vectors():
    return bench.gaussian(VECTORS, 128)


@pytest.fixture(scope="session")
def attention_data():
    """K/V and peaked query per (shape, ctx), built once and shared by every format/backend."""
    cache = {}

    def get(shape, ctx):
        if (shape, ctx) not in cache:
            k, v = bench.kv_data(shape, ctx)
            cache[(shape, ctx)] = ((k, v), bench.peaked_queries(k, bench.SHAPES[shape][0]))
        return cache[(shape, ctx)]
    return get
