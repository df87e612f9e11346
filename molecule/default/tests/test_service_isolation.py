"""Each service keeps its secrets to itself: its own group reads them, the other services cannot."""
import pytest

SERVICES = ("litellm", "vllm", "open-webui")


def _secrets(host):
    """(path, the one service that may read it) for every secret the appliance writes."""
    engines = host.run("ls /etc/llm-appliance/vllm/").stdout.split()
    assert any(name.endswith(".env") for name in engines), "no engine environment found"
    return ([(path, "litellm") for path in ("/etc/llm-appliance/litellm/litellm.env",
                                             "/etc/llm-appliance/litellm/keys.json",
                                             "/var/lib/llm-appliance/litellm/spool")]
            + [("/etc/llm-appliance/vllm/" + name, "vllm") for name in engines if name.endswith(".env")]
            + [("/var/lib/llm-appliance/open-webui/data", "open-webui")])


def _can_read(host, user, path):
    return host.run("runuser -u %s -- test -r %s -a \\( -f %s -o -x %s \\)", user, path, path, path).rc == 0


@pytest.mark.parametrize("user", SERVICES)
def test_each_service_has_its_own_group_and_the_shared_one_only(host, user):
    ids = host.run("id -gn %s; id -Gn %s", user, user)
    assert ids.rc == 0, ids.stderr
    primary, groups = ids.stdout.splitlines()
    assert primary == user
    assert sorted(groups.split()) == sorted([user, "llm-appliance"])


def test_only_the_owning_service_reads_a_secret(host):
    seen = []
    for path, owner in _secrets(host):
        assert host.file(path).exists, path
        for user in SERVICES:
            seen.append((path, user, _can_read(host, user, path), user == owner))
    wrong = [(path, user, readable) for path, user, readable, expected in seen if readable != expected]
    assert not wrong, wrong

