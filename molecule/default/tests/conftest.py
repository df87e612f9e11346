"""Helpers shared by the testinfra checks of the default scenario."""
import pytest


@pytest.fixture()
def psql(host):
    """Run SQL as the postgres superuser over the local socket; return stripped stdout."""

    def run(sql, database="postgres", check=True):
        cmd = host.run("runuser -u postgres -- psql -v ON_ERROR_STOP=1 -At -d %s -c %s",
                       database, sql)
        if check:
            assert cmd.rc == 0, cmd.stderr
        return cmd.stdout.strip()

    return run


# Units the scenario's side effect (cuda_engine.yml) leaves failed on purpose: the CUDA engine on
# a host without a GPU. tests/test_cuda_engine.py checks them, then removes them.
CUDA_CHECK_UNITS = ("vllm-qwen-coder.service", "vllm-gemma-chat.service")
