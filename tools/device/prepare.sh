#!/usr/bin/env bash
# Fill .dev/ (git-ignored) with what a bare GPU machine needs to run nexvk's Vulkan backend:
# such a machine (this workplace's lent H200: Python 3.12 with numpy, numba, tokenizers, no
# Vulkan loader, no Kompute, no registry) gets the Kompute wheel built here for its Python,
# Debian's loader + glvnd libraries (the NVIDIA ICD is libGLX_nvidia, which needs them), the
# validation layer, spirv-val, gguf, a slice of wikitext, the default model's key statistics and
# the model itself in two parts (each call may carry 64 MiB).
# Usage: PYTHON=/path/to/python3.12 bash tools/device/prepare.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${PYTHON:?set PYTHON to a python of the same version as the device machine}"
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >> .git/info/exclude
rm -rf .dev && mkdir -p .dev/common .dev/layer .dev/partA .dev/partB
VER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
W=${NEXVK_WHEEL_CACHE:-$HOME/.cache/nexvk/wheels-$VER}
NEXVK_VENV=/tmp/nexvk-venv-$VER PYTHON="$PYTHON" NEXVK_WHEEL_CACHE="$W" bash tools/setup.sh >/dev/null
cp "$W"/kp-0.9.0-*/kp-0.9.0-*.whl .dev/common/
.venv/bin/pip download -q --no-deps -d .dev/common "gguf==$(.venv/bin/pip show gguf | awk '/^Version/{print $2}')"
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/nexvk-apt'
mkdir -p /tmp/nexvk-apt/partial && apt-get $o update -qq
(cd .dev/common && apt-get $o download -qq libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2 libfmt9)
(cd .dev/layer && apt-get $o download -qq vulkan-validationlayers)
T=$(mktemp -d); (cd "$T" && apt-get $o download -qq spirv-tools && dpkg -x spirv-tools_*.deb x)
cp "$T"/x/usr/bin/spirv-val .dev/common/ && rm -rf "$T"
head -c 300000 ../shared/data/wikitext-2-raw-test.txt > .dev/common/wiki-head.txt
M=$(.venv/bin/python -c 'from nexvk.model.fetch import fetch_default; print(fetch_default(progress=False))')
# the model's key statistics (~1 MiB; computed here if missing): a fresh device machine would
# spend ~77 s of device time computing them on its host
K=$(.venv/bin/python -c 'import sys; from nexvk.model import keystats as k
k.key_stats(sys.argv[1]); print(k.cache_file(sys.argv[1]))' "$M")
mkdir -p .dev/common/keystats && cp "$K" .dev/common/keystats/
head -c 45000000 "$M" > .dev/partA/partA
tail -c +45000001 "$M" > .dev/partB/partB
du -sh .dev/*
