"""nexvk.device.probe: real lavapipe probe (cross-checked with vulkaninfo), no-driver path, selection logic."""
import json
import re
import shutil
import subprocess

import pytest

from nexvk.device import probe


def _lavapipe(devs):
    return [d for d in devs if "llvmpipe" in d["name"]]


def test_finds_lavapipe():
    devs = probe.devices(refresh=True)
    assert devs, f"no devices: {probe.last_error()}"
    assert probe.last_error() is None
    json.dumps(devs)  # plain, serializable records
    assert [d["index"] for d in devs] == list(range(len(devs)))
    (d,) = _lavapipe(devs)[:1]
    assert d["type"] == "cpu" and d["vendor"] == "Mesa" and d["vendor_id"] == 0x10005
    assert d["subgroup_size"] > 0 and "basic" in d["subgroup_ops"]
    assert d["memory_bytes"] > 0
    lim = d["limits"]
    assert lim["max_storage_buffer_range"] >= 128 * 2**20
    assert lim["max_compute_shared_memory_size"] >= 16 * 1024
    assert lim["max_push_constants_size"] >= 128
    assert lim["max_compute_work_group_invocations"] >= 128
    assert len(lim["max_compute_work_group_size"]) == 3 and len(lim["max_compute_work_group_count"]) == 3
    assert re.fullmatch(r"\d+\.\d+\.\d+", d["api_version"])
    assert "llvmpipe" in d["driver"]  # VkPhysicalDeviceDriverProperties (lavapipe is Vulkan 1.3)


def test_cached_and_copied():
    a = probe.devices()
    a.append("junk")
    assert "junk" not in probe.devices()


def _vulkaninfo_summary():
    exe = shutil.which("vulkaninfo")
    if not exe:
        pytest.skip("vulkaninfo not installed")
    out = subprocess.run([exe, "--summary"], capture_output=True, text=True, timeout=60).stdout
    gpus = []
    for block in re.split(r"\n\s*GPU\d+:\s*\n", out)[1:]:
        kv = dict(re.findall(r"^\s*(\w+)\s*=\s*(.+?)\s*$", block, re.M))
        gpus.append(kv)
    if not gpus:
        pytest.skip("vulkaninfo --summary listed no GPUs")
    return gpus


def test_matches_vulkaninfo():
    gpus = _vulkaninfo_summary()
    devs = probe.devices()
    assert len(devs) == len(gpus)
    for d, g in zip(devs, gpus):
        assert d["name"] == g["deviceName"]
        assert d["api_version"] == g["apiVersion"].split()[0]
        assert d["vendor_id"] == int(g["vendorID"], 16)
        assert d["device_id"] == int(g["deviceID"], 16)
        assert g["deviceType"].endswith(d["type"].upper() if d["type"] != "discrete" else "DISCRETE_GPU")
        if "driverName" in g:
            assert d["driver"].startswith(g["driverName"])


def test_no_driver_returns_empty(monkeypatch, tmp_path):
    missing = str(tmp_path / "nonexistent_icd.json")
    monkeypatch.setenv("VK_DRIVER_FILES", missing)
    monkeypatch.setenv("VK_ICD_FILENAMES", missing)
    try:
        assert probe.devices(refresh=True) == []
        err = probe.last_error()
        assert err and ("driver" in err.lower() or "device" in err.lower()), err
        with pytest.raises(RuntimeError, match="no Vulkan device found: .+install a Vulkan driver"):
            probe.choose()
        assert "no Vulkan devices" in probe.format_table([])
    finally:
        monkeypatch.undo()
        probe.devices(refresh=True)  # don't leave the empty result cached for other tests


def test_garbage_and_crash_are_contained(monkeypatch):
    class R:
        def __init__(self, rc, out):
            self.returncode, self.stdout, self.stderr = rc, out, "Segmentation fault"

    for fake, needle in [(R(-11, ""), "code -11"), (R(0, "not json at all"), "unparseable"),
                         (R(0, '{"devices": 5}'), "unparseable")]:
        monkeypatch.setattr(probe.subprocess, "run", lambda *a, _f=fake, **k: _f)
        assert probe.devices(refresh=True) == []
        assert needle in probe.last_error()

    def hang(*a, **k):
        raise subprocess.TimeoutExpired(a[0], 30)
    monkeypatch.setattr(probe.subprocess, "run", hang)
    assert probe.devices(refresh=True) == [] and "timed out" in probe.last_error()
    monkeypatch.undo()
    probe.devices(refresh=True)


def _dev(i, typ, mem, name=None):
    return {"index": i, "name": name or f"dev{i}", "type": typ, "vendor": "X", "driver": "", "memory_bytes": mem,
            "subgroup_size": 32, "limits": {"max_storage_buffer_range": 2**31, "max_compute_shared_memory_size": 49152}}


def test_best_index_ordering():
    assert probe.best_index([]) is None
    devs = [_dev(0, "cpu", 2**40), _dev(1, "integrated", 2**30), _dev(2, "discrete", 2**32),
            _dev(3, "discrete", 2**34), _dev(4, "virtual", 2**35)]
    assert probe.best_index(devs) == 3
    assert probe.best_index(devs[:3]) == 2
    assert probe.best_index([devs[0], devs[1]]) == 1
    assert probe.best_index([devs[0], devs[4]]) == 4
    assert probe.best_index([_dev(0, "other", 1), devs[0]]) == 0 and probe.best_index([_dev(5, "other", 9)]) == 5
    assert probe.best_index([_dev(7, "discrete", 8), _dev(2, "discrete", 8)]) == 2  # tie: lower index


def test_choose(monkeypatch):
    fake = [_dev(0, "cpu", 2**30, "slow cpu"), _dev(1, "discrete", 2**33, "big gpu")]
    monkeypatch.setattr(probe, "devices", lambda refresh=False: fake)
    monkeypatch.delenv("NEXVK_DEVICE", raising=False)
    assert probe.choose()["index"] == 1
    assert probe.choose(0)["name"] == "slow cpu"
    monkeypatch.setenv("NEXVK_DEVICE", "0")
    assert probe.choose()["index"] == 0
    assert probe.choose(1)["index"] == 1  # explicit argument wins over the environment
    monkeypatch.setenv("NEXVK_DEVICE", "gpu")
    with pytest.raises(ValueError, match="NEXVK_DEVICE"):
        probe.choose()
    monkeypatch.setenv("NEXVK_DEVICE", "7")
    with pytest.raises(ValueError, match="out of range.*slow cpu.*big gpu"):
        probe.choose()
    monkeypatch.delenv("NEXVK_DEVICE")
    with pytest.raises(ValueError, match="available"):
        probe.choose(-1)


def test_choose_real_device(monkeypatch):
    monkeypatch.delenv("NEXVK_DEVICE", raising=False)
    d = probe.choose()
    assert d["index"] == probe.best_index(probe.devices())


def test_format_table():
    devs = [_dev(0, "cpu", 2**30, "slow cpu"), _dev(1, "discrete", 2**33, "big gpu")]
    t = probe.format_table(devs)
    lines = t.splitlines()
    assert len(lines) == 3 and "slow cpu" in t and "big gpu" in t
    assert lines[2].startswith("*") and not lines[1].startswith("*")
    assert "8.0" in lines[2] and "2048" in lines[2] and "48" in lines[2]
    real = probe.format_table(probe.devices())
    assert "llvmpipe" in real and "*" in real


def test_cli():
    import sys
    out = subprocess.run([sys.executable, "-m", "nexvk.device.probe"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "llvmpipe" in out.stdout
    js = subprocess.run([sys.executable, "-m", "nexvk.device.probe", "--json"], capture_output=True, text=True,
                        timeout=60)
    data = json.loads(js.stdout.strip().splitlines()[-1])
    assert data["error"] is None and _lavapipe(data["devices"])


def test_version_decoding():
    assert probe._driver_ver((535 << 22) | (104 << 14) | (5 << 6) | 1, 0x10DE) == "535.104.5.1"
    assert probe._driver_ver((23 << 22) | (1 << 12) | 4, 0x1002) == "23.1.4"
    assert probe._ver((1 << 22) | (3 << 12) | 239) == "1.3.239"


def test_probe_is_isolated_from_the_users_directory_and_paths(tmp_path):
    """A json.py in the current directory (or on PYTHONPATH) must not run: the probe used to
    execute it through `python -m` and then report no GPU."""
    import os
    import sys
    from pathlib import Path
    marker = tmp_path / "ran"
    (tmp_path / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n")
    repo = str(Path(probe.__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {repo!r}); from nexvk.device import probe; "
            "print(len(probe.devices()), probe.last_error())")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # the parent under -I too, so only the probe's child can have met the fake json.py
    r = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    n, err = r.stdout.split(maxsplit=1)
    assert not marker.exists(), "the probe imported json.py from the user's directory"
    assert int(n) == len(probe.devices()) and err.strip() == str(probe.last_error())
