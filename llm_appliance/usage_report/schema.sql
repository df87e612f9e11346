-- Usage events: one row per request through the gateway. Applied idempotently by the roles
-- that write (gateway) and read (usage report) it.
CREATE TABLE IF NOT EXISTS usage_events (
    id                bigserial PRIMARY KEY,
    request_id        text,
    started_at        timestamptz NOT NULL,
    ended_at          timestamptz,
    user_id           text,
    key_alias         text,
    model_alias       text,
    model             text,
    deployment        text,
    call_type         text NOT NULL DEFAULT 'other',
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    ttft_ms           real,
    latency_ms        real,
    status            text NOT NULL DEFAULT 'success',
    error_class       text,
    user_agent        text
);
-- A spooled row replayed after an outage must not be counted twice.
CREATE UNIQUE INDEX IF NOT EXISTS usage_events_request_id ON usage_events (request_id) WHERE request_id IS NOT NULL;
-- Period scans: rows arrive in time order, so a BRIN index is tiny and enough for month ranges;
-- the btree serves the burst windows' ordered scans.
CREATE INDEX IF NOT EXISTS usage_events_started_at_brin ON usage_events USING brin (started_at);
CREATE INDEX IF NOT EXISTS usage_events_started_at ON usage_events (started_at);

CREATE TABLE IF NOT EXISTS gpu_samples (
    sampled_at      timestamptz NOT NULL,
    host            text NOT NULL,
    gpu_index       integer NOT NULL,
    utilization_pct real,
    memory_used_mib integer
);
CREATE INDEX IF NOT EXISTS gpu_samples_sampled_at ON gpu_samples (sampled_at);

-- Monthly token budgets: the gateway's role may insert usage rows, not read them, so it asks
-- this function (run as the tables' owner) for the tokens of the keys it names since a time.
CREATE INDEX IF NOT EXISTS usage_events_key_alias_started_at ON usage_events (key_alias, started_at);
CREATE OR REPLACE FUNCTION tokens_used_since(since timestamptz, aliases text[])
    RETURNS TABLE (key_alias text, tokens bigint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT e.key_alias, sum(e.prompt_tokens::bigint + e.completion_tokens)
    FROM usage_events e
    WHERE e.key_alias = ANY (aliases) AND e.started_at >= since
    GROUP BY e.key_alias
$$;
-- Granted by name to the gateway's role alone (usage_report's schema tasks).
REVOKE ALL ON FUNCTION tokens_used_since(timestamptz, text[]) FROM PUBLIC;
