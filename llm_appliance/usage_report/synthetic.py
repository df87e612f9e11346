"""A synthetic month like the reference one: ~385k requests, 95% code completion, 116 API
users with a skewed spread, working-hours traffic with bursts. Deterministic by seed.

Rows are streamed into PostgreSQL with COPY, so millions of rows take seconds.
"""
import datetime as dt
import math
import random

from llm_appliance.usage_report.report import period_bounds

MODELS = {"completion": ("code", "qwen-coder"), "chat": ("chat", "gemma-chat"), "other": ("eval", "qwen3-eval")}


def _users(rng, count):
    """Zipf-like activity: a few heavy users, a long tail (what the reference month showed)."""
    weights = [1.0 / (rank ** 1.1) for rank in range(1, count + 1)]
    total = sum(weights)
    return ["user%03d" % i for i in range(count)], [w / total for w in weights]


def generate(period, rows, seed=0, users=116, completion_share=0.95, chat_share=0.04):
    """Yield usage rows (tuples in COPY column order) for the period."""
    rng = random.Random(seed)
    start, end = period_bounds(period)
    names, weights = _users(rng, users)
    working_days = [start + dt.timedelta(days=d) for d in range((end - start).days)
                    if (start + dt.timedelta(days=d)).weekday() < 5]
    per_day = rows / len(working_days)
    produced = 0
    for index, day in enumerate(working_days):
        count = int(round(per_day * (index + 1))) - int(round(per_day * index))
        produced += count
        if index == len(working_days) - 1:
            count += rows - produced
        times = []
        while len(times) < count:
            # Working hours 08:00-18:00 with a lunch dip; a third of the traffic comes in bursts.
            hour = rng.gauss(13, 2.6)
            if not 8 <= hour < 18:
                continue
            moment = day + dt.timedelta(hours=hour)
            if rng.random() < 0.012:
                for _ in range(min(rng.randint(15, 35), count - len(times))):
                    times.append(moment + dt.timedelta(seconds=rng.uniform(0, 6)))
            else:
                times.append(moment)
        for number, moment in enumerate(sorted(times)):
            roll = rng.random()
            call_type = "completion" if roll < completion_share else "chat" if roll < completion_share + chat_share \
                else "other"
            alias, model = MODELS[call_type]
            user = rng.choices(names, weights)[0]
            prompt = int(rng.lognormvariate(6.2, 0.6)) if call_type == "completion" else int(rng.lognormvariate(7.3, 0.9))
            completion = int(rng.lognormvariate(3.2, 0.7)) if call_type == "completion" else int(rng.lognormvariate(5.5, 0.6))
            ttft = rng.lognormvariate(math.log(120 if call_type == "completion" else 350), 0.4)
            latency = ttft + completion * rng.uniform(10, 14)
            failed = rng.random() < 0.003
            yield ("%s-%d-%d" % (day.strftime("%Y%m%d"), seed, number), moment,
                   moment + dt.timedelta(milliseconds=latency), user, user + "-key", alias, model,
                   "%s@127.0.0.1" % model, call_type, prompt, 0 if failed else completion, ttft, latency,
                   "failure" if failed else "success", "Timeout" if failed else None,
                   "Continue/1.2" if call_type == "completion" else "OpenWebUI")


COLUMNS = ("request_id", "started_at", "ended_at", "user_id", "key_alias", "model_alias", "model", "deployment",
           "call_type", "prompt_tokens", "completion_tokens", "ttft_ms", "latency_ms", "status", "error_class",
           "user_agent")


def load(connection, period, rows, seed=0):
    """COPY the synthetic rows into usage_events; returns the number written."""
    written = 0
    with connection.cursor() as cursor:
        with cursor.copy("COPY usage_events (%s) FROM STDIN" % ", ".join(COLUMNS)) as copy:
            for row in generate(period, rows, seed):
                copy.write_row(row)
                written += 1
    connection.commit()
    return written
