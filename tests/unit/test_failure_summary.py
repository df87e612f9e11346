"""tools/failure-summary: CI shows only the end of a run, so the failed tests and fatal tasks of a
scenario's boxed, folded molecule output come back as one line each."""
import pathlib
import subprocess

SUMMARY = pathlib.Path(__file__).resolve().parents[2] / "tools" / "failure-summary"

# As molecule prints them: dimmed box bars, lines folded at 80 columns, continuations indented.
SCENARIO_OUTPUT = """\
INFO     cluster \u279c verify: Executing
  \x1b[2m\u2502\x1b[0m tests/test_cluster.py::test_requests_spread_over_both_replicas[ansible://clu
  \x1b[2m\u2502\x1b[0m   ster-front] PASSED [  4%]
  \x1b[2m\u2502\x1b[0m FAILED - RETRYING: [cluster-front]: Wait for the restarted instance to be
  \x1b[2m\u2502\x1b[0m   healthy (30 retries left).
  \x1b[2m\u2502\x1b[0m fatal: [cluster-gpu1]: FAILED! => {"changed": false, "msg": "unit not
  \x1b[2m\u2502\x1b[0m   found"}
  \x1b[2m\u2502\x1b[0m =========================== short test summary info ============================
  \x1b[2m\u2502\x1b[0m FAILED molecule/cluster/tests/test_cluster.py::test_a_gpu_host_lost_under_load
  \x1b[2m\u2502\x1b[0m   _costs_no_request[ansible://cluster-front] - AssertionError:
  \x1b[2m\u2502\x1b[0m   Counter({200: 59, 500: 1})
  \x1b[2m\u2502\x1b[0m ======================== 1 failed, 40 passed in 423.58s ========================
INFO     cluster \u279c verify: Executed: Failed
"""


def run(tmp_path, text):
    log = tmp_path / "scenario.out"
    log.write_text(text, encoding="utf-8")
    return subprocess.run([str(SUMMARY), str(log)], capture_output=True, text=True, check=True).stdout.splitlines()


def test_failed_tests_and_fatal_tasks_come_back_unfolded_one_line_each(tmp_path):
    lines = run(tmp_path, SCENARIO_OUTPUT)
    assert lines == [
        'fatal: [cluster-gpu1]: FAILED! => {"changed": false, "msg": "unit not found"}',
        "FAILED molecule/cluster/tests/test_cluster.py::test_a_gpu_host_lost_under_load"
        "_costs_no_request[ansible://cluster-front] - AssertionError: Counter({200: 59, 500: 1})",
    ]


def test_a_log_without_failures_says_so(tmp_path):
    lines = run(tmp_path, "INFO     cluster \u279c verify: Executed: Successful\n")
    assert len(lines) == 1 and lines[0].startswith("(no failed test or fatal task found in ")
