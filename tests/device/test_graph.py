"""Graphs: one submission per run, barriers exactly where a dispatch depends on an earlier one,
and synchronization validation that really reports a missing barrier."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nexvk.device import layers, spirv
from nexvk.kernels import layout
from nexvk.quant.formats import make

IN_CI = os.environ.get("CI") == "true"


def test_shader_access_comes_from_spirv():
    # quantize.comp: x, tab, dyn readonly; kv read-write. dequantize.comp: y writeonly.
    assert spirv.access("quantize") == {0: (True, False), 1: (True, True), 2: (True, False),
                                        3: (True, False)}
    assert spirv.access("dequantize")[1] == (False, True)


def _codec_pipes(dev, tag, fmt, n):
    pool, d = dev.pool, fmt.head_dim
    x = [pool.get(f"{tag}x{i}", n * d, np.float32, kind="device") for i in range(2)]
    kv = [pool.get(f"{tag}kv{i}", layout.region_words(fmt, n), kind="device") for i in range(2)]
    y = pool.get(tag + "y", n * d, np.float32, kind="device")
    tab = pool.get(tag + "tab", layout.TAB_SIGNS + d, np.float32, kind="device")
    dyn = pool.get(tag + "dyn", 2, np.uint32, kind="device")
    tab.host[:] = layout.table(fmt)
    dyn.host[:] = (n, 0)
    spec = [layout.WG, d, *layout.spec(fmt)]
    enc = [dev.pipeline("quantize", [x[i], kv[i], tab, dyn], n, spec) for i in range(2)]
    dec = dev.pipeline("dequantize", [kv[0], y, tab, dyn], n, spec)
    return x, y, tab, dyn, enc, dec


def test_graph_barriers_and_one_submission(device, rng):
    fmt, n = make("turbo3", 64), 40
    tag = "test/graph/"
    try:
        x, y, tab, dyn, enc, dec = _codec_pipes(device, tag, fmt, n)
        sbase = n * fmt.words
        g = device.graph().upload(x[0], x[1], tab, dyn)
        g.dispatch(enc[0], layout.quantize_push(0, sbase, 0))
        g.dispatch(enc[1], layout.quantize_push(0, sbase, 0))   # independent: no barrier
        assert g.n_barriers == 0
        g.dispatch(dec, [0, sbase, 0])                            # reads kv0: barrier
        assert g.n_barriers == 1
        g.download(y)
        data = rng.standard_normal((n, 64)).astype(np.float32)
        x[0].host[:] = data.reshape(-1)
        before = device.submissions
        g.run()
        g.run()
        assert device.submissions == before + 2
        want = fmt.decode_rows(*fmt.encode_rows(data))
        np.testing.assert_allclose(y.host.reshape(n, 64), want, rtol=1e-5, atol=1e-6)
        with pytest.raises(RuntimeError, match="recorded already"):
            g.dispatch(dec)
        g.destroy()
    finally:
        device.release(tag)


def test_sync_validation_reports_a_missing_barrier(device, tmp_path):
    """Two dependent dispatches in one sequence: without a barrier the layer reports a
    read-after-write hazard (lavapipe still computes the right answer); with kp.OpBarrier
    between them it reports nothing. Run in a child so its messages stay out of our log."""
    if not layers.available():
        assert not IN_CI, "CI must install vulkan-validationlayers"
        pytest.skip("the Khronos validation layer is not installed")
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from nexvk.device import layers
        assert layers.enable(sys.argv[1])
        import kp
        from nexvk.device import spirv
        from nexvk.kernels import layout
        from nexvk.quant.formats import make
        fmt, n, d = make("turbo3", 64), 8, 64
        mgr = kp.Manager()
        x = mgr.tensor_t(np.ones(n * d, np.float32))
        kv = mgr.tensor_t(np.zeros(layout.region_words(fmt, n), np.uint32))
        y = mgr.tensor_t(np.zeros(n * d, np.float32))
        tab = mgr.tensor_t(layout.table(fmt))
        dyn = mgr.tensor_t(np.array([n, 0], np.uint32))
        spec = spirv.words([layout.WG, d, *layout.spec(fmt)])
        push = np.zeros(32, np.uint32)
        words = layout.quantize_push(0, n * fmt.words, 0)
        push[:len(words)] = words
        enc = mgr.algorithm([x, kv, tab, dyn], spirv.load("quantize"), [n, 1, 1], spec, push)
        dec = mgr.algorithm([kv, y, tab, dyn], spirv.load("dequantize"), [n, 1, 1], spec, push)
        seq = mgr.sequence().record(kp.OpTensorSyncDevice([x, tab, dyn]))
        seq.record(kp.OpAlgoDispatch(enc, push))
        if sys.argv[2] == "barrier":
            seq.record(kp.OpBarrier())
        seq.record(kp.OpAlgoDispatch(dec, push)).eval()
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("VK_INSTANCE_LAYERS", "VK_LAYER_SETTINGS_PATH")}
    found = {}
    for mode in ("none", "barrier"):
        log = tmp_path / mode / "vk.log"
        subprocess.run([sys.executable, "-c", code, str(log), mode], check=True, env=env, timeout=120)
        found[mode] = [m for m in layers.messages(log) if "SYNC-HAZARD" in m]
    assert any("READ_AFTER_WRITE" in m or "READ-AFTER-WRITE" in m for m in found["none"]), found
    assert found["barrier"] == []
