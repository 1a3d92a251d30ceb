# Device call 1 (carry .dev/common .dev/layer .dev/partA): the machine, `nexvk devices`, the
# quick and the full validation suite under the validation layer; keeps model part A in /tmp.
source tools/device/env.sh
{ date; nvidia-smi; python3 -V; python3 -c 'import numpy, numba; print("numpy", numpy.__version__, "numba", numba.__version__)'
  python3 -m nexvk devices; } > "$OUT/env.txt" 2>&1; cat "$OUT/env.txt"
mkdir -p /tmp/model && cp .dev/partA/partA /tmp/model/
SECONDS=0; timeout 90 python3 -m nexvk validate --quick --json "$OUT/quick.json" > "$OUT/quick.txt" 2>&1
echo "quick rc=$? in ${SECONDS}s"; tail -3 "$OUT/quick.txt"
SECONDS=0; timeout "${VT:-330}" python3 -m nexvk validate --json "$OUT/validate.json" > "$OUT/validate.txt" 2>&1
echo "validate rc=$? in ${SECONDS}s"; tail -3 "$OUT/validate.txt"
