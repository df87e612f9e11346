"""What `make demo` prints last works as printed: its one curl command, run from this machine's
plain shell against the converged demo, returns a completion through nginx and the gateway."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_printed_curl_returns_a_completion():
    printed = subprocess.run([sys.executable, str(REPO / "tools/demo-next-steps"), "--print-curl"],
                             capture_output=True, text=True, check=True).stdout.strip()
    result = subprocess.run(["bash", "-c", printed], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["object"] == "text_completion" and answer["usage"]["completion_tokens"] >= 1, answer


def test_summary_names_the_urls_hosts_line_ca_and_key():
    summary = subprocess.run([sys.executable, str(REPO / "tools/demo-next-steps")],
                             capture_output=True, text=True, check=True).stdout
    for expected in ("https://chat.demo.internal", "https://api.demo.internal/v1",
                     "127.0.0.1 chat.demo.internal api.demo.internal", "edge/demo-ca.crt",
                     "sk-demo-alice-0123456789"):
        assert expected in summary
