"""Shipped SPIR-V modules and host-side packing of push/specialization constants."""
import functools
import shutil
import subprocess
from pathlib import Path

import numpy as np

SPV_DIR = Path(__file__).resolve().parent.parent / "spv"
TARGET_ENV = "vulkan1.1"  # Kompute creates a Vulkan 1.1 instance and enables no features
MAX_PUSH_BYTES = 128  # the Vulkan minimum guarantee for push constants


@functools.lru_cache(maxsize=None)
def load(name):
    """SPIR-V bytes of shader variant `name` (nexvk/spv/<name>.spv)."""
    path = SPV_DIR / f"{name}.spv"
    if not path.exists():
        known = sorted(p.stem for p in SPV_DIR.glob("*.spv"))
        raise ValueError(f"no compiled shader {name!r} (have: {', '.join(known)}); "
                         "run tools/build_shaders.py")
    return path.read_bytes()


def words(values):
    """Pack a sequence of ints/floats into uint32 words (floats by bit pattern).

    NOTE: Kompute 0.9 converts Python lists to float, so push and spec constants always go
    as uint32 numpy arrays, with floats reinterpreted via .view(np.uint32).
    """
    out = np.empty(len(values), np.uint32)
    for i, v in enumerate(values):
        if isinstance(v, (float, np.floating)):
            out[i] = np.float32(v).view(np.uint32)
        else:
            out[i] = np.uint32(int(v))
    if out.nbytes > MAX_PUSH_BYTES:
        raise ValueError(f"{out.nbytes} bytes of constants exceed the {MAX_PUSH_BYTES}-byte limit")
    return out


# SPIR-V opcodes and decorations read by access()
_OP_DECORATE, _OP_MEMBER_DECORATE, _OP_VARIABLE, _OP_TYPE_POINTER = 71, 72, 59, 32
_DEC_BINDING, _DEC_NON_WRITABLE, _DEC_NON_READABLE = 33, 24, 25


@functools.lru_cache(maxsize=None)
def access(name):
    """{binding: (reads, writes)} of shader variant `name`, from its SPIR-V: a binding whose
    block is `readonly` (NonWritable) is only read, `writeonly` (NonReadable) only written.
    The device layer inserts barriers from this, so it cannot drift from the shaders."""
    code = np.frombuffer(load(name), np.uint32)
    binding, pointee, var_type, members = {}, {}, {}, {}
    i = 5  # after the header
    while i < len(code):
        n, op = int(code[i] >> 16), int(code[i] & 0xFFFF)
        w = code[i + 1:i + n]
        if op == _OP_DECORATE and w[1] == _DEC_BINDING:
            binding[int(w[0])] = int(w[2])
        elif op == _OP_DECORATE and w[1] in (_DEC_NON_WRITABLE, _DEC_NON_READABLE):
            members.setdefault(int(w[0]), set()).add(int(w[1]))
        elif op == _OP_MEMBER_DECORATE and w[2] in (_DEC_NON_WRITABLE, _DEC_NON_READABLE):
            members.setdefault(int(w[0]), set()).add(int(w[2]))
        elif op == _OP_TYPE_POINTER:
            pointee[int(w[0])] = int(w[2])
        elif op == _OP_VARIABLE:
            var_type[int(w[1])] = int(w[0])
        i += max(n, 1)
    out = {}
    for var, b in binding.items():
        decs = members.get(var, set()) | members.get(pointee.get(var_type.get(var)), set())
        out[b] = (_DEC_NON_READABLE not in decs, _DEC_NON_WRITABLE not in decs)
    return out


def shipped():
    """Names of the shipped SPIR-V modules."""
    return sorted(p.stem for p in SPV_DIR.glob("*.spv"))


def spirv_val(path):
    """Run spirv-val on one module: (ok, message); ok is None when spirv-val is missing."""
    exe = shutil.which("spirv-val")
    if exe is None:
        return None, "spirv-val not installed (apt-get install spirv-tools)"
    r = subprocess.run([exe, "--target-env", TARGET_ENV, str(path)], capture_output=True, text=True)
    return r.returncode == 0, (r.stdout + r.stderr).strip()
