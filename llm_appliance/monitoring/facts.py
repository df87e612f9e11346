"""The appliance's own facts as a Prometheus textfile, for node exporter's textfile collector.

    python3 facts.py --config /etc/llm-appliance/monitoring/node-facts.json

Run by a systemd timer on every host (standard library only: it runs with the system's python3).
What it publishes, each where the host has it:
- appliance_certificate_expiry_timestamp_seconds{path}: every certificate the config's globs find;
- appliance_last_dump_timestamp_seconds: the end of the newest complete PostgreSQL dump run (the
  globals file the backup script writes after every database's dump succeeded); before the first
  run, the time the backup directory was made, so that a host that never dumps is noticed;
- the gateway instances' usage-writer counters (spool backlog, rows inserted, dropped), labelled
  gateway_instance;
- appliance_kv_cache_tokens_found{model}: the KV cache each engine found at start (vLLM's
  cache_config_info: blocks x block size), to compare with the plan's;
- appliance_facts_last_run_timestamp_seconds, and appliance_facts_errors{part} for what it could not read.
The file is replaced in one rename: the collector never reads half of it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_INFO_LINE = re.compile(r"^vllm:cache_config_info\{(?P<labels>[^}]*)\}")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{[^}]*\})?\s+(?P<value>\S+)\s*$")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def certificate_not_after(path: str) -> float:
    """The certificate's notAfter as a Unix time (openssl reads PEM; the first certificate of a chain)."""
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", path], check=True, capture_output=True,
                         text=True, timeout=10).stdout.strip()
    stamp = out.split("=", 1)[1]
    return datetime.strptime(stamp, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC).timestamp()


def last_dump_time(dump_dir: str) -> float | None:
    done = [os.path.getmtime(path) for path in glob.glob(os.path.join(dump_dir, "globals-*.sql"))]
    if done:
        return max(done)
    return os.path.getmtime(dump_dir) if os.path.isdir(dump_dir) else None


def usage_writer_lines(metrics_dir: str) -> list[str]:
    """The usage writers' textfiles (usage-writer-<instance>.prom), each series labelled with its instance."""
    lines: list[str] = []
    for path in sorted(glob.glob(os.path.join(metrics_dir, "usage-writer-*.prom"))):
        instance = Path(path).stem.rsplit("-", 1)[-1]
        for raw in Path(path).read_text(encoding="utf-8").splitlines():
            found = _METRIC_LINE.match(raw.strip())
            if not found or found.group("labels"):
                continue
            lines.append('%s{gateway_instance="%s"} %s'
                         % (found.group("name"), _escape(instance), found.group("value")))
    return lines


def engine_kv_tokens(url: str, key_file: str | None, ca_file: str | None, timeout_s: float = 5.0) -> int:
    request = urllib.request.Request(url)
    if key_file:
        request.add_header("Authorization", "Bearer " + Path(key_file).read_text(encoding="utf-8").strip())
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https://") else None
    with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:  # noqa: S310 - the site's engine
        text = answer.read().decode("utf-8", "replace")
    for line in text.splitlines():
        found = _INFO_LINE.match(line)
        if found:
            labels = dict(_LABEL.findall(found.group("labels")))
            return int(float(labels["num_gpu_blocks"])) * int(float(labels["block_size"]))
    raise ValueError("no vllm:cache_config_info in %s" % url)


def collect(config: dict[str, Any], now: float | None = None) -> str:
    lines: list[str] = []
    errors: dict[str, int] = {}

    def failed(part: str, err: BaseException) -> None:
        errors[part] = errors.get(part, 0) + 1
        print("%s: %s" % (part, err), file=sys.stderr)

    certificates = sorted({path for pattern in config.get("certificate_globs") or [] for path in glob.glob(pattern)})
    if certificates:
        lines += ["# HELP appliance_certificate_expiry_timestamp_seconds When the certificate expires.",
                  "# TYPE appliance_certificate_expiry_timestamp_seconds gauge"]
    for path in certificates:
        try:
            lines.append('appliance_certificate_expiry_timestamp_seconds{path="%s"} %d'
                         % (_escape(path), certificate_not_after(path)))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
            failed("certificates", err)
    if config.get("dump_dir"):
        try:
            stamp = last_dump_time(config["dump_dir"])
            if stamp is None:
                raise FileNotFoundError(config["dump_dir"])
            lines += ["# HELP appliance_last_dump_timestamp_seconds End of the newest complete database dump run.",
                      "# TYPE appliance_last_dump_timestamp_seconds gauge",
                      "appliance_last_dump_timestamp_seconds %d" % stamp]
        except OSError as err:
            failed("dump", err)
    if config.get("usage_metrics_dir"):
        try:
            lines += usage_writer_lines(config["usage_metrics_dir"])
        except OSError as err:
            failed("usage_writer", err)
    engines = config.get("engines") or []
    if engines:
        lines += ["# HELP appliance_kv_cache_tokens_found KV-cache tokens the engine found at start.",
                  "# TYPE appliance_kv_cache_tokens_found gauge"]
    for engine in engines:
        try:
            tokens = engine_kv_tokens(engine["url"], engine.get("key_file"), engine.get("ca_file"))
            lines.append('appliance_kv_cache_tokens_found{model="%s"} %d' % (_escape(engine["model"]), tokens))
        except (OSError, ValueError, KeyError) as err:  # an engine that is down or starting
            failed("engine_kv_cache", err)
    lines += ["# HELP appliance_facts_errors Parts of the facts that could not be read in the last run.",
              "# TYPE appliance_facts_errors gauge"]
    for part in ("certificates", "dump", "usage_writer", "engine_kv_cache"):
        lines.append('appliance_facts_errors{part="%s"} %d' % (part, errors.get(part, 0)))
    lines += ["# HELP appliance_facts_last_run_timestamp_seconds When these facts were read.",
              "# TYPE appliance_facts_last_run_timestamp_seconds gauge",
              "appliance_facts_last_run_timestamp_seconds %d" % (time.time() if now is None else now)]
    return "\n".join(lines) + "\n"


def write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=".appliance-facts.", delete=False,
                                     encoding="utf-8") as tmp:
        tmp.write(text)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON: output, certificate_globs, dump_dir, "
                                                        "usage_metrics_dir, engines [{model, url, key_file, ca_file}]")
    args = parser.parse_args(argv)
    try:
        config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        parser.error("cannot read %s: %s" % (args.config, err))
    write_atomically(config["output"], collect(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
