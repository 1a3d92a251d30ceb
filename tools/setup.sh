#!/usr/bin/env bash
# One-command setup on Debian 12 (run as root, or with sudo available).
# Installs the Vulkan loader, Mesa's lavapipe CPU driver, shader tools and the Khronos
# validation layer; builds Kompute 0.9.0 offline into a cached wheel (built once, reused on
# every later run); creates .venv and installs nexvk with its dependencies.
# Idempotent: a second run installs nothing new and does not rebuild Kompute.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${NEXVK_VENV:-.venv}
WHEELS=${NEXVK_WHEEL_CACHE:-$HOME/.cache/nexvk/wheels}
APT_PKGS="cmake g++ libvulkan-dev libvulkan1 libfmt-dev mesa-vulkan-drivers vulkan-tools
          glslang-tools spirv-tools vulkan-validationlayers python3-dev python3-venv unzip patch"

if command -v apt-get >/dev/null; then
  missing=$(for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "[setup] apt-get install:" $missing
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  else
    echo "[setup] system packages present"
  fi
else
  echo "[setup] not a Debian system: install a Vulkan loader and driver, glslangValidator," \
       "spirv-val, cmake and libfmt yourself (see README.md), then rerun." >&2
fi

[ -x "$VENV/bin/python" ] || { echo "[setup] creating $VENV"; "$PY" -m venv "$VENV"; }
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q 'pybind11>=2.12,<3' numpy setuptools wheel

# Kompute is built from its sdist with tools/patches/*.patch applied (a Python binding for a
# global memory barrier, so a whole token step is one submission). The wheel is cached under a
# folder named after the patches' hash: changing a patch rebuilds it, nothing else does.
PATCHES=$(ls tools/patches/kompute-0.9.0-*.patch)
PATCH_ID=$(cat $PATCHES | sha256sum | cut -c1-12)
KPW="$WHEELS/kp-0.9.0-$PATCH_ID"
mkdir -p "$KPW"
if ! ls "$KPW"/kp-0.9.0-*.whl >/dev/null 2>&1; then
  echo "[setup] building Kompute 0.9.0 wheel with nexvk's patches (2-3 minutes, once)"
  SRC=$(mktemp -d)
  "$VPY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$SRC" kp==0.9.0
  tar -xzf "$SRC"/kp-0.9.0.tar.gz -C "$SRC"
  for p in $PATCHES; do
    # fail loudly when a patch no longer applies (a different kp source)
    patch -d "$SRC/kp-0.9.0" -p1 --forward --batch < "$p" \
      || { echo "[setup] ERROR: $p does not apply to kp 0.9.0's sdist" >&2; exit 1; }
  done
  PB=$("$VPY" -c 'import pybind11,os;print(os.path.dirname(pybind11.__file__))')
  # NOTE: kp 0.9.0's setup.py glues -DPYTHON_EXECUTABLE onto the previous flag (a missing
  # comma), so CMake would pick any python3.X on PATH; a toolchain file pins the venv's.
  TC=$(mktemp --suffix=.cmake)
  echo "set(PYTHON_EXECUTABLE \"$(cd "$VENV" && pwd)/bin/python\" CACHE FILEPATH \"\" FORCE)" > "$TC"
  KOMPUTE_OPT_INSTALL=OFF \
  KOMPUTE_OPT_USE_BUILT_IN_VULKAN_HEADER=OFF \
  KOMPUTE_OPT_USE_BUILT_IN_FMT=OFF \
  KOMPUTE_OPT_USE_BUILT_IN_PYBIND11=OFF \
  KOMPUTE_OPT_DISABLE_VULKAN_VERSION_CHECK=ON \
  KOMPUTE_OPT_DISABLE_VK_DEBUG_LAYERS=ON \
  CMAKE_PREFIX_PATH="$PB" CMAKE_TOOLCHAIN_FILE="$TC" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$VPY" -m pip wheel -q --no-deps --no-build-isolation -w "$KPW" "$SRC/kp-0.9.0"
  rm -rf "$SRC" "$TC"
fi
# NOTE: kp declares numpy<2; built against pybind11>=2.12 it works with numpy 2, hence --no-deps.
if ! "$VPY" -c 'import kp; kp.OpBarrier' >/dev/null 2>&1; then
  "$VPY" -m pip install -q --no-deps --force-reinstall "$KPW"/kp-0.9.0-*.whl
fi
"$VPY" -m pip install -q -e '.[dev,serve]'
"$VPY" -c 'import kp, nexvk; assert hasattr(kp, "OpBarrier"), "kp lacks the nexvk barrier patch"; print("[setup] nexvk", nexvk.__version__, "ready; devices:", len(nexvk.devices()))'
