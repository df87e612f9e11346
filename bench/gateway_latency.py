#!/usr/bin/env python3
"""Prints the gateway's added latency against direct vLLM, measured side by side in one run.

    bench/gateway_latency.py --vllm http://127.0.0.1:8001/v1 --vllm-key KEY --vllm-model NAME \
        --gateway http://127.0.0.1:4000/v1 --gateway-key KEY --gateway-model code [--sizes 40,400,2000]

Each burst sends N requests spread evenly over --window seconds (the reference: 40 in 6 s), every
request twice, once to vLLM and once through the gateway, interleaved, so both see the same load.
Added latency = gateway percentile - direct percentile. Bounded in time: --timeout per request,
--deadline per burst; unanswered requests count as errors. Targets 127.0.0.1 only.
Needs httpx (the gateway venv has it). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from urllib.parse import urlparse

import httpx


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def one(client, url, key, model, max_tokens, timeout):
    start = time.perf_counter()
    try:
        response = await client.post(url + "/completions", headers={"Authorization": f"Bearer {key}"},
                                     json={"model": model, "prompt": "Hello", "max_tokens": max_tokens},
                                     timeout=timeout)
        status = response.status_code
    except (TimeoutError, httpx.HTTPError) as err:
        status = type(err).__name__
    return status, (time.perf_counter() - start) * 1000.0


async def burst(args, n):
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    direct, gateway = [], []
    async with httpx.AsyncClient(limits=limits) as client:
        tasks = []
        start = time.perf_counter()
        for i in range(n):
            delay = start + i * args.window / n - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pair = [(direct, args.vllm, args.vllm_key, args.vllm_model),
                    (gateway, args.gateway, args.gateway_key, args.gateway_model)]
            if i % 2:
                pair.reverse()
            for sink, url, key, model in pair:
                task = asyncio.ensure_future(one(client, url, key, model, args.max_tokens, args.timeout))
                task.add_done_callback(lambda t, s=sink: s.append(t.result()))
                tasks.append(task)
        remaining = max(1.0, args.deadline - (time.perf_counter() - start))
        done, pending = await asyncio.wait(tasks, timeout=remaining)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    unanswered_direct = n - len(direct)
    unanswered_gateway = n - len(gateway)
    return direct, gateway, unanswered_direct, unanswered_gateway, time.perf_counter() - start


def loopback(url: str) -> str:
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing {url}: this benchmark targets 127.0.0.1 only")
    return url.rstrip("/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm", required=True)
    parser.add_argument("--vllm-key", required=True)
    parser.add_argument("--vllm-model", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--gateway-key", required=True)
    parser.add_argument("--gateway-model", required=True)
    parser.add_argument("--sizes", default="40,400,2000", help="requests per burst (reference 40, then 10x, 50x)")
    parser.add_argument("--window", type=float, default=6.0, help="seconds each burst is spread over")
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per burst, then the rest are errors")
    args = parser.parse_args()
    args.vllm, args.gateway = loopback(args.vllm), loopback(args.gateway)
    print(f"{'burst':>6} {'direct p50':>10} {'p99':>8} {'gw p50':>8} {'p99':>8} {'added p50':>9} {'added p99':>9} "
          f"{'err direct':>10} {'err gw':>6} {'seconds':>7}  (ms)")
    for n in [int(s) for s in args.sizes.split(",") if s]:
        direct, gateway, lost_d, lost_g, took = asyncio.run(burst(args, n))
        d_ok = [ms for status, ms in direct if status == 200]
        g_ok = [ms for status, ms in gateway if status == 200]
        err_d = lost_d + len(direct) - len(d_ok)
        err_g = lost_g + len(gateway) - len(g_ok)
        d50, d99, g50, g99 = percentile(d_ok, 50), percentile(d_ok, 99), percentile(g_ok, 50), percentile(g_ok, 99)
        print(f"{n:>6} {d50:>10.1f} {d99:>8.1f} {g50:>8.1f} {g99:>8.1f} {g50 - d50:>9.1f} {g99 - d99:>9.1f} "
              f"{err_d:>10} {err_g:>6} {took:>7.1f}")
        for name, results, lost in (("direct", direct, lost_d), ("gateway", gateway, lost_g)):
            kinds = collections.Counter(str(status) for status, _ in results if status != 200)
            if lost:
                kinds["unanswered by the deadline"] = lost
            if kinds:
                print(f"{'':>6} {name} errors: "
                      + ", ".join(f"{kind} x{count}" for kind, count in sorted(kinds.items())))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
