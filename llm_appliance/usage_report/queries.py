"""Every aggregation runs in PostgreSQL; Python only receives the summarised rows.

All queries take the period as a half-open range [start, end) on started_at. Requests the gateway
refused at the door (status 'rejected': bad key, model not allowed, over a limit) never reached a
model: they are counted on their own (REJECTED), not as traffic.
"""

TOTALS = """
SELECT coalesce(call_type, 'other') AS call_type, count(*) AS requests,
       round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS share_pct
FROM usage_events WHERE started_at >= %(start)s AND started_at < %(end)s AND status <> 'rejected'
GROUP BY 1 ORDER BY requests DESC, call_type
"""

DAILY_BY_TYPE = """
SELECT (started_at AT TIME ZONE %(tz)s)::date AS day, coalesce(call_type, 'other') AS call_type, count(*) AS requests
FROM usage_events WHERE started_at >= %(start)s AND started_at < %(end)s AND status <> 'rejected'
GROUP BY 1, 2 ORDER BY 1, 2
"""

TOKENS_BY_MODEL = """
SELECT coalesce(model, model_alias, 'unknown') AS model, count(*) AS requests,
       sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens
FROM usage_events WHERE started_at >= %(start)s AND started_at < %(end)s AND status <> 'rejected'
GROUP BY 1 ORDER BY sum(prompt_tokens) + sum(completion_tokens) DESC, 1
"""

DAILY_TOKENS_BY_MODEL = """
SELECT (started_at AT TIME ZONE %(tz)s)::date AS day, coalesce(model, model_alias, 'unknown') AS model,
       sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens
FROM usage_events WHERE started_at >= %(start)s AND started_at < %(end)s AND status <> 'rejected'
GROUP BY 1, 2 ORDER BY 1, 2
"""

# DISTINCT in a subquery hashes (call_type, user_id) once; count(DISTINCT ...) would sort every row.
USERS_BY_TYPE = """
SELECT call_type, count(*) AS users FROM (
    SELECT DISTINCT coalesce(call_type, 'other') AS call_type, user_id
    FROM usage_events
    WHERE started_at >= %(start)s AND started_at < %(end)s AND status <> 'rejected' AND user_id IS NOT NULL
) AS pairs
GROUP BY 1 ORDER BY 1
"""

PER_USER = """
WITH per_user AS (
    SELECT user_id, count(*) AS requests
    FROM usage_events
    WHERE started_at >= %(start)s AND started_at < %(end)s AND status <> 'rejected' AND user_id IS NOT NULL
    GROUP BY user_id
), ranked AS (
    SELECT requests, ntile(10) OVER (ORDER BY requests DESC) AS decile FROM per_user
)
SELECT count(*) AS users, sum(requests)::bigint AS requests,
       round(avg(requests), 2) AS mean_requests,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY requests) AS median_requests,
       max(requests) AS max_requests,
       round(100.0 * sum(requests) FILTER (WHERE decile = 1) / nullif(sum(requests), 0), 2) AS top10_share_pct
FROM ranked
"""

PER_USER_COUNTS = """
SELECT user_id, count(*) AS requests
FROM usage_events
WHERE started_at >= %(start)s AND started_at < %(end)s AND status <> 'rejected' AND user_id IS NOT NULL
GROUP BY user_id ORDER BY requests DESC, user_id
"""

# For each request: how many requests started in [its start, its start + T), itself included,
# for every window T in one pass (one sort of the period). started_at has microsecond resolution,
# so a frame ending 1 us before start + T is exactly the half-open window; CURRENT ROW in RANGE
# mode takes in the requests that started at the same instant. Only the histogram per window
# leaves PostgreSQL; the summary (maximum, percentiles) is computed from it.
def burst_histograms_sql(window_count):
    frames = ",\n           ".join(
        "count(*) OVER (ORDER BY started_at RANGE BETWEEN CURRENT ROW AND "
        "%%(window_%d)s::interval - interval '1 microsecond' FOLLOWING) AS n%d" % (k, k)
        for k in range(window_count))
    values = ", ".join("(%d, n%d)" % (k, k) for k in range(window_count))
    return """
WITH counts AS MATERIALIZED (
    SELECT %s
    FROM usage_events WHERE started_at >= %%(start)s AND started_at < %%(end)s AND status <> 'rejected'
)
SELECT w.window_index, w.n AS requests_in_window, count(*) AS occurrences
FROM counts CROSS JOIN LATERAL (VALUES %s) AS w(window_index, n)
GROUP BY 1, 2 ORDER BY 1, 2
""" % (frames, values)


LATENCY_BY_MODEL = """
SELECT coalesce(model, model_alias, 'unknown') AS model, count(*) AS requests,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) AS latency_p50_ms,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) AS latency_p95_ms,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) AS latency_p99_ms,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms)::numeric, 1) AS ttft_p50_ms,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms)::numeric, 1) AS ttft_p95_ms,
       round(100.0 * count(*) FILTER (WHERE status <> 'success') / count(*), 3) AS error_rate_pct
FROM usage_events WHERE started_at >= %(start)s AND started_at < %(end)s AND status <> 'rejected'
GROUP BY 1 ORDER BY requests DESC, model
"""

GPU_UTILISATION = """
SELECT host, gpu_index, count(*) AS samples,
       round(avg(utilization_pct)::numeric, 1) AS mean_utilization_pct,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY utilization_pct)::numeric, 1) AS p95_utilization_pct,
       round(avg(memory_used_mib)::numeric, 0) AS mean_memory_used_mib
FROM gpu_samples WHERE sampled_at >= %(start)s AND sampled_at < %(end)s
GROUP BY 1, 2 ORDER BY 1, 2
"""

GPU_DAILY_UTILISATION = """
SELECT (sampled_at AT TIME ZONE %(tz)s)::date AS day, host, gpu_index,
       round(avg(utilization_pct)::numeric, 1) AS mean_utilization_pct
FROM gpu_samples WHERE sampled_at >= %(start)s AND sampled_at < %(end)s
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""

REJECTED = """
SELECT error_class AS refused_as, count(*) AS requests, count(DISTINCT user_id) AS known_users
FROM usage_events WHERE started_at >= %(start)s AND started_at < %(end)s AND status = 'rejected'
GROUP BY 1 ORDER BY requests DESC, 1
"""

# Each budgeted key's tokens in the period (the budget counts prompt and completion tokens, UTC
# months: budget.py) and its requests refused for the budget.
BUDGETS = """
SELECT key_alias AS user_name,
       sum(prompt_tokens::bigint + completion_tokens) AS tokens,
       count(*) FILTER (WHERE status = 'rejected' AND error_class = 'BudgetExhausted') AS refused_for_budget
FROM usage_events
WHERE started_at >= %(start)s AND started_at < %(end)s AND key_alias = ANY (%(names)s)
GROUP BY 1
"""
