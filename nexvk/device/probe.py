"""List Vulkan devices without ever crashing the caller.

Why not just ask Kompute? `kp.Manager()` segfaults the interpreter when no Vulkan driver is
installed, and the device info it exposes is thin (no memory size, subgroup ops, limits).
So we query the Vulkan loader ourselves through ctypes, in a SUBPROCESS
(`python -I .../probe.py --json`, isolated from the caller's directory and PYTHON* variables),
so a broken driver can only kill that child.
Device `index` is the enumeration order, i.e. the index `kp.Manager(index)` takes.
"""
import copy, ctypes, ctypes.util, functools, json, os, subprocess, sys

U32, U64, I32, F32, P = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32, ctypes.c_float, ctypes.c_void_p
_T = {"q": U64, "f": F32, "i": I32, "z": ctypes.c_size_t}


def _fields(spec):  # "a q.b f.c:2" -> [(a, u32), (b, u64), (c, float*2)]
    out = []
    for tok in spec.split():
        t, _, name = tok.rpartition(".")
        name, _, n = name.partition(":")
        typ = _T.get(t, U32)
        out.append((name, typ * int(n) if n else typ))
    return out


_LIMITS = (  # VkPhysicalDeviceLimits, all fields in spec order (u32 unless q.=u64 f.=float i.=int32 z.=size_t)
    "maxImageDimension1D maxImageDimension2D maxImageDimension3D maxImageDimensionCube maxImageArrayLayers "
    "maxTexelBufferElements maxUniformBufferRange maxStorageBufferRange maxPushConstantsSize maxMemoryAllocationCount "
    "maxSamplerAllocationCount q.bufferImageGranularity q.sparseAddressSpaceSize maxBoundDescriptorSets "
    "maxPerStageDescriptorSamplers maxPerStageDescriptorUniformBuffers maxPerStageDescriptorStorageBuffers "
    "maxPerStageDescriptorSampledImages maxPerStageDescriptorStorageImages maxPerStageDescriptorInputAttachments "
    "maxPerStageResources maxDescriptorSetSamplers maxDescriptorSetUniformBuffers "
    "maxDescriptorSetUniformBuffersDynamic maxDescriptorSetStorageBuffers maxDescriptorSetStorageBuffersDynamic "
    "maxDescriptorSetSampledImages maxDescriptorSetStorageImages maxDescriptorSetInputAttachments "
    "maxVertexInputAttributes maxVertexInputBindings maxVertexInputAttributeOffset maxVertexInputBindingStride "
    "maxVertexOutputComponents maxTessellationGenerationLevel maxTessellationPatchSize "
    "maxTessellationControlPerVertexInputComponents maxTessellationControlPerVertexOutputComponents "
    "maxTessellationControlPerPatchOutputComponents maxTessellationControlTotalOutputComponents "
    "maxTessellationEvaluationInputComponents maxTessellationEvaluationOutputComponents maxGeometryShaderInvocations "
    "maxGeometryInputComponents maxGeometryOutputComponents maxGeometryOutputVertices "
    "maxGeometryTotalOutputComponents maxFragmentInputComponents maxFragmentOutputAttachments "
    "maxFragmentDualSrcAttachments maxFragmentCombinedOutputResources maxComputeSharedMemorySize "
    "maxComputeWorkGroupCount:3 maxComputeWorkGroupInvocations maxComputeWorkGroupSize:3 subPixelPrecisionBits "
    "subTexelPrecisionBits mipmapPrecisionBits maxDrawIndexedIndexValue maxDrawIndirectCount f.maxSamplerLodBias "
    "f.maxSamplerAnisotropy maxViewports maxViewportDimensions:2 f.viewportBoundsRange:2 viewportSubPixelBits "
    "z.minMemoryMapAlignment q.minTexelBufferOffsetAlignment q.minUniformBufferOffsetAlignment "
    "q.minStorageBufferOffsetAlignment i.minTexelOffset maxTexelOffset i.minTexelGatherOffset maxTexelGatherOffset "
    "f.minInterpolationOffset f.maxInterpolationOffset subPixelInterpolationOffsetBits maxFramebufferWidth "
    "maxFramebufferHeight maxFramebufferLayers framebufferColorSampleCounts framebufferDepthSampleCounts "
    "framebufferStencilSampleCounts framebufferNoAttachmentsSampleCounts maxColorAttachments "
    "sampledImageColorSampleCounts sampledImageIntegerSampleCounts sampledImageDepthSampleCounts "
    "sampledImageStencilSampleCounts storageImageSampleCounts maxSampleMaskWords timestampComputeAndGraphics "
    "f.timestampPeriod maxClipDistances maxCullDistances maxCombinedClipAndCullDistances discreteQueuePriorities "
    "f.pointSizeRange:2 f.lineWidthRange:2 f.pointSizeGranularity f.lineWidthGranularity strictLines "
    "standardSampleLocations q.optimalBufferCopyOffsetAlignment q.optimalBufferCopyRowPitchAlignment "
    "q.nonCoherentAtomSize")


def _S(name, fields):
    return type(name, (ctypes.Structure,), {"_fields_": fields})


HDR = [("sType", U32), ("pNext", P)]
Limits = _S("VkPhysicalDeviceLimits", _fields(_LIMITS))
Props = _S("VkPhysicalDeviceProperties", _fields("apiVersion driverVersion vendorID deviceID deviceType") + [
    ("deviceName", ctypes.c_char * 256), ("pipelineCacheUUID", ctypes.c_uint8 * 16), ("limits", Limits),
    ("sparseProperties", U32 * 5)])
Heap = _S("VkMemoryHeap", [("size", U64), ("flags", U32)])
MemProps = _S("VkPhysicalDeviceMemoryProperties",
              [("typeCount", U32), ("types", U32 * 64), ("heapCount", U32), ("heaps", Heap * 16)])
Props2 = _S("VkPhysicalDeviceProperties2", HDR + [("properties", Props)])
Subgroup = _S("VkPhysicalDeviceSubgroupProperties", HDR + _fields("size stages ops quadAllStages"))
Driver = _S("VkPhysicalDeviceDriverProperties", HDR + [("driverID", U32), ("name", ctypes.c_char * 256),
                                                       ("info", ctypes.c_char * 256), ("conformance", U32)])
AppInfo = _S("VkApplicationInfo", HDR + [("app", ctypes.c_char_p), ("appVer", U32), ("engine", ctypes.c_char_p),
                                         ("engineVer", U32), ("apiVersion", U32)])
InstInfo = _S("VkInstanceCreateInfo", HDR + [("flags", U32), ("app", ctypes.POINTER(AppInfo)), ("nLayers", U32),
                                             ("layers", P), ("nExt", U32), ("exts", ctypes.POINTER(ctypes.c_char_p))])
ExtProps = _S("VkExtensionProperties", [("name", ctypes.c_char * 256), ("specVersion", U32)])

if ctypes.sizeof(P) == 8:
    assert ctypes.sizeof(Props) == 824 and ctypes.sizeof(MemProps) == 520 and ctypes.sizeof(Driver) == 536

VENDORS = {0x10DE: "NVIDIA", 0x1002: "AMD", 0x8086: "Intel", 0x106B: "Apple", 0x13B5: "ARM",
           0x5143: "Qualcomm", 0x10005: "Mesa", 0x1010: "ImgTec"}
TYPES = {0: "other", 1: "integrated", 2: "discrete", 3: "virtual", 4: "cpu"}
SUBGROUP_OPS = ["basic", "vote", "arithmetic", "ballot", "shuffle", "shuffle_relative", "clustered", "quad"]
SUBGROUP_STAGES = ["vertex", "tess_control", "tess_eval", "geometry", "fragment", "compute"]
VK_RESULTS = {-1: "VK_ERROR_OUT_OF_HOST_MEMORY", -3: "VK_ERROR_INITIALIZATION_FAILED",
              -6: "VK_ERROR_LAYER_NOT_PRESENT", -7: "VK_ERROR_EXTENSION_NOT_PRESENT",
              -9: "VK_ERROR_INCOMPATIBLE_DRIVER (no usable Vulkan driver/ICD)"}
_LIBS = {"win32": ["vulkan-1.dll"], "darwin": ["libvulkan.1.dylib", "libvulkan.dylib", "libMoltenVK.dylib"]}


def _ver(v):
    return f"{(v >> 22) & 0x7F}.{(v >> 12) & 0x3FF}.{v & 0xFFF}"


def _driver_ver(v, vendor):
    if vendor == 0x10DE:  # NVIDIA: 10.8.8.6 bits
        return f"{(v >> 22) & 0x3FF}.{(v >> 14) & 0xFF}.{(v >> 6) & 0xFF}.{v & 0x3F}"
    return _ver(v)


def _load():
    names = _LIBS.get(sys.platform, ["libvulkan.so.1", "libvulkan.so"]) + [ctypes.util.find_library("vulkan")]
    for n in filter(None, names):
        try:
            return (ctypes.WinDLL if sys.platform == "win32" else ctypes.CDLL)(n)
        except OSError:
            pass
    raise RuntimeError("Vulkan loader not found (tried %s)" % ", ".join(filter(None, names)))


def _probe_inproc():
    """Query the loader in this process (may crash with a broken driver: call via devices())."""
    lib = _load()
    FT = ctypes.WINFUNCTYPE if sys.platform == "win32" else ctypes.CFUNCTYPE
    gipa = FT(P, P, ctypes.c_char_p)(("vkGetInstanceProcAddr", lib))

    def fn(inst, name, *argtypes):
        addr = gipa(inst, name.encode())
        if not addr:
            raise RuntimeError(f"{name} not available")
        return FT(I32 if name.startswith(("vkCreate", "vkEnumerate")) else None, *argtypes)(addr)

    api = 0x400000  # 1.0
    eiv = gipa(None, b"vkEnumerateInstanceVersion")
    if eiv:
        v = U32()
        if FT(I32, ctypes.POINTER(U32))(eiv)(ctypes.byref(v)) == 0 and v.value >= 0x401000:
            api = 0x402000 if v.value >= 0x402000 else 0x401000  # ask for 1.2 (or 1.1)
    enum_ext = fn(None, "vkEnumerateInstanceExtensionProperties", ctypes.c_char_p, ctypes.POINTER(U32), P)
    n = U32()
    enum_ext(None, ctypes.byref(n), None)
    exts = (ExtProps * n.value)()
    enum_ext(None, ctypes.byref(n), exts)
    avail = {e.name for e in exts[:n.value]}
    want = [e for e in (b"VK_KHR_portability_enumeration",) if e in avail]
    app = AppInfo(0, None, b"nexvk-probe", 1, b"nexvk", 1, api)
    ext_arr = (ctypes.c_char_p * max(1, len(want)))(*want)
    info = InstInfo(1, None, 1 if want else 0, ctypes.pointer(app), 0, None, len(want), ext_arr)
    inst = P()
    r = fn(None, "vkCreateInstance", ctypes.POINTER(InstInfo), P, ctypes.POINTER(P))(
        ctypes.byref(info), None, ctypes.byref(inst))
    if r != 0:
        raise RuntimeError("vkCreateInstance failed: " + VK_RESULTS.get(r, str(r)))
    try:
        enum = fn(inst, "vkEnumeratePhysicalDevices", P, ctypes.POINTER(U32), P)
        r = enum(inst, ctypes.byref(n), None)
        if r < 0:
            raise RuntimeError("vkEnumeratePhysicalDevices failed: " + VK_RESULTS.get(r, str(r)))
        phys = (P * n.value)()
        enum(inst, ctypes.byref(n), phys)
        get_props = fn(inst, "vkGetPhysicalDeviceProperties", P, ctypes.POINTER(Props))
        get_mem = fn(inst, "vkGetPhysicalDeviceMemoryProperties", P, ctypes.POINTER(MemProps))
        get_p2 = (fn(inst, "vkGetPhysicalDeviceProperties2", P, ctypes.POINTER(Props2))
                  if api >= 0x401000 else None)
        return [_record(i, pd, get_props, get_mem, get_p2) for i, pd in enumerate(phys[:n.value])]
    finally:
        fn(inst, "vkDestroyInstance", P, P)(inst, None)


def _record(i, pd, get_props, get_mem, get_p2):
    p, m = Props(), MemProps()
    get_props(pd, ctypes.byref(p))
    get_mem(pd, ctypes.byref(m))
    sg, drv = Subgroup(1000094000, None), Driver(1000196000, None)
    driver = ""
    if get_p2 and p.apiVersion >= 0x401000:
        if p.apiVersion >= 0x402000:
            sg.pNext = ctypes.cast(ctypes.pointer(drv), P)
        p2 = Props2(1000059001, ctypes.cast(ctypes.pointer(sg), P))
        get_p2(pd, ctypes.byref(p2))
        driver = " ".join(x for x in (drv.name.decode(errors="replace"), drv.info.decode(errors="replace")) if x)
    L = p.limits
    return {
        "index": i, "name": p.deviceName.decode(errors="replace"), "type": TYPES.get(p.deviceType, "other"),
        "vendor": VENDORS.get(p.vendorID, hex(p.vendorID)), "vendor_id": p.vendorID, "device_id": p.deviceID,
        "api_version": _ver(p.apiVersion), "driver_version": _driver_ver(p.driverVersion, p.vendorID),
        "driver": driver,
        "memory_bytes": sum(h.size for h in m.heaps[:m.heapCount] if h.flags & 1),  # DEVICE_LOCAL
        "subgroup_size": sg.size, "subgroup_ops": [o for b, o in enumerate(SUBGROUP_OPS) if sg.ops >> b & 1],
        "subgroup_stages": [s for b, s in enumerate(SUBGROUP_STAGES) if sg.stages >> b & 1],
        "limits": {
            "max_storage_buffer_range": L.maxStorageBufferRange, "max_push_constants_size": L.maxPushConstantsSize,
            "max_compute_shared_memory_size": L.maxComputeSharedMemorySize,
            "max_compute_work_group_invocations": L.maxComputeWorkGroupInvocations,
            "max_compute_work_group_size": list(L.maxComputeWorkGroupSize),
            "max_compute_work_group_count": list(L.maxComputeWorkGroupCount),
            "max_per_stage_storage_buffers": L.maxPerStageDescriptorStorageBuffers,
            "max_memory_allocation_count": L.maxMemoryAllocationCount}}


_last_error = None


def last_error():
    """Why the last probe found no devices (None when it succeeded)."""
    return _last_error


@functools.lru_cache(maxsize=1)
def _probe():
    global _last_error
    _last_error, devs = None, []
    # NOTE: this file by path under `python -I` (no cwd, PYTHONPATH or user site on sys.path:
    # a json.py in the user's directory must not run); it imports only the standard library.
    try:
        cp = subprocess.run([sys.executable, "-I", os.path.abspath(__file__), "--json"],
                            capture_output=True, text=True, timeout=30)
        if cp.returncode != 0:
            tail = (cp.stderr or "").strip().splitlines()[-1:] or [""]
            _last_error = f"probe subprocess exited with code {cp.returncode} {tail[0]}".strip()
        else:
            line = next((ln for ln in reversed(cp.stdout.splitlines()) if ln.startswith("{")), None)
            out = json.loads(line) if line else None
            if not isinstance(out, dict) or not isinstance(out.get("devices"), list):
                raise ValueError("unparseable probe output: %r" % cp.stdout[-200:])
            devs, _last_error = out["devices"], out.get("error")
            if not devs and not _last_error:
                _last_error = "Vulkan loader found but it reports no physical devices"
    except subprocess.TimeoutExpired:
        _last_error = "probe subprocess timed out after 30 s (hung Vulkan driver?)"
    except (OSError, ValueError) as e:
        _last_error = f"probe failed: {e}"
    return devs


def devices(refresh=False):
    """Vulkan devices as JSON-serializable dicts; [] (see last_error()) when none/broken."""
    if refresh:
        _probe.cache_clear()
    return copy.deepcopy(_probe())


_RANK = {"discrete": 0, "integrated": 1, "virtual": 2, "cpu": 3, "other": 4}


def best_index(devs):
    """Index of the preferred device: by type, then larger memory, then lower index; None if empty."""
    if not devs:
        return None
    return min(devs, key=lambda d: (_RANK.get(d.get("type"), 4), -d.get("memory_bytes", 0), d["index"]))["index"]


def choose(index=None):
    """Device dict for an explicit index, else $NEXVK_DEVICE, else best_index()."""
    devs = devices()
    if not devs:
        raise RuntimeError(f"no Vulkan device found: {last_error()}; install a Vulkan driver (e.g. mesa-vulkan-"
                           "drivers for lavapipe/RADV/ANV, the NVIDIA driver, or MoltenVK on macOS)")
    if index is None and os.environ.get("NEXVK_DEVICE", "").strip():
        raw = os.environ["NEXVK_DEVICE"]
        try:
            index = int(raw)
        except ValueError:
            raise ValueError(f"NEXVK_DEVICE must be an integer device index, got {raw!r}") from None
    if index is None:
        index = best_index(devs)
    by_index = {d["index"]: d for d in devs}
    if index not in by_index:
        avail = "; ".join(f"{d['index']}: {d['name']}" for d in devs)
        raise ValueError(f"Vulkan device index {index} out of range; available: {avail}")
    return by_index[index]


def format_table(devs):
    """Aligned text table of devices; '*' marks the default (best_index) device."""
    if not devs:
        return "no Vulkan devices found" + (f": {last_error()}" if last_error() else "")
    best = best_index(devs)
    head = ["", "idx", "name", "type", "vendor", "driver", "mem GiB", "subgroup", "SSBO MiB", "shared KiB"]
    rows = [head] + [["*" if d["index"] == best else "", str(d["index"]), d["name"], d["type"], d["vendor"],
                      d.get("driver") or d.get("driver_version", ""), f"{d['memory_bytes'] / 2**30:.1f}",
                      str(d["subgroup_size"]), f"{d['limits']['max_storage_buffer_range'] / 2**20:.0f}",
                      f"{d['limits']['max_compute_shared_memory_size'] / 2**10:.0f}"] for d in devs]
    w = [max(len(r[c]) for r in rows) for c in range(len(head))]
    return "\n".join("  ".join(v.ljust(w[c]) for c, v in enumerate(r)).rstrip() for r in rows)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--json" in argv:  # raw in-process probe: this IS the subprocess devices() runs
        try:
            out = {"devices": _probe_inproc(), "error": None}
        except Exception as e:  # noqa: BLE001 - report any failure as data
            out = {"devices": [], "error": str(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    print(format_table(devices()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
