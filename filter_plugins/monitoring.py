"""Prometheus's scrape jobs and alert rules for the site (llm_appliance/monitoring)."""

import hashlib
import warnings

from ansible.errors import AnsibleFilterError

from llm_appliance.monitoring.rules import alert_rules
from llm_appliance.monitoring.scrape import scrape_configs


def appliance_alert_rules(site_plan, settings=None):
    """The rule file ({"groups": [...]}) from the site's plan and monitoring_alert_settings."""
    try:
        return alert_rules(dict(site_plan or {}), dict(settings or {}))
    except ValueError as err:
        raise AnsibleFilterError(str(err)) from err


def appliance_scrape_configs(addresses, groups, site_plan, gateway_ports, dcgm_hosts, engine_key_file, ca_file,
                             ports=None, redis_host=None):
    """The scrape jobs; addresses: each host of the site as the monitoring host reaches it (itself on
    loopback: appliance_peer_address)."""
    return scrape_configs(dict(addresses), {k: list(v) for k, v in groups.items()}, dict(site_plan or {}),
                          [int(p) for p in gateway_ports], list(dcgm_hosts), engine_key_file, ca_file,
                          dict(ports or {}), redis_host)


def appliance_facts_engines(models, scheme, address, key_file, ca_file):
    """What the host's facts read of each engine on it: its metrics URL, the key and (TLS) the CA."""
    host = "[%s]" % address if ":" in address else address
    return [{"model": m["name"], "url": "%s://%s:%d/metrics" % (scheme, host, int(m["port"])), "key_file": key_file,
             "ca_file": ca_file if scheme == "https" else None} for m in models]


def appliance_htpasswd_line(password, user, seed):
    """`user:{SHA-512 crypt}` for nginx's auth_basic_user_file. The salt is derived from `seed` and the
    password, so that the line is the same on every run (no change reported) until either changes."""
    if ":" in user or not password:
        raise AnsibleFilterError("the monitoring UI needs a user name without ':' (monitoring_ui_user) and a password "
                                 "(vault_monitoring_ui_password in the site's vault)")
    salt = hashlib.sha256(("%s\0%s" % (seed, password)).encode()).hexdigest()[:16]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the standard library's, to Python 3.12: glibc's crypt(3), which nginx checks with

    hashed = crypt.crypt(password, "$6$%s$" % salt)
    if not hashed or not hashed.startswith("$6$"):
        raise AnsibleFilterError("htpasswd: this controller's crypt(3) has no SHA-512 crypt")
    return "%s:%s" % (user, hashed)


class FilterModule:
    def filters(self):
        return {
            "appliance_alert_rules": appliance_alert_rules,
            "appliance_scrape_configs": appliance_scrape_configs,
            "appliance_facts_engines": appliance_facts_engines,
            "appliance_htpasswd_line": appliance_htpasswd_line,
        }
