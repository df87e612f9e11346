"""The postgresql role: loopback only, password auth, databases, grants, dumps and restore."""
import pytest


def test_server_running_and_enabled(host):
    service = host.service("postgresql@15-main")
    assert service.is_running
    assert service.is_enabled


def test_listens_on_loopback_only(host):
    sockets = {s for s in host.socket.get_listening_sockets() if s.endswith(":5432")}
    assert sockets == {"tcp://127.0.0.1:5432", "tcp://::1:5432"}


def test_password_required(host):
    no_password = host.run("PGCONNECT_TIMEOUT=5 psql -w -h 127.0.0.1 -U llm_gateway -d llm_appliance -c 'SELECT 1'")
    assert no_password.rc != 0
    assert "password" in no_password.stderr
    wrong = host.run("PGPASSWORD=wrong psql -w -h 127.0.0.1 -U llm_gateway -d llm_appliance -c 'SELECT 1'")
    assert wrong.rc != 0
    assert "password authentication failed" in wrong.stderr


def test_gateway_role_logs_in_with_its_password(host):
    cmd = host.run("PGPASSWORD=demo-gateway-db-password psql -w -h 127.0.0.1 -U llm_gateway -d llm_appliance "
                   "-At -c 'SELECT current_user'")
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.strip() == "llm_gateway"


def test_passwords_stored_as_scram(psql):
    hashes = psql("SELECT rolname || ' ' || left(rolpassword, 13) FROM pg_authid "
                  "WHERE rolcanlogin AND rolname <> 'postgres' ORDER BY 1")
    assert hashes.splitlines() == [
        "llm_gateway SCRAM-SHA-256",
        "llm_gpu_sampler SCRAM-SHA-256",
        "llm_report SCRAM-SHA-256",
        "open_webui SCRAM-SHA-256",
    ]


def test_databases_and_owners(psql):
    rows = psql("SELECT datname || ' ' || pg_get_userbyid(datdba) FROM pg_database "
                "WHERE datname IN ('llm_appliance', 'open_webui') ORDER BY 1")
    assert rows.splitlines() == ["llm_appliance llm_usage", "open_webui open_webui"]


def _as_role(host, role, password, sql):
    return host.run("PGPASSWORD=%s psql -w -h 127.0.0.1 -U %s -d llm_appliance -v ON_ERROR_STOP=1 -At -c %s",
                    password, role, sql)


def _refused(result):
    """PostgreSQL's refusals: a missing grant, or an act only the owner may do."""
    return result.rc != 0 and ("permission denied" in result.stderr or "must be owner" in result.stderr)


GATEWAY = ("llm_gateway", "demo-gateway-db-password")
REPORT = ("llm_report", "demo-report-db-password")
SAMPLER = ("llm_gpu_sampler", "demo-gpu-sampler-db-password")
PROBE_ID = "grant-probe-0001"
INSERT_USAGE = "INSERT INTO usage_events (request_id, started_at) VALUES ('%s', now())" % PROBE_ID
INSERT_SAMPLE = "INSERT INTO gpu_samples (sampled_at, host, gpu_index) VALUES (now(), 'grant-probe', 0)"


@pytest.fixture()
def probe_rows(psql):
    yield
    psql("DELETE FROM usage_events WHERE request_id = '%s'" % PROBE_ID, "llm_appliance")
    psql("DELETE FROM gpu_samples WHERE host = 'grant-probe'", "llm_appliance")


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM usage_events",
    "UPDATE usage_events SET model = 'x' WHERE false",
    "DELETE FROM usage_events WHERE false",
    "TRUNCATE usage_events",
    "DROP TABLE usage_events",
    "ALTER TABLE usage_events ADD COLUMN probe int",
    "CREATE TABLE grant_probe (n int)",
    "SELECT count(*) FROM gpu_samples",
    INSERT_SAMPLE,
])
def test_gateway_role_may_only_insert_usage_rows(host, probe_rows, sql):
    refused = _as_role(host, *GATEWAY, sql)
    assert _refused(refused), (sql, refused.stdout, refused.stderr)


def test_each_role_does_what_it_is_for(host, probe_rows):
    for role, sql in [(GATEWAY, INSERT_USAGE + " ON CONFLICT DO NOTHING"), (SAMPLER, INSERT_SAMPLE)]:
        done = _as_role(host, *role, sql)
        assert done.rc == 0, (role[0], done.stderr)
    read = _as_role(host, *REPORT, "SELECT count(*) FROM usage_events WHERE request_id = '%s'" % PROBE_ID)
    assert read.rc == 0 and read.stdout.strip() == "1", read.stderr
    samples = _as_role(host, *REPORT, "SELECT count(*) FROM gpu_samples WHERE host = 'grant-probe'")
    assert samples.rc == 0 and samples.stdout.strip() == "1", samples.stderr


@pytest.mark.parametrize("role, sql", [
    (REPORT, INSERT_USAGE),
    (REPORT, "DELETE FROM usage_events WHERE false"),
    (REPORT, "UPDATE gpu_samples SET host = 'x' WHERE false"),
    (REPORT, "CREATE TABLE grant_probe (n int)"),
    (SAMPLER, "SELECT count(*) FROM usage_events"),
    (SAMPLER, "SELECT count(*) FROM gpu_samples"),
    (SAMPLER, INSERT_USAGE),
    (SAMPLER, "DELETE FROM gpu_samples WHERE false"),
])
def test_report_and_sampler_roles_are_refused_the_rest(host, probe_rows, role, sql):
    refused = _as_role(host, *role, sql)
    assert _refused(refused), (role[0], sql, refused.stderr)


def test_table_owner_cannot_log_in(host, psql):
    psql("ALTER ROLE llm_usage PASSWORD 'owner-probe'")
    try:
        login = _as_role(host, "llm_usage", "owner-probe", "SELECT 1")
        assert login.rc != 0 and "not permitted to log in" in login.stderr, login.stderr
    finally:
        psql("ALTER ROLE llm_usage PASSWORD NULL")


def test_backup_timer_enabled(host):
    timer = host.service("llm-appliance-pg-backup.timer")
    assert timer.is_enabled
    assert timer.is_running
    verify = host.run("systemd-analyze verify /etc/systemd/system/llm-appliance-pg-backup.service "
                      "/etc/systemd/system/llm-appliance-pg-backup.timer")
    assert verify.rc == 0, verify.stderr


@pytest.fixture()
def restore_probe_db(psql):
    psql("DROP DATABASE IF EXISTS restore_probe")
    psql("CREATE DATABASE restore_probe")
    yield "restore_probe"
    psql("DROP DATABASE IF EXISTS restore_probe")


def test_dump_then_restore(host, psql, restore_probe_db):
    """The documented restore brings back what the nightly dump saved."""
    psql("CREATE TABLE events (id int PRIMARY KEY, what text); INSERT INTO events VALUES (1, 'kept'), (2, 'also kept')",
         database=restore_probe_db)

    run = host.run("systemctl start llm-appliance-pg-backup.service")
    assert run.rc == 0, host.run("journalctl -u llm-appliance-pg-backup.service --no-pager -n 30").stdout
    dumps = host.run("ls -1t /var/backups/postgresql/restore_probe-*.dump").stdout.split()
    assert dumps, "the dump service wrote no dump of restore_probe"
    assert host.file(dumps[0]).user == "postgres"
    assert host.file("/var/backups/postgresql").mode == 0o700

    psql("DELETE FROM events WHERE id = 2; INSERT INTO events VALUES (3, 'after the dump')", database=restore_probe_db)

    restored = host.run("llm-appliance-pg-restore %s", restore_probe_db)
    assert restored.rc == 0, restored.stderr
    assert psql("SELECT string_agg(what, ',' ORDER BY id) FROM events", database=restore_probe_db) == "kept,also kept"


def test_backup_retention_removes_old_dumps(host):
    old = "/var/backups/postgresql/retention_probe-20000101T000000Z.dump"
    host.run("runuser -u postgres -- touch -d '30 days ago' %s", old)
    assert host.file(old).exists
    run = host.run("systemctl start llm-appliance-pg-backup.service")
    assert run.rc == 0
    assert not host.file(old).exists
