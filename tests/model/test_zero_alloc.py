"""Zero-alloc prefill and decode with the whole step on the device: after the model is loaded,
a 512-token prefill and 256 decode steps create no Kompute object (buffer, pipeline, recorded
sequence), allocate no device memory, submit exactly one command sequence per step, and keep
Python's traced memory flat."""
import gc
import tracemalloc

import numpy as np


def test_prefill_512_then_256_decode_steps_allocate_nothing(device, vk_model):
    m = vk_model.with_cache("turbo3", "turbo3", ctx=1024)  # hardened: fits on the device too
    pool = device.pool
    gc.collect()  # objects of earlier tests on the shared device are released now, not mid-count
    before = (pool.allocations, pool.nbytes, device.n_pipelines, device.n_sequences)
    ids = np.arange(1000, 1512)
    subs = device.submissions
    logits = m.forward(ids, 0, last_only=True)
    assert device.submissions == subs + 1          # one prefill chunk: one submission
    tok = int(np.argmax(logits[-1]))
    gc.collect()
    tracemalloc.start()
    subs = device.submissions
    for step in range(256):
        tok = int(np.argmax(m.forward([tok], m.pos)[-1]))
        assert device.submissions == subs + step + 1
        if step == 15:
            gc.collect()
            early = tracemalloc.get_traced_memory()[0]
    gc.collect()
    late = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert m.pos == 512 + 256 and m.cache.length(0) == m.pos
    assert (pool.allocations, pool.nbytes, device.n_pipelines, device.n_sequences) == before
    assert late - early < 64 * 1024, (early, late)
