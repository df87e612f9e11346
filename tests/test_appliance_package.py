"""The appliance's package: built on the controller into a reproducible wheel, installed with its
hash into a venv as the roles do on hosts, replaced exactly when its sources change.

The playbook runs for real on this machine (connection local), into venvs under tmp_path.
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
BUILDER = REPO / "roles/appliance_package/files/build-appliance-package"


@pytest.fixture()
def source(tmp_path):
    """A copy of the package's sources that a test may edit."""
    copy = tmp_path / "src"
    copy.mkdir()
    shutil.copy(REPO / "pyproject.toml", copy)
    shutil.copytree(REPO / "llm_appliance", copy / "llm_appliance",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return copy


def install(tmp_path, source, *extra_args):
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), str(REPO / "tests/appliance_package.yml"),
         "-e", f"python_venv_path={tmp_path / 'venv'}",
         "-e", f"appliance_package_source_dir={source}",
         "-e", f"appliance_package_build_dir={tmp_path / 'build'}", *extra_args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return int(re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", result.stdout).group(1))


def installed_version(tmp_path):
    """The version the venv's own Python finds, run outside the checkout."""
    return subprocess.run(
        [str(tmp_path / "venv/bin/python"), "-c",
         "import llm_appliance, sys; assert 'site-packages' in llm_appliance.__file__; "
         "print(llm_appliance.__version__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()


def build(source, out):
    return subprocess.run([sys.executable, str(BUILDER), str(source), str(out)],
                          capture_output=True, text=True, check=False)


def test_same_sources_give_the_same_wheel(source, tmp_path):
    first, second = build(source, tmp_path / "one"), build(source, tmp_path / "two")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    wheels = [next((tmp_path / d).glob("*.whl")) for d in ("one", "two")]
    assert wheels[0].name == wheels[1].name
    assert wheels[0].read_bytes() == wheels[1].read_bytes()
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    assert f"--hash=sha256:{digest}" in (tmp_path / "one/requirements.txt").read_text()


def test_venv_gets_the_package_with_its_commands_and_keeps_it(source, tmp_path):
    assert install(tmp_path, source) > 0
    wheel = next((tmp_path / "build").glob("*.whl"))
    version = wheel.name.split("-")[1]
    assert re.fullmatch(r"\d+\.\d+\.\d+\+[0-9a-f]{12}", version)
    assert installed_version(tmp_path) == version
    usage = subprocess.run([str(tmp_path / "venv/bin/llm-appliance-model-verify")],
                           capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage: llm-appliance-model-verify NAME DIRECTORY" in usage.stderr
    assert install(tmp_path, source) == 0
    assert install(tmp_path, source, "--check") == 0


def test_changed_sources_replace_the_installed_package(source, tmp_path):
    install(tmp_path, source)
    before = installed_version(tmp_path)
    with open(source / "llm_appliance/model_dir.py", "a", encoding="utf-8") as handle:
        handle.write("\n# an edit\n")
    assert install(tmp_path, source, "--check") > 0
    assert installed_version(tmp_path) == before, "check mode installed the new wheel"
    assert install(tmp_path, source) > 0
    after = installed_version(tmp_path)
    assert after != before and after.split("+")[0] == before.split("+")[0]
    # The host's copy of the wheel directory holds the current wheel only.
    assert [p.name for p in (tmp_path / "venv.appliance").glob("*.whl")] == [f"llm_appliance-{after}-py3-none-any.whl"]


def test_a_python_without_the_toolchain_is_told_which_to_use(source, tmp_path):
    system_python = shutil.which("python3", path="/usr/bin")
    probe = subprocess.run([system_python, "-c", "import flit_core"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip("this machine's system Python has flit_core")
    result = subprocess.run([system_python, str(BUILDER), str(source), str(tmp_path / "out")],
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "lacks flit_core" in result.stderr and "make venv" in result.stderr
    assert not (tmp_path / "out").exists()
