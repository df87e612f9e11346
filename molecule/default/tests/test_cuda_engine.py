"""vLLM's CUDA build on this GPU-less host, put there by the scenario's side effect
(cuda_engine.yml) with the vllm role exactly as on a GPU host: installed from the controller's
wheelhouse with no index, the example catalog's arguments accepted by vLLM's own parser and
configuration, and each unit failing on the missing GPU with one clear journal line, then left
failed after its start limit, while the demo's CPU engines keep serving through the gateway.

The units are removed when this module ends, so that later checks see only the demo's engines."""
import json
import shlex
import time

import pytest
from conftest import CUDA_CHECK_UNITS

CUDA_VENV = "/opt/llm-appliance/venvs/vllm-cuda-0.32.0"
CHECK_ARGS = "/usr/local/libexec/llm-appliance/llm-appliance-vllm-check-args"
EXAMPLE_MODELS = tuple(unit[len("vllm-"):-len(".service")] for unit in CUDA_CHECK_UNITS)
ALICE = "sk-demo-alice-0123456789"


@pytest.fixture(scope="module", autouse=True)
def remove_cuda_units_afterwards(host):
    yield
    for name in EXAMPLE_MODELS:
        host.run("systemctl disable --now vllm-%s.service", name)
        host.run("rm -f /etc/systemd/system/vllm-%s.service /etc/llm-appliance/vllm/%s.env", name, name)
    host.run("systemctl daemon-reload")
    host.run("systemctl reset-failed 'vllm-*'")


def exec_start(host, name):
    """The engine's ExecStart from its unit file, as a list of arguments (the plan's, rendered)."""
    lines = host.file("/etc/systemd/system/vllm-%s.service" % name).content_string.splitlines()
    command = []
    for line in lines[[i for i, text in enumerate(lines) if text.startswith("ExecStart=")][0]:]:
        command.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    return shlex.split(" ".join(command)[len("ExecStart="):])


def check_args(host, argv):
    command = ["env", "HF_HUB_OFFLINE=1", "VLLM_NO_USAGE_STATS=1", "HOME=/var/lib/llm-appliance/vllm-check",
               CUDA_VENV + "/bin/python", CHECK_ARGS, *argv]
    return host.run(" ".join(shlex.quote(part) for part in command))


def test_cuda_engine_installed_from_the_wheelhouse(host):
    cmd = host.run("%s/bin/python -c %s", CUDA_VENV,
                   "import vllm, torch; print(vllm.__version__, torch.__version__, torch.version.cuda)")
    assert cmd.rc == 0, cmd.stderr
    version, torch_version, cuda = cmd.stdout.split()
    assert version == "0.32.0"
    assert torch_version.startswith("2.13.0+cu13") and cuda.startswith("13."), cmd.stdout
    # Installed with --no-index: the pinned lock is the one beside the venv.
    assert host.file(CUDA_VENV + ".requirements.txt").contains("vllm==0.32.0")


@pytest.mark.parametrize("name", EXAMPLE_MODELS)
def test_plan_renders_the_example_arguments(host, name):
    argv = exec_start(host, name)
    assert argv[:3] == [CUDA_VENV + "/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    if name == "qwen-coder":
        for flag, value in (("--tensor-parallel-size", "2"), ("--quantization", "fp8_per_tensor"),
                            ("--tool-call-parser", "hermes")):
            assert argv[argv.index(flag) + 1] == value
        assert "--enable-auto-tool-choice" in argv
        # The catalog's n-gram lookup, as one JSON argument that systemd passed whole.
        assert json.loads(argv[argv.index("--speculative-config") + 1]) == {
            "method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    env = host.file("/etc/llm-appliance/vllm/%s.env" % name).content_string
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in env


@pytest.mark.parametrize("name", EXAMPLE_MODELS)
def test_vllm_accepts_the_example_arguments(host, name):
    """vLLM 0.32's own parser, serve checks, parser names, engine arguments and model config."""
    cmd = check_args(host, exec_start(host, name)[3:])
    assert cmd.rc == 0, cmd.stdout + cmd.stderr
    # The speculative step is named only for the model that speculates.
    speculative = ", speculative decoding configuration" if name == "qwen-coder" else ""
    assert cmd.stdout.strip().startswith(
        "vLLM 0.32.0 accepted the arguments through its argument parser, serve checks, tool-call and reasoning "
        "parsers, engine arguments, model configuration%s; stopped before its engine configuration: no GPU here"
        % speculative), cmd.stdout


@pytest.mark.parametrize("extra, reason", [
    (["--no-such-flag"], "argument parser: unrecognized arguments: --no-such-flag"),
    (["--quantization", "fp9"], "model configuration: Value error, Unknown quantization method: fp9."),
    (["--tool-call-parser", "no-such-parser"],
     "tool-call and reasoning parsers: 'invalid tool call parser: no-such-parser"),
    (["--max-model-len", "1000000"], "model configuration: Value error, User-specified max_model_len (1000000) is "
                                     "greater than the derived max_model_len (max_position_embeddings=32768.0"),
    (["--speculative-config", '{"method":"ngram","prompt_lookup_max":2,"prompt_lookup_min":4}'],
     "speculative decoding configuration: Value error, prompt_lookup_min=4 must be <= prompt_lookup_max=2"),
])
def test_vllm_refuses_what_it_does_not_accept(host, extra, reason):
    """The same check must fail: a flag or value that vLLM 0.32 refuses is caught before a start."""
    argv = exec_start(host, "qwen-coder")[3:]
    if "--tool-call-parser" in extra:
        argv = argv[:argv.index("--tool-call-parser")] + argv[argv.index("--tool-call-parser") + 2:]
    elif extra[0] in ("--max-model-len", "--quantization", "--speculative-config"):
        position = argv.index(extra[0])
        argv = argv[:position] + argv[position + 2:]
    cmd = check_args(host, argv + extra)
    assert cmd.rc == 1, cmd.stdout + cmd.stderr
    assert "vLLM 0.32.0 refused the arguments at its " + reason in cmd.stderr, cmd.stderr


def test_role_stopped_at_the_missing_gpu(host):
    """The role's wait saw systemd give up and said why, instead of waiting out its timeout."""
    result = json.loads(host.file("/var/lib/llm-appliance/cuda-check-result.json").content_string)
    message = result["msg"]
    assert "vllm-qwen-coder.service gave up after" in message, message
    assert "vllm-qwen-coder cannot start: no NVIDIA driver on this host (nvidia-smi not found)" in message
    assert "vllm-gemma-chat cannot start: no NVIDIA driver on this host" in message


@pytest.mark.parametrize("name, gpus", [("qwen-coder", "0 (NVIDIA H100 80GB HBM3), 1 (NVIDIA H100 80GB HBM3)"),
                                        ("gemma-chat", "2 (NVIDIA H100 80GB HBM3)")])
def test_unit_fails_with_one_clear_line_and_stops_retrying(host, name, gpus):
    show = dict(line.split("=", 1) for line in host.run(
        "systemctl show vllm-%s.service -p ActiveState -p NRestarts", name).stdout.splitlines())
    assert show["ActiveState"] == "failed", show
    journal = host.run("journalctl -u vllm-%s.service -o cat --no-pager", name).stdout
    line = "vllm-%s cannot start: no NVIDIA driver on this host (nvidia-smi not found); the plan puts it on GPU %s" % (
        name, gpus)
    gave_up = "vllm-%s.service: Start request repeated too quickly." % name
    assert gave_up in journal, journal[-3000:]
    # The starts of the last run (an earlier converge's give-up may precede them): StartLimitBurst=5
    # stops systemd after five starts within the interval (one queued as the limit is reached may
    # still run), then it refuses the next one.
    last_run = journal.rsplit(gave_up, 1)[0].split(gave_up)[-1]
    assert last_run.count(line) in (5, 6), last_run[-3000:]
    # The engine itself never ran.
    assert "vllm.entrypoints" not in journal and "Traceback" not in journal
    time.sleep(12)
    later = host.run("journalctl -u vllm-%s.service -o cat --no-pager", name).stdout
    assert later.count(line) == journal.count(line), "systemd kept restarting vllm-%s" % name


def test_other_models_keep_serving(host):
    cmd = host.run("curl -sS --max-time 120 -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' "
                   "-d %s http://127.0.0.1:4000/v1/completions", ALICE,
                   json.dumps({"model": "code", "prompt": "def add(a, b):", "max_tokens": 4}))
    assert cmd.rc == 0, cmd.stderr
    assert json.loads(cmd.stdout)["usage"]["completion_tokens"] >= 1, cmd.stdout
