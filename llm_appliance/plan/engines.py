"""Which NVIDIA driver each pinned vLLM CUDA build needs, checked before any host changes.

vLLM's official wheel is built against one CUDA release (its pinned torch and nvidia-* runtime
wheels say which: roles/vllm/files/requirements-cuda-<version>.txt; a unit test keeps this table
and those locks in step). A CUDA runtime runs on any driver of its major release from the first
one NVIDIA shipped for it (minor version compatibility; NVIDIA's CUDA Compatibility guide,
"CUDA Toolkit and Corresponding Driver Versions"): 12.x from 525.60.13, 13.x from 580.65.06.
"""
from .errors import PlanError

# vLLM release -> CUDA release of its official wheel.
VLLM_CUDA_RELEASES = {
    "0.32.0": "13.0",
}

# CUDA major release -> the oldest Linux driver that runs it, as (branch, minor, patch).
CUDA_MINIMUM_DRIVER = {
    12: (525, 60, 13),
    13: (580, 65, 6),
}


def _driver_tuple(version: object) -> tuple[int, ...]:
    parts = str(version).strip().split(".")
    if not parts[0].isdigit():
        raise ValueError(version)
    return tuple(int(p) if p.isdigit() else 0 for p in parts) + (0,) * (3 - len(parts))


def required_driver(vllm_version: object) -> tuple[str, tuple[int, int, int]]:
    """(CUDA release, minimum driver as a tuple) of a vLLM release's CUDA build."""
    cuda = VLLM_CUDA_RELEASES.get(str(vllm_version))
    if cuda is None:
        raise PlanError("vLLM %s: no CUDA build is recorded for it (known: %s); add its CUDA release to "
                        "VLLM_CUDA_RELEASES in llm_appliance/plan/engines.py together with its lock file"
                        % (vllm_version, ", ".join(sorted(VLLM_CUDA_RELEASES))))
    return cuda, CUDA_MINIMUM_DRIVER[int(cuda.split(".")[0])]


def check_engine_driver(engine: str, vllm_version: str, driver_branch: object,
                        driver_version: str | None = None) -> str:
    """Refuse a CUDA engine whose CUDA release needs a newer driver than the host gets or has.

    driver_branch: the branch the nvidia_driver role pins (nvidia_driver_branch, e.g. "580").
    driver_version: the driver found or declared on the host (e.g. "580.95.05"), when known.
    Returns a one-line summary; raises PlanError naming both sides and the fix.
    """
    if engine != "cuda":
        return "engine %s: no NVIDIA driver needed" % engine
    cuda, minimum = required_driver(vllm_version)
    needed = "%d.%d.%02d" % minimum
    try:
        branch = int(str(driver_branch).strip())
    except ValueError:
        raise PlanError("nvidia_driver_branch %r is not a driver branch number such as 580" % driver_branch) from None
    if branch < minimum[0]:
        raise PlanError("vLLM %s is built for CUDA %s, which needs NVIDIA driver %s or newer, but nvidia_driver_branch "
                        "is %d: set nvidia_driver_branch to %d or newer, or pin a vLLM release built for an older CUDA"
                        % (vllm_version, cuda, needed, branch, minimum[0]))
    if driver_version:
        try:
            found = _driver_tuple(driver_version)
        except ValueError:
            raise PlanError("GPU facts: driver version %r is not a version such as 580.95.05"
                            % driver_version) from None
        if found < minimum:
            raise PlanError("vLLM %s is built for CUDA %s, which needs NVIDIA driver %s or newer, but the host's GPUs "
                            "report driver %s: upgrade the driver (nvidia_driver_branch %d or newer), or pin a vLLM "
                            "release built for an older CUDA"
                            % (vllm_version, cuda, needed, driver_version, minimum[0]))
    return "vLLM %s (CUDA %s) needs NVIDIA driver %s or newer: branch %d%s" % (
        vllm_version, cuda, needed, branch, ", driver %s" % driver_version if driver_version else "")
