# Sourced on the device machine from the repo root (see prepare.sh): loader and glvnd into /,
# kp and gguf into /tmp/site, the validation layer and spirv-val under /tmp.
for f in .dev/common/lib*.deb; do dpkg -x "$f" /; done; ldconfig
mkdir -p /tmp/bin && cp .dev/common/spirv-val /tmp/bin/ && chmod +x /tmp/bin/spirv-val
if [ -d .dev/layer ] && [ ! -d /tmp/vvl ]; then mkdir -p /tmp/vvl && dpkg -x .dev/layer/*.deb /tmp/vvl; fi
export LD_LIBRARY_PATH=/tmp/vvl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -d /tmp/vvl ] && export VK_LAYER_PATH=/tmp/vvl/usr/share/vulkan/explicit_layer.d
export PATH=/tmp/bin:$PATH
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/common/*.whl || echo "pip install failed"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NEXVK_HOME=/tmp/nexvk
if [ -d .dev/common/keystats ]; then mkdir -p $NEXVK_HOME/keystats && cp .dev/common/keystats/*.npz $NEXVK_HOME/keystats/; fi
if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
