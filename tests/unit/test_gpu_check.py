"""The GPU check each CUDA engine runs before it starts (roles/vllm/files/llm-appliance-gpu-check).

nvidia-smi cannot run on a machine without GPUs, so a stand-in script answers the two queries the
check makes, in nvidia-smi's csv,noheader,nounits format; the molecule scenario runs the real
check on a host without a driver.
"""
import importlib.machinery
import importlib.util
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "roles/vllm/files/llm-appliance-gpu-check"
H100 = "NVIDIA H100 80GB HBM3"


def load_check():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


gpu_check = load_check()


@pytest.fixture()
def fake_smi(tmp_path):
    """An nvidia-smi stand-in: answers --query-gpu and --query-compute-apps from JSON rows."""
    def make(gpus, apps=(), fail=None):
        path = tmp_path / "nvidia-smi"
        path.write_text("#!%s\nimport sys\nGPUS = %s\nAPPS = %s\nFAIL = %r\n" % (
            sys.executable, json.dumps(gpus), json.dumps(list(apps)), fail) + (
            "if FAIL:\n    print(FAIL)\n    sys.exit(9)\n"
            "rows = APPS if any(a.startswith('--query-compute-apps') for a in sys.argv) else GPUS\n"
            "for row in rows:\n    print(', '.join(str(v) for v in row))\n"))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)
    return make


def run(smi, *gpus, fraction="0.90"):
    args = ["--unit", "vllm-qwen-coder", "--memory-fraction", fraction, "--nvidia-smi", smi]
    for gpu in gpus:
        args += ["--gpu", gpu]
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_ready_gpus_pass(fake_smi):
    smi = fake_smi([[0, H100, 81559, 1, 81079], [1, H100, 81559, 1, 81079]])
    result = run(smi, "0=" + H100, "1=" + H100)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "vllm-qwen-coder: GPU 0 (%s), 1 (%s) ready" % (H100, H100)


def test_missing_driver_is_named(tmp_path):
    result = run(str(tmp_path / "no-nvidia-smi"), "0=" + H100)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "vllm-qwen-coder cannot start: no NVIDIA driver on this host (nvidia-smi not found); "
        "the plan puts it on GPU 0 (%s)." % H100)


def test_missing_gpu_names_what_the_host_has(fake_smi):
    smi = fake_smi([[0, H100, 81559, 1, 81079]])
    result = run(smi, "0=" + H100, "1=" + H100)
    assert result.returncode == 1
    assert "GPU 1 (%s) is missing: this host has GPU(s) 0 (%s)" % (H100, H100) in result.stderr


def test_wrong_gpu_kind(fake_smi):
    smi = fake_smi([[0, "NVIDIA A100-SXM4-80GB", 81920, 1, 81000]])
    result = run(smi, "0=" + H100)
    assert result.returncode == 1
    assert "GPU 0 is a NVIDIA A100-SXM4-80GB, the plan expected a %s" % H100 in result.stderr


def test_busy_gpu_names_the_holder(fake_smi):
    smi = fake_smi([[0, H100, 81559, 60000, 21559]], apps=[["00000000:19:00.0", 4242, "python3", 60000]])
    result = run(smi, "0=" + H100)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "GPU 0 is busy: 21559 MiB free of 81559 MiB, the engine needs 90% of it (73403 MiB)" in line
    assert "(GPU processes: 4242,python3,60000)" in line
    assert len(result.stderr.strip().splitlines()) == 1


def test_driver_that_fails_is_quoted(fake_smi):
    smi = fake_smi([], fail="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    result = run(smi, "0=" + H100)
    assert result.returncode == 1
    assert "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate" in result.stderr


def test_unknown_memory_is_not_a_failure():
    gpus = gpu_check.parse_query("0, NVIDIA H100 PCIe, [N/A], [N/A], [N/A]\n")
    assert gpu_check.check(gpus, {0: "NVIDIA H100 PCIe"}, 0.9) == []


@pytest.mark.parametrize("bad", ["x=NVIDIA H100", "0=", "H100"])
def test_bad_gpu_argument(bad):
    with pytest.raises(gpu_check.GpuCheckError, match="expected INDEX=NAME"):
        gpu_check.parse_expected([bad])


def test_unreadable_answer():
    with pytest.raises(gpu_check.GpuCheckError, match="cannot read nvidia-smi's answer"):
        gpu_check.parse_query("No devices were found\n")


SPECULATIVE_CONFIG = '{"method":"ngram","num_speculative_tokens":5,"prompt_lookup_max":4,"prompt_lookup_min":2}'


def test_rendered_unit_runs_the_check_with_the_plan(tmp_path):
    """The plan's GPUs and memory share reach the unit's ExecStartPre (rendered by Ansible)."""
    os.environ.setdefault("ANSIBLE_NOCOLOR", "1")
    pytest.importorskip("ansible")
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(str(REPO / "roles/vllm/templates")), keep_trailing_newline=True)
    from ansible.plugins.filter.core import FilterModule as AnsibleCoreFilters

    env.filters.update(AnsibleCoreFilters().filters())   # comment, quote
    spec = importlib.util.spec_from_file_location("systemd_units_filter", REPO / "filter_plugins/systemd_units.py")
    hardening = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hardening)
    env.filters.update(hardening.FilterModule().filters())
    item = {"name": "qwen-coder", "port": 8001, "model_path": "/srv/models/qwen-coder",
            "args": ["--quantization", "fp8", "--speculative-config", SPECULATIVE_CONFIG],
            "gpu_check": [{"index": 0, "name": H100}, {"index": 1, "name": H100}], "gpu_memory_utilization": 0.9}
    unit = env.get_template("vllm.service.j2").render(
        item=item, ansible_managed="managed", vllm_user="vllm", vllm_group="llm-appliance",
        vllm_state_dir="/var/lib/llm-appliance/vllm", vllm_venv="/opt/venv", vllm_start_timeout="20min",
        vllm_start_limit_interval="30min", vllm_start_limit_burst=5, vllm_offline_environment={"HF_HUB_OFFLINE": "1"},
        vllm_libexec_dir="/usr/local/libexec/llm-appliance", __vllm_tls_args=[], vllm_peer_addresses=[],
        __vllm_state_environment={"HOME": "/var/lib/llm-appliance/vllm"})
    assert ("ExecStartPre=/usr/bin/python3 /usr/local/libexec/llm-appliance/llm-appliance-gpu-check "
            "--unit vllm-qwen-coder \\\n    --memory-fraction 0.9 \\\n"
            "    --gpu '0=%s' \\\n    --gpu '1=%s'\n" % (H100, H100)) in unit
    assert "StartLimitBurst=5\n" in unit and "StartLimitIntervalSec=30min\n" in unit
    # Arguments with quotes (the speculative config's JSON) reach vLLM whole: systemd unquotes them
    # as a shell does (systemd.service, "Command lines").
    exec_start = unit[unit.index("ExecStart="):].split("\n\n")[0].replace("\\\n", " ")
    assert shlex.split(exec_start)[-4:] == ["--quantization", "fp8", "--speculative-config", SPECULATIVE_CONFIG]
    assert "DeviceAllow=char-nvidia-uvm rw\n" in unit and "ReadWritePaths=/var/lib/llm-appliance/vllm\n" in unit
