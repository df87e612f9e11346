"""A synthetic month like the reference one: ~385k requests, 95% code completion, 116 API
users with a skewed spread, working-hours traffic with bursts; and a GPU sample a minute for 4 GPUs,
about 25% busy on average, busier in working hours. Deterministic by seed.

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
            prompt = (int(rng.lognormvariate(6.2, 0.6)) if call_type == "completion"
                      else int(rng.lognormvariate(7.3, 0.9)))
            completion = (int(rng.lognormvariate(3.2, 0.7)) if call_type == "completion"
                          else int(rng.lognormvariate(5.5, 0.6)))
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


# A host name no real GPU host has, so reloading can replace the synthetic samples alone.
SYNTHETIC_HOST = "synthetic-gpu-node"
# Working-hours load per GPU: the coder model spans GPUs 0 and 1 (tensor parallel) and takes most
# of the traffic; chat and eval share the others.
GPU_LOAD = (1.3, 1.3, 0.7, 0.7)
# vLLM takes 90% of an 80 GB GPU's memory up front, whatever the load.
GPU_MEMORY_MIB = 73400


def generate_gpu_samples(period, seed=0, gpus=4, host=SYNTHETIC_HOST):
    """Yield gpu_samples rows (COPY column order): one a minute per GPU over the period."""
    rng = random.Random("gpu-%d" % seed)
    start, end = period_bounds(period)
    moment = start
    while moment < end:
        working = moment.weekday() < 5 and 8 <= moment.hour < 18
        for gpu in range(gpus):
            busy = rng.gauss(65.0 * GPU_LOAD[gpu % len(GPU_LOAD)], 15.0) if working else rng.gauss(8.0, 4.0)
            yield (moment, host, gpu, round(min(100.0, max(0.0, busy))), GPU_MEMORY_MIB + rng.randint(0, 300))
        moment += dt.timedelta(minutes=1)


GPU_COLUMNS = ("sampled_at", "host", "gpu_index", "utilization_pct", "memory_used_mib")


def load(connection, period, rows, seed=0, gpus=4):
    """COPY the synthetic usage rows and GPU samples (none when gpus is 0) in one transaction;
    returns the number of usage rows written. The period's earlier synthetic GPU samples are
    replaced (usage rows are not: their request ids are unique)."""
    written = 0
    start, end = period_bounds(period)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM gpu_samples WHERE host = %s AND sampled_at >= %s AND sampled_at < %s",
                       (SYNTHETIC_HOST, start, end))
        with cursor.copy("COPY usage_events (%s) FROM STDIN" % ", ".join(COLUMNS)) as copy:
            for row in generate(period, rows, seed):
                copy.write_row(row)
                written += 1
        with cursor.copy("COPY gpu_samples (%s) FROM STDIN" % ", ".join(GPU_COLUMNS)) as copy:
            for row in generate_gpu_samples(period, seed, gpus):
                copy.write_row(row)
    connection.commit()
    return written
