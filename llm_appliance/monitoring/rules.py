"""Prometheus alert rules for the appliance, made from the site's plan and the inventory's thresholds.

Where the plan knows the answer the rule comes from it: the engines that must be up (one rule per
model and host), each model's KV cache and batch size, and its predicted decode speed. The other
thresholds (error ratios, ages, disk, GPU idleness, the time-to-first-token target of each profile)
come from the inventory (monitoring_alert_settings). Every alert carries a summary, a description
and a runbook: what to look at first and what usually fixes it.

The engines' series carry the labels the scrape jobs give them (scrape.py): model (the plan's model
name) and host (the inventory name of the GPU host).
"""

from __future__ import annotations

from typing import Any

DEFAULT_SETTINGS: dict[str, Any] = {
    # How long a condition must hold before its alert fires.
    "engine_down_for": "2m",
    "target_down_for": "5m",
    "capacity_for": "10m",
    "ttft_for": "10m",
    "gateway_errors_for": "10m",
    "spool_for": "15m",
    "decode_for": "30m",
    "gpu_idle_for": "1h",
    # Restarts of one engine within the window that mean a crash loop.
    "engine_restarts": 3,
    "engine_restarts_window": "30m",
    "kv_cache_usage_ratio": 0.9,
    # A request waiting this long (the minimum of the queue over the window is above zero).
    "requests_waiting_window": "5m",
    # 90th percentile time to first token, seconds, by profile.
    "ttft_seconds": {"completion": 2.0, "chat": 5.0, "eval": 30.0},
    "gateway_5xx_ratio": 0.05,
    "gateway_429_ratio": 0.2,
    "dump_max_age_hours": 36,
    "certificate_min_days": 14,
    "disk_used_ratio": 0.85,
    # A model decoding at less than this share of its predicted speed per stream.
    "decode_below_plan_ratio": 0.5,
    # The KV cache vLLM found below this share of the plan's.
    "kv_below_plan_ratio": 0.9,
    "gpu_idle_utilisation_percent": 10,
    "gpu_idle_window": "3d",
    "facts_max_age_s": 300,
}

RUNBOOK_INTRO = "Runbook: "


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str, runbook: str,
           labels: dict[str, str] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_ and for_ != "0s":
        rule["for"] = for_
    rule["labels"] = {"severity": severity, **(labels or {})}
    rule["annotations"] = {"summary": summary, "description": description, "runbook": RUNBOOK_INTRO + runbook}
    return rule


def _selector(**labels: str) -> str:
    return "{" + ",".join('%s="%s"' % (k, v.replace("\\", "\\\\").replace('"', '\\"'))
                          for k, v in sorted(labels.items())) + "}"


def _number(value: float) -> str:
    return "%g" % value


def merged_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(DEFAULT_SETTINGS)
    unknown = sorted(set(settings or {}) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError("monitoring_alert_settings: unknown setting(s) %s; the known ones are %s"
                         % (", ".join(unknown), ", ".join(sorted(DEFAULT_SETTINGS))))
    for key, value in (settings or {}).items():
        if key == "ttft_seconds":
            merged[key] = {**DEFAULT_SETTINGS[key], **(value or {})}
        else:
            merged[key] = value
    return merged


def engine_rules(site_plan: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    rules = []
    for host, host_plan in sorted((site_plan.get("hosts") or {}).items()):
        for model in host_plan.get("models") or []:
            name = model["name"]
            where = _selector(job="vllm", model=name, host=host)
            rules.append(_alert(
                "LlmEngineDown", "up%s == 0 or absent(up%s)" % (where, where), s["engine_down_for"], "critical",
                "Engine %s on %s is down" % (name, host),
                "Prometheus cannot read the metrics of %s on %s (port %d): the model's requests go to its other "
                "replicas, or fail with 503 where it has none." % (name, host, model["port"]),
                "on %s: systemctl status vllm-%s; journalctl -u vllm-%s -n 200 (out of memory, a GPU error, "
                "weights missing). Start it again with systemctl restart vllm-%s, or re-run "
                "ansible-playbook site.yml --tags serving --limit %s." % (host, name, name, name, host),
                {"model": name, "host": host}))
            seqs = model.get("max_num_seqs")
            if seqs:
                rules.append(_alert(
                    "LlmBatchFull",
                    "min_over_time(vllm:num_requests_running%s[%s]) >= %d" % (where, s["capacity_for"], seqs),
                    "0s", "warning",
                    "%s on %s runs its full batch of %d requests" % (name, host, seqs),
                    "For %s the engine has run at its planned batch limit (max_num_seqs %d; the plan expects "
                    "%s concurrent requests at its typical length); further requests wait."
                    % (s["capacity_for"], seqs, model.get("max_concurrency")),
                    "look at the gateway's request rate per user (usage report, Grafana 'Models and gateway'); "
                    "add a replica (replicas in appliance_models) or a GPU host if the load is real.",
                    {"model": name, "host": host}))
            planned_kv = model.get("kv_cache_tokens")
            if planned_kv:
                floor = planned_kv * float(s["kv_below_plan_ratio"])
                rules.append(_alert(
                    "LlmKvCacheBelowPlan",
                    "appliance_kv_cache_tokens_found%s < %s" % (_selector(model=name, host=host), _number(floor)),
                    "0s", "warning",
                    "%s on %s found less KV cache than its plan" % (name, host),
                    "vLLM reports {{ $value }} KV-cache tokens; the plan counted on %d (alert below %d%%). "
                    "Fewer requests fit at once than the plan promises." % (planned_kv, s["kv_below_plan_ratio"] * 100),
                    "compare the engine's start log (journalctl -u vllm-%s | grep -i 'KV cache') with "
                    "ansible-playbook playbooks/plan.yml; another process on the GPU (nvidia-smi) or a changed "
                    "vLLM release is the usual cause." % name,
                    {"model": name, "host": host}))
            predicted = model.get("predicted_tokens_per_s")
            if predicted:
                floor = predicted * float(s["decode_below_plan_ratio"])
                itl = "vllm:inter_token_latency_seconds"
                window = s["decode_for"]
                rules.append(_alert(
                    "LlmDecodeBelowPlan",
                    # The speed first: its value is what the alert reports. Only while the model decodes.
                    "(rate(%s_count%s[%s]) / rate(%s_sum%s[%s]) < %s) and (rate(%s_count%s[%s]) > 0)"
                    % (itl, where, window, itl, where, window, _number(floor), itl, where, window),
                    "0s", "warning",
                    "%s on %s decodes far below its plan" % (name, host),
                    "Each stream gets {{ $value | humanize }} tokens/s over %s; the plan predicted %s "
                    "(alert below %s)." % (window, _number(predicted), _number(floor)),
                    "check GPU clocks and throttling (Grafana 'Hosts and GPUs', nvidia-smi -q -d PERFORMANCE), "
                    "other processes on the model's GPUs, and the batch size (vllm:num_requests_running).",
                    {"model": name, "host": host}))
    for model in site_plan.get("models") or []:
        target = s["ttft_seconds"].get(model.get("profile") or "chat")
        if not target:
            continue
        where = _selector(job="vllm", model=model["name"])
        rules.append(_alert(
            "LlmTimeToFirstTokenSlow",
            "histogram_quantile(0.9, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket%s[%s]))) > %s"
            % (where, s["ttft_for"], _number(target)),
            s["ttft_for"], "warning",
            "%s answers slowly: first token after more than %ss" % (model["name"], _number(target)),
            "The 90th percentile time to first token of %s is {{ $value | humanizeDuration }}, above the %s "
            "profile's target of %ss." % (model["name"], model.get("profile"), _number(target)),
            "requests waiting (vllm:num_requests_waiting) mean the model is short of capacity; long prompts "
            "without prefix-cache hits mean prefill dominates. Add a replica, or lower max_model_len.",
            {"model": model["name"]}))
    rules += [
        _alert("LlmEngineRestarting",
               "changes(process_start_time_seconds{job=\"vllm\"}[%s]) >= %d"
               % (s["engine_restarts_window"], s["engine_restarts"]),
               "0s", "critical", "Engine {{ $labels.model }} on {{ $labels.host }} keeps restarting",
               "It started {{ $value }} times within %s: a crash loop." % s["engine_restarts_window"],
               "journalctl -u vllm-{{ $labels.model }} -n 300 on {{ $labels.host }}: out of GPU memory after a "
               "change of the plan, a driver/CUDA mismatch, or corrupt weights (re-run --tags models)."),
        _alert("LlmKvCacheFull",
               "vllm:kv_cache_usage_perc{job=\"vllm\"} > %s" % _number(s["kv_cache_usage_ratio"]),
               s["capacity_for"], "warning", "KV cache of {{ $labels.model }} on {{ $labels.host }} is nearly full",
               "{{ $value | humanizePercentage }} of the KV cache is in use: requests are queued or preempted.",
               "the model is short of capacity at its current context lengths: add a replica, lower "
               "max_model_len, or move it to more GPUs."),
        _alert("LlmRequestsWaiting",
               "min_over_time(vllm:num_requests_waiting{job=\"vllm\"}[%s]) > 0" % s["requests_waiting_window"],
               "0s", "warning", "Requests wait for {{ $labels.model }} on {{ $labels.host }}",
               "For %s at least {{ $value }} requests have waited for a place in the batch at every "
               "scrape." % s["requests_waiting_window"],
               "see LlmBatchFull and LlmKvCacheFull; the per-user view of the usage report tells whether one "
               "client causes it (the gateway's per-key limits can hold it back)."),
    ]
    return rules


def gateway_rules(s: dict[str, Any]) -> list[dict[str, Any]]:
    total = "sum(rate(llm_gateway_requests_total{route!=\"other\"}[5m]))"
    return [
        _alert("GatewayErrors",
               "sum(rate(llm_gateway_requests_total{status=~\"5..\"}[5m])) / %s > %s"
               % (total, _number(s["gateway_5xx_ratio"])),
               s["gateway_errors_for"], "critical", "The gateway answers many requests with 5xx",
               "{{ $value | humanizePercentage }} of the gateway's answers are server errors (alert above %s)."
               % _number(s["gateway_5xx_ratio"]),
               "llm_gateway_requests_total by model and status tells which model; 503 means an engine is down "
               "(LlmEngineDown), 502/504 an engine that fails or times out: journalctl -u 'litellm@*' and "
               "-u 'vllm-*'."),
        _alert("GatewayRateLimited",
               "sum(rate(llm_gateway_requests_total{status=\"429\"}[5m])) / %s > %s"
               % (total, _number(s["gateway_429_ratio"])),
               s["gateway_errors_for"], "warning", "The gateway refuses many requests for their limits (429)",
               "{{ $value | humanizePercentage }} of requests are over a key's or a person's limit.",
               "the usage report's per-user table shows who; raise that user's rpm/tpm in litellm_users if "
               "the use is legitimate, or talk to them."),
        _alert("UsageSpoolNotDraining",
               "min_over_time(llm_appliance_usage_spool_files[%s]) > 0" % s["spool_for"],
               "0s", "warning", "Usage rows wait on disk on {{ $labels.host }}",
               "The gateway instance {{ $labels.gateway_instance }} has kept usage rows in its spool for %s: "
               "PostgreSQL does not take them." % s["spool_for"],
               "on the database host: systemctl status postgresql; on the gateway host: journalctl -u "
               "'litellm@*' | grep usage. The rows are written as soon as PostgreSQL answers; nothing is lost "
               "until the spool's limit (llm_appliance_usage_spool_limit_bytes)."),
        _alert("UsageRowsDropped",
               "increase(llm_appliance_usage_rows_dropped_total[1h]) > 0",
               "0s", "critical", "Usage rows were dropped on {{ $labels.host }}",
               "The spool of gateway instance {{ $labels.gateway_instance }} was full: {{ $value }} usage rows "
               "were lost in the last hour.",
               "bring PostgreSQL back first; then raise litellm_spool_max_mb if the outage was long."),
    ]


def host_rules(s: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        _alert("TargetDown", "up{job!=\"vllm\"} == 0", s["target_down_for"], "warning",
               "{{ $labels.job }} on {{ $labels.host }} cannot be scraped",
               "Prometheus has not read {{ $labels.instance }} ({{ $labels.job }}) for %s." % s["target_down_for"],
               "systemctl status of the service behind it on {{ $labels.host }} (gateway: litellm@N; node: "
               "prometheus-node-exporter; nginx, postgresql, redis: prometheus-<name>-exporter)."),
        _alert("DatabaseDumpTooOld",
               "time() - appliance_last_dump_timestamp_seconds > %d" % (int(s["dump_max_age_hours"]) * 3600),
               "0s", "critical", "No good database dump for more than %s hours on {{ $labels.host }}"
               % s["dump_max_age_hours"],
               "The newest complete dump run is {{ $value | humanizeDuration }} old.",
               "systemctl status llm-appliance-pg-backup.service; journalctl -u llm-appliance-pg-backup; "
               "run it by hand with systemctl start llm-appliance-pg-backup.service and check free disk."),
        _alert("CertificateExpiring",
               "appliance_certificate_expiry_timestamp_seconds - time() < %d"
               % (int(s["certificate_min_days"]) * 86400),
               "0s", "critical", "A certificate on {{ $labels.host }} expires within %s days"
               % s["certificate_min_days"],
               "{{ $labels.path }} expires in {{ $value | humanizeDuration }}.",
               "re-run ansible-playbook site.yml (the internal CA renews certificates that are due), or "
               "replace the operator's certificate (edge_tls_cert_file) and run --tags edge."),
        _alert("DiskFull",
               "1 - node_filesystem_avail_bytes{fstype!~\"tmpfs|ramfs|squashfs|nsfs\"} "
               "/ node_filesystem_size_bytes{fstype!~\"tmpfs|ramfs|squashfs|nsfs\"} > %s"
               % _number(s["disk_used_ratio"]),
               "10m", "warning", "{{ $labels.mountpoint }} on {{ $labels.host }} is above %d%% full"
               % round(float(s["disk_used_ratio"]) * 100),
               "{{ $value | humanizePercentage }} used.",
               "du -xh --max-depth=2 {{ $labels.mountpoint }} | sort -h | tail; usual suspects: retired models "
               "(state: absent purges them), old dumps, Prometheus's retention (monitoring_retention_size)."),
        _alert("HostFactsStale",
               "time() - appliance_facts_last_run_timestamp_seconds > %d" % int(s["facts_max_age_s"]),
               "0s", "warning", "The appliance's own facts on {{ $labels.host }} are stale",
               "llm-appliance-node-facts last ran {{ $value | humanizeDuration }} ago.",
               "systemctl status llm-appliance-node-facts.timer llm-appliance-node-facts.service."),
    ]


def gpu_rules(s: dict[str, Any]) -> list[dict[str, Any]]:
    reasons = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
    # The reasons are a bit mask: 0x20 software thermal slowdown, 0x40 hardware thermal slowdown.
    thermal = "(floor(%s / 32) %% 2 == 1) or (floor(%s / 64) %% 2 == 1)" % (reasons, reasons)
    return [
        _alert("GpuXidError", "DCGM_FI_DEV_XID_ERRORS > 0", "0s", "critical",
               "GPU {{ $labels.gpu }} on {{ $labels.host }} reported XID {{ $value }}",
               "The driver reported an XID error on this GPU; engines on it may have failed.",
               "dmesg | grep -i xid on the host; XID 48/63/64/74/79/94/95 need the GPU reset or the host "
               "rebooted and, when they recur, the vendor's support."),
        _alert("GpuEccErrors", "increase(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL[15m]) > 0", "0s", "critical",
               "Uncorrectable memory errors on GPU {{ $labels.gpu }} on {{ $labels.host }}",
               "{{ $value }} double-bit ECC errors in 15 minutes.",
               "nvidia-smi -q -d ECC,ROW_REMAPPER; drain the host's models and reset the GPU; open a case with "
               "the vendor when remapping fails."),
        _alert("GpuThermalThrottling", thermal, "10m", "warning",
               "GPU {{ $labels.gpu }} on {{ $labels.host }} is slowed down for heat",
               "The GPU's clocks have been cut for temperature for 10 minutes.",
               "nvidia-smi -q -d TEMPERATURE,PERFORMANCE; check the server's fans and the room's cooling."),
        _alert("GpuIdle",
               "avg_over_time(DCGM_FI_DEV_GPU_UTIL[%s]) < %s" % (s["gpu_idle_window"],
                                                                _number(s["gpu_idle_utilisation_percent"])),
               s["gpu_idle_for"], "info",
               "GPU {{ $labels.gpu }} on {{ $labels.host }} has done little for %s" % s["gpu_idle_window"],
               "Average utilisation {{ $value }}%% over %s: paid hardware doing nothing." % s["gpu_idle_window"],
               "the plan (ansible-playbook playbooks/plan.yml) shows what runs there; give the GPU a model or "
               "move this one's replicas together."),
    ]


def alert_rules(site_plan: dict[str, Any], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rule file's content: {"groups": [...]} for Prometheus."""
    s = merged_settings(settings)
    return {"groups": [
        {"name": "llm-appliance-engines", "rules": engine_rules(site_plan, s)},
        {"name": "llm-appliance-gateway", "rules": gateway_rules(s)},
        {"name": "llm-appliance-hosts", "rules": host_rules(s)},
        {"name": "llm-appliance-gpus", "rules": gpu_rules(s)},
    ]}
