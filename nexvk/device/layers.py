"""The Khronos validation layer, turned on through the loader's environment variables.

A pip-built Kompute never prints validation messages, so the layer is told to log to a
file that callers count. Must run before the process creates its first Vulkan instance.
"""
import os
from pathlib import Path

LAYER = "VK_LAYER_KHRONOS_validation"
_MANIFEST = "VkLayer_khronos_validation.json"
_DIRS = ["/usr/share/vulkan/explicit_layer.d", "/usr/local/share/vulkan/explicit_layer.d",
         "/etc/vulkan/explicit_layer.d"]


def available():
    dirs = _DIRS + [d for d in os.environ.get("VK_LAYER_PATH", "").split(os.pathsep) if d]
    return any((Path(d) / _MANIFEST).exists() for d in dirs)


def enable(log_path):
    """Enable the layer, with synchronization validation, logging errors and warnings to
    log_path; False if not installed."""
    if not available():
        return False
    log_path = Path(log_path).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    settings = log_path.parent / "vk_layer_settings.txt"
    settings.write_text("khronos_validation.debug_action = VK_DBG_LAYER_ACTION_LOG_MSG\n"
                        f"khronos_validation.log_filename = {log_path}\n"
                        "khronos_validation.report_flags = error,warn\n"
                        # hazards between dispatches (a missing barrier) that lavapipe hides
                        "khronos_validation.enables = "
                        "VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT\n")
    os.environ["VK_LAYER_SETTINGS_PATH"] = str(settings.parent)
    layers = [x for x in os.environ.get("VK_INSTANCE_LAYERS", "").split(":") if x]
    if LAYER not in layers:
        os.environ["VK_INSTANCE_LAYERS"] = ":".join(layers + [LAYER])
    return True


def messages(log_path):
    """Validation messages logged so far, one string each: a message starts on an unindented
    line ("VUID-...(ERROR / SPEC): msgNum: ...") and its object list follows, indented."""
    path = Path(log_path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.strip() and not line[0].isspace():
            out.append(line)
        elif line.strip() and out:
            out[-1] += "\n" + line
    return out
