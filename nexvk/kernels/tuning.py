"""One table of tuning spec constants per device type, chosen once per device (as ggml picks
pipelines per vendor).

cpu (lavapipe/llvmpipe, Mesa 22.3 here): a subgroup is 8 SIMD lanes and EVERY buffer or
shared-memory load becomes a scalar loop over the lanes (measured ~15 ns per lane-word on this
loaded 2-core machine) while arithmetic is cheap. So: one row per lane and NR rows per lane
sharing x, x shared by subgroupBroadcast (4 loads per 32 values per lane), no barriers, X for
prefill straight from the buffer (shared memory costs the same as a buffer load).
gpu: many invocations per row summed in shared memory, X tiles staged in shared memory.
NOTE: llvmpipe compiles mul_mm's unrolled NR x TT tile slowly (~15 s for 16 x 8 on 2 busy
cores; 16 x 16 runs ~2x faster but takes ~50 s) once per (type, K): Mesa's shader disk cache
keeps it afterwards. The row count is a push constant so that every shape of a K shares it.
NEXVK_TUNE overrides entries for a run, e.g. NEXVK_TUNE=attention.TARGET=0,mul_mv.WG=64 (to
A/B a setting on a new device in one run of `nexvk bench`, or to work around a driver).
attention TARGET: workgroups a pass of decode attention should fill (kernels/attention.py
split_size); 0 = the largest splits (lavapipe: few threads, each split costs a reduce).
The weight layout (ggml_types) is the same for both: measured on lavapipe, row-interleaved
layouts gained nothing over row-major streams, which GPUs read coalesced.
"""
import os

TABLE = {
    "cpu": {
        "mul_mv": {"WG": 8, "NR": 8, "TPR": 1},
        "mul_mm": {"WG": 8, "NR": 16, "TT": 8, "SHX": 0},
        "get_rows": {"WG": 8},
        "rms_norm": {"WG": 8},
        "elementwise": {"WG": 64},   # rope, glu, add
        "attention": {"TARGET": 0},
    },
    "gpu": {
        "mul_mv": {"WG": 128, "NR": 1, "TPR": 32},
        "mul_mm": {"WG": 64, "NR": 1, "TT": 32, "SHX": 1},
        "get_rows": {"WG": 64},
        "rms_norm": {"WG": 128},
        "elementwise": {"WG": 128},
        "attention": {"TARGET": 512},
    },
}


def env_overrides(op, text=None):
    """{key: int} that NEXVK_TUNE (or text) sets for `op`; ValueError naming what is wrong."""
    text = os.environ.get("NEXVK_TUNE", "") if text is None else text
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, eq, val = item.partition("=")
        o, dot, key = name.strip().partition(".")
        table = TABLE["gpu"].get(o)
        if not (eq and dot and table is not None and key in table):
            ops = ", ".join(f"{n}.{k}" for n, t in TABLE["gpu"].items() for k in t)
            raise ValueError(f"NEXVK_TUNE: {item!r} is not OP.KEY=INT with OP.KEY one of {ops}")
        lo, hi = (0, 1) if key == "SHX" else (0, 1 << 20) if key == "TARGET" else (1, 1 << 16)
        try:
            v = int(val)
        except ValueError:
            v = lo - 1
        if not lo <= v <= hi:
            raise ValueError(f"NEXVK_TUNE: {item!r} needs a whole number from {lo} to {hi}")
        if o == op:
            out[key] = v
    return out


def device_kind(dev):
    return "cpu" if dev.info.get("type") == "cpu" else "gpu"


def get(dev, op, **override):
    """The spec constants of `op` on `dev`: the device kind's table, then NEXVK_TUNE, then
    keyword overrides (benchmarks try others)."""
    require(dev)
    p = dict(TABLE[device_kind(dev)][op], **env_overrides(op))
    p.update(override)
    most = dev.info.get("limits", {}).get("max_compute_work_group_invocations")
    if most and p.get("WG", 0) > most:
        raise ValueError(f"{op}: WG={p['WG']} exceeds {dev.name}'s {most} invocations per "
                         "workgroup")
    if op == "mul_mv" and (p["TPR"] & (p["TPR"] - 1) or p["WG"] % p["TPR"]):
        raise ValueError(f"mul_mv: TPR={p['TPR']} must be a power of two dividing WG={p['WG']}")
    if op == "rms_norm" and p["WG"] & (p["WG"] - 1):
        raise ValueError(f"rms_norm: WG={p['WG']} must be a power of two")
    lane_shared = (op == "mul_mv" and p["TPR"] == 1) or (op == "mul_mm" and not p["SHX"])
    sg = dev.info.get("subgroup_size") or 0
    if lane_shared and (sg < 8 or p["WG"] % sg):
        raise ValueError(f"{op}: sharing x across 8 lanes needs full subgroups of at least 8 "
                         f"(subgroup size {sg}, WG={p['WG']})")
    return p


def require(dev):
    """The products use subgroup ballot (subgroupBroadcast) in compute shaders."""
    if "ballot" not in dev.info.get("subgroup_ops", []) or \
            "compute" not in dev.info.get("subgroup_stages", []):
        raise RuntimeError(f"{dev.name}: the weight kernels need subgroup 'ballot' operations in "
                           "compute shaders, which this device does not report")
