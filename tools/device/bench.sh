# Device call 2 (carry .dev/common .dev/partB; within 30 s of call 1, while /tmp still holds
# part A): the e2e section of `nexvk bench` twice (the device's tuning, then the llvmpipe-style
# attention splits, NEXVK_TUNE=attention.TARGET=0: the A/B of the split change in one call),
# the kernel sections, what a dispatch and a barrier cost (dispatch_cost.py), a chat answer
# and ppl/KLD on the GPU.
source tools/device/env.sh
M=/tmp/nexvk/models/SmolLM2-135M-Instruct.Q4_1.gguf; mkdir -p /tmp/nexvk/models
if [ -f /tmp/model/partA ]; then cat /tmp/model/partA .dev/partB/partB > $M; sha256sum $M; else echo "part A missing: no e2e"; fi
B="python3 -m nexvk bench --backend vulkan --no-progress"
{ SECONDS=0; timeout 150 $B --only e2e --json "$OUT/e2e.json"; echo "e2e rc=$? ${SECONDS}s"; } > "$OUT/e2e.txt" 2>&1; tail -12 "$OUT/e2e.txt"
{ SECONDS=0; NEXVK_TUNE=attention.TARGET=0 timeout 90 $B --only e2e --json "$OUT/e2e_t0.json"; echo "e2e TARGET=0 rc=$? ${SECONDS}s"; } > "$OUT/e2e_t0.txt" 2>&1; tail -12 "$OUT/e2e_t0.txt"
{ SECONDS=0; timeout 110 $B --only attention codec --json "$OUT/kernels.json"; echo "kernels rc=$? ${SECONDS}s"; } > "$OUT/kernels.txt" 2>&1
{ timeout 40 python3 tools/device/dispatch_cost.py 256 1024 30; timeout 40 python3 tools/device/dispatch_cost.py 256 65536 20; } > "$OUT/dispatch.txt" 2>&1; cat "$OUT/dispatch.txt"
if [ -f $M ]; then
{ timeout 40 python3 -m nexvk run --backend vulkan -m $M --chat -p "Give me three tips for a good night's sleep." -n 64 -ctk turbo3 -ctv turbo3
  timeout 60 python3 -m nexvk ppl --backend vulkan -m $M -f .dev/common/wiki-head.txt -c 512 --chunks 4 -ctk turbo3 -ctv turbo3 --kld; } > "$OUT/model.txt" 2>&1
tail -8 "$OUT/model.txt"
fi
