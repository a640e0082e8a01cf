"""A soak of ``unite serve``: hundreds of mixed requests, with the process's memory sampled.

    python benchmarks/bench_soak.py [--requests 500] [--clients 16] [--seed 0]

Starts the server's app in-process on a free loopback port with the real offline pair and sends
``--requests`` requests from ``--clients`` concurrent clients, drawn (seeded) from a mix of what a
shared service sees: short chats, chats with a ~600-token prompt, a conversation's later turn,
plain completions, streams read to the end, streams the client drops after its first chunk,
structured output (``json_schema``), tools, sampled requests with a seed, and malformed bodies
(each must get a 4xx, never a 500). Prints the requests sent, the answers by status, p50/p99
latency of the answered ones, and the resident set size at the start, middle and end (sampled
every second; the peak too). Not part of ``make test``: a benchmark prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
import torch  # noqa: E402
from server_harness import running  # noqa: E402

from unite_integrations import UniTEEngine  # noqa: E402
from unite_integrations.defaults import DEFAULT_MEMBERS  # noqa: E402

MODEL = f"unite:{'+'.join(DEFAULT_MEMBERS)}"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
BAD_BODIES: list[Any] = [
    {"model": MODEL, "messages": []},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "12"},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 5},
    {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]},
    {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": 7}}],
    },
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
    {"model": "another-model", "messages": [{"role": "user", "content": "hi"}]},
    "not json at all",
]


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _text(n_words: int, seed: int) -> str:
    files = sorted((ROOT / "data" / "MMLU" / "test").glob("*.jsonl"))
    words: list[str] = []
    for line in filter(None, files[seed % len(files)].read_text().split("\n")):
        words += json.loads(line)["question"].split()
        if len(words) >= n_words:
            break
    return " ".join(words[:n_words])


def _request(kind: str, rng: random.Random) -> tuple[str, Any, bool, bool]:
    """(path, body, stream, drop after the first chunk) of one request of ``kind``."""
    user = {"role": "user", "content": rng.choice(["Hello!", "Name a colour.", "Count to 3."])}
    body: dict[str, Any] = {"model": MODEL, "messages": [user], "max_tokens": rng.randint(4, 16)}
    if kind == "long":
        body["messages"] = [{"role": "user", "content": _text(450, rng.randint(0, 50)) + " Why?"}]
    elif kind == "turn":
        body["messages"] = [
            {"role": "system", "content": _text(200, 3)},
            user,
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "And another?"},
        ]
    elif kind == "completion":
        body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6}
        return "/completions", body, False, False
    elif kind == "json":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON},
        }
        body["max_tokens"] = 48
    elif kind == "tools":
        body["tools"], body["max_tokens"] = [WEATHER], 48
        body["messages"] = [{"role": "user", "content": "What is the weather in Paris?"}]
    elif kind == "sampled":
        body.update(temperature=0.8, top_p=0.95, seed=rng.randint(0, 1000))
    elif kind == "bad":
        return "/chat/completions", rng.choice(BAD_BODIES), False, False
    stream = kind in ("stream", "drop")
    if stream:
        body["stream"] = True
    return "/chat/completions", body, stream, kind == "drop"


KINDS = {
    "short": 25,
    "long": 10,
    "turn": 10,
    "completion": 8,
    "stream": 12,
    "drop": 8,
    "json": 7,
    "tools": 5,
    "sampled": 5,
    "bad": 10,
}


def _send(
    client: httpx.Client, path: str, body: Any, stream: bool, drop: bool
) -> tuple[int, float]:
    start = time.perf_counter()
    content = body if isinstance(body, str) else json.dumps(body)
    headers = {"content-type": "application/json"}
    if not stream:
        r = client.post(path, content=content, headers=headers)
        return r.status_code, time.perf_counter() - start
    with client.stream("POST", path, content=content, headers=headers) as r:
        for _ in r.iter_lines():
            if drop:
                break  # the client goes away mid-stream
        return r.status_code, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=args.requests)
    jobs = [(k, *_request(k, rng)) for k in kinds]
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; {args.requests} requests, {args.clients} clients"
    )
    engine = UniTEEngine(list(DEFAULT_MEMBERS))
    samples: list[tuple[int, int, int]] = []  # RSS, KV caches of the rows in flight, stores
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            m = engine.metrics()
            samples.append((_rss(), m.kv_bytes, m.prefix_bytes_held))
            done.wait(1.0)

    statuses: Counter[tuple[str, int]] = Counter()
    latency: list[float] = []
    finished = [0]
    lock = threading.Lock()
    with running(engine) as base:
        client = httpx.Client(base_url=base, timeout=900)
        _send(client, *_request("short", rng)[:2], False, False)  # warm-up
        threading.Thread(target=sample, daemon=True).start()
        start = time.perf_counter()

        def one(job: tuple[str, str, Any, bool, bool]) -> None:
            kind, path, body, stream, drop = job
            try:
                status, seconds = _send(client, path, body, stream, drop)
            except httpx.HTTPError as e:
                status, seconds = -1, 0.0
                print(f"  {kind}: {type(e).__name__}: {e}")
            with lock:
                statuses[(kind, status)] += 1
                if 200 <= status < 300 and not drop:
                    latency.append(seconds)
                finished[0] += 1
                if finished[0] % 50 == 0:
                    m = engine.metrics()
                    print(
                        f"  {finished[0]} answered, RSS {_rss() / 2**30:.2f} GiB, KV caches of "
                        f"{m.rows_in_flight} rows {m.kv_bytes / 2**30:.2f} GiB, stores "
                        f"{m.prefix_bytes_held / 2**30:.2f} GiB",
                        flush=True,
                    )

        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, jobs))
        wall = time.perf_counter() - start
        done.set()
        metrics = client.get(base.removesuffix("/v1") + "/metrics").text
    by_status = Counter[int]()
    for (_, status), n in statuses.items():
        by_status[status] += n
    print(
        f"{args.requests} requests in {wall:.0f} s; answers by status: {dict(sorted(by_status.items()))}"
    )
    for kind in KINDS:
        got = {s: n for (k, s), n in statuses.items() if k == kind}
        print(f"  {kind:10} {got}")
    ordered = sorted(latency)
    print(
        f"latency of answered requests (streams read to the end included): p50 "
        f"{statistics.median(ordered):.2f} s, p99 {ordered[int(0.99 * (len(ordered) - 1))]:.2f} s"
    )
    rss = [r for r, _, _ in samples]
    third = max(len(rss) // 3, 1)
    print(
        f"RSS: start {rss[0] / 2**30:.2f} GiB, middle {rss[len(rss) // 2] / 2**30:.2f} GiB, end "
        f"{rss[-1] / 2**30:.2f} GiB, peak {max(rss) / 2**30:.2f} GiB; mean of the first and last "
        f"thirds {statistics.mean(rss[:third]) / 2**30:.2f} / "
        f"{statistics.mean(rss[-third:]) / 2**30:.2f} GiB"
    )
    # What the growth is: the KV caches of the rows in flight and the stores, or something else
    # (the rest: weights, activations, allocator slack). Sampled together, once a second.
    rest = [r - kv - held for r, kv, held in samples]
    peak = max(range(len(samples)), key=lambda n: rss[n])
    print(
        f"at the RSS peak: KV caches {samples[peak][1] / 2**30:.2f} GiB, stores "
        f"{samples[peak][2] / 2**30:.2f} GiB, the rest {rest[peak] / 2**30:.2f} GiB; the rest "
        f"at start {rest[0] / 2**30:.2f}, middle {rest[len(rest) // 2] / 2**30:.2f}, end "
        f"{rest[-1] / 2**30:.2f}, peak {max(rest) / 2**30:.2f} GiB; KV caches peak "
        f"{max(kv for _, kv, _ in samples) / 2**30:.2f} GiB"
    )
    for line in metrics.splitlines():
        if line.startswith(("unite_engine_prefix", "unite_requests_cancelled")):
            print(" ", line)
    print("500s:", sum(n for (_, s), n in statuses.items() if s >= 500))


if __name__ == "__main__":
    main()
