"""Zero-alloc prefill and decode: after the model and cache are loaded, a 512-token prefill
and 256 decode steps make no device allocation, and the activations stay in the State's
preallocated buffers (no growth of Python's traced memory)."""
import gc
import tracemalloc

import numpy as np


def test_prefill_512_then_256_decode_steps_allocate_nothing(device, model):
    m = model.with_cache("turbo3", "turbo3", ctx=1024, backend="vulkan", device=device,
                         cache_opts={"plain": True})  # the device runs the plain cache only
    ids = np.arange(1000, 1512)
    m.forward(ids[:3], 0)          # warm-up: record the prefill and decode sequences once
    m.forward(ids[3:4], 3)
    m.reset()
    pool = device.pool
    before = (pool.allocations, pool.nbytes, device.n_pipelines)
    buffers = {name: (id(a), a.ctypes.data) for name, a in vars(m.state).items()
               if isinstance(a, np.ndarray)}
    logits = m.forward(ids, 0, last_only=True)
    tok = int(np.argmax(logits[-1]))
    gc.collect()
    tracemalloc.start()
    for step in range(256):
        tok = int(np.argmax(m.forward([tok], m.pos)[-1]))
        if step == 15:
            gc.collect()
            early = tracemalloc.get_traced_memory()[0]
    gc.collect()
    late = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert m.pos == 512 + 256
    assert (pool.allocations, pool.nbytes, device.n_pipelines) == before
    assert buffers == {name: (id(a), a.ctypes.data) for name, a in vars(m.state).items()
                       if isinstance(a, np.ndarray)}
    assert late - early < 64 * 1024, (early, late)
