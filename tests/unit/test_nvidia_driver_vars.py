"""Each supported system has a repository and package selection in roles/nvidia_driver/vars."""
import pathlib

import jinja2
import pytest
import yaml

ROLE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "nvidia_driver"
SUPPORTED = {"Debian-12": "debian12", "Ubuntu-22": "ubuntu2204", "Ubuntu-24": "ubuntu2404"}


def load(name):
    return yaml.safe_load((ROLE / "vars" / (name + ".yml")).read_text())


def render(value, branch="580"):
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["int"] = int
    context = {"nvidia_driver_branch": branch, "ansible_facts": {"kernel": "6.1.0-18-amd64"}}
    if isinstance(value, list):
        return [render(item, branch) for item in value]
    return env.from_string(value).render(context)


def test_supported_list_matches_vars_files():
    main = load("main")
    assert sorted(main["nvidia_driver_supported"]) == sorted(SUPPORTED)
    present = sorted(p.stem for p in (ROLE / "vars").glob("*.yml") if p.stem != "main")
    assert present == sorted(SUPPORTED)


@pytest.mark.parametrize("system, distro", sorted(SUPPORTED.items()))
def test_repository_and_packages(system, distro):
    data = load(system)
    assert data["nvidia_driver_repo_distro"] == distro
    assert render(data["nvidia_driver_pinning_package"]) == "nvidia-driver-pinning-580"
    assert render(data["nvidia_driver_open_packages"]) == ["nvidia-open"]
    assert render(data["nvidia_driver_proprietary_packages"]) == ["cuda-drivers"]
    prereq = render(data["nvidia_driver_prerequisite_packages"])
    assert "linux-headers-6.1.0-18-amd64" in prereq and "dkms" in prereq
    fm = render(data["nvidia_driver_fabricmanager_packages"])
    assert fm and all(name.startswith(("nvidia-fabricmanager", "libnvidia-nscq")) for name in fm)


@pytest.mark.parametrize("system", ["Ubuntu-22", "Ubuntu-24"])
def test_ubuntu_fabricmanager_names_follow_the_branch(system):
    data = load(system)
    packages = data["nvidia_driver_fabricmanager_packages"]
    assert render(packages, "580") == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]
    assert render(packages, "590") == ["nvidia-fabricmanager", "libnvidia-nscq"]


def test_debian_fabricmanager_names_are_unversioned():
    packages = load("Debian-12")["nvidia_driver_fabricmanager_packages"]
    assert render(packages) == ["nvidia-fabricmanager", "libnvidia-nscq"]


def test_defaults_are_safe():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults["nvidia_driver_allow_reboot"] is False
    assert defaults["nvidia_driver_install_dcgm"] is False
    assert defaults["nvidia_driver_fabricmanager"] == "auto"
    assert defaults["nvidia_driver_expected_gpu_count"] == 0
    assert defaults["nvidia_driver_open_kernel_modules"] is True
    assert str(defaults["nvidia_driver_branch"]) == "580"
    assert defaults["nvidia_driver_repo_base_url"] == "https://developer.download.nvidia.com/compute/cuda/repos"
