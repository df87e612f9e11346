"""The engine/driver pairing: a CUDA build of vLLM needs a driver of its CUDA major release."""
import re
from pathlib import Path

import pytest

from llm_appliance.plan.engines import CUDA_MINIMUM_DRIVER, VLLM_CUDA_RELEASES, check_engine_driver, required_driver
from llm_appliance.plan.errors import PlanError

REPO = Path(__file__).resolve().parents[2]
CUDA_LOCKS = sorted((REPO / "roles/vllm/files").glob("requirements-cuda-*.txt"))


def test_a_lock_exists_for_every_recorded_release_and_back():
    locked = {re.match(r"requirements-cuda-(.+)\.txt", p.name).group(1) for p in CUDA_LOCKS}
    assert locked == set(VLLM_CUDA_RELEASES)


@pytest.mark.parametrize("lock", CUDA_LOCKS, ids=lambda p: p.name)
def test_recorded_cuda_release_matches_the_lock(lock):
    """The lock's CUDA runtime wheel says which CUDA the build needs; the table must agree."""
    version = re.match(r"requirements-cuda-(.+)\.txt", lock.name).group(1)
    runtime = re.search(r"^nvidia-cuda-runtime(?:-cu\d+)?==(\d+)\.(\d+)", lock.read_text(), re.MULTILINE)
    assert runtime, "%s pins no nvidia-cuda-runtime wheel" % lock.name
    assert VLLM_CUDA_RELEASES[version].split(".")[0] == runtime.group(1)
    assert int(runtime.group(1)) in CUDA_MINIMUM_DRIVER


def test_cuda_13_build_on_branch_580_passes():
    assert check_engine_driver("cuda", "0.32.0", "580", "580.95.05") == (
        "vLLM 0.32.0 (CUDA 13.0) needs NVIDIA driver 580.65.06 or newer: branch 580, driver 580.95.05")
    assert required_driver("0.32.0") == ("13.0", (580, 65, 6))


def test_cpu_engine_needs_no_driver():
    assert check_engine_driver("cpu", "0.32.0", "470") == "engine cpu: no NVIDIA driver needed"


@pytest.mark.parametrize("branch, version, message", [
    ("570", None, "but nvidia_driver_branch is 570: set nvidia_driver_branch to 580 or newer"),
    ("580", "580.65.05", "but the host's GPUs report driver 580.65.05: upgrade the driver"),
    ("590", "575.51.03", "but the host's GPUs report driver 575.51.03"),
])
def test_older_driver_is_refused_naming_both(branch, version, message):
    with pytest.raises(PlanError) as caught:
        check_engine_driver("cuda", "0.32.0", branch, version)
    assert "vLLM 0.32.0 is built for CUDA 13.0, which needs NVIDIA driver 580.65.06 or newer" in str(caught.value)
    assert message in str(caught.value)


def test_unknown_release_and_bad_inputs_are_named():
    with pytest.raises(PlanError, match=r"vLLM 0.99.0: no CUDA build is recorded for it \(known: 0.32.0\)"):
        check_engine_driver("cuda", "0.99.0", "580")
    with pytest.raises(PlanError, match="nvidia_driver_branch 'r580' is not a driver branch number"):
        check_engine_driver("cuda", "0.32.0", "r580")
    with pytest.raises(PlanError, match="driver version 'unknown' is not a version"):
        check_engine_driver("cuda", "0.32.0", "580", "unknown")
