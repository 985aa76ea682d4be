"""Router latency: an alert in Redis (its ``adpulse:alerts`` stream entry) → the webhook has received it.

Per run, on a fresh embedded stack (only its Redis-compatible server is used) with ONE
``python -m adpulse router`` whose routes send every alert to a generic webhook (HMAC-signed) served by
this script on loopback: N alerts are written with XADD, one at a time, a random ``--spacing`` apart (and
bursts of ``--burst`` alerts of one channel, which the router groups). Latency = the wall time the webhook
handler read the request − the stream entry's id (the Redis server's clock at XADD; same machine, same
clock). Target: p95 ≤ 500 ms on loopback.

    python benchmarks/router_latency.py --alerts 300
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

# Before the imports below, so that the script runs from a checkout without installing (ruff allows
# imports after sys.path.insert).
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (
    REPO,
    Started,
    command_and_machine,
    free_ports,
    percentile,
    section_head,
    write_markdown,
)
from procstat import cpu_seconds

from adpulse.settings import Settings
from streams.keys import Keys

TARGET_P95_S = 0.5
SECRET = "router-latency-benchmark-secret"
BEGIN = "<!-- benchmarks/router_latency.py: begin (generated; rerun the script to refresh) -->"
END = "<!-- benchmarks/router_latency.py: end -->"


async def webhook(port: int, received: dict[str, float]) -> Any:
    """A webhook on loopback that checks the signature and notes when each alert id arrived."""
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Adpulse-Signature", ""), expected):
            return web.Response(status=401)
        received.setdefault(orjson.loads(body)["id"], arrived)
        return web.Response(text="{}")

    app = web.Application()
    app.add_routes([web.post("/hook", hook)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def alert(i: int, channel: str) -> dict[str, Any]:
    return {
        "id": f"bench-{i:05d}",
        "fingerprint": f"anomaly/ctr/{channel}/-/{i}",
        "status": "firing",
        "change": "fired",
        "kind": "anomaly",
        "severity": "warning",
        "metric": "ctr",
        "channel": channel,
        "campaign": None,
        "value": 0.0115,
        "baseline": 0.024,
        "change_pct": -52.1,
        "summary": f"CTR fell 52 % ({i})",
        "fired_at": datetime.now(UTC).isoformat(),
    }


async def measure(
    args: argparse.Namespace, settings: Settings, hook_port: int
) -> tuple[dict[str, float], dict[str, float]]:
    import redis.asyncio as aioredis

    received: dict[str, float] = {}
    runner = await webhook(hook_port, received)
    client = aioredis.from_url(settings.redis_url)
    written: dict[str, float] = {}
    rng = random.Random(args.seed)
    try:
        i = 0
        while i < args.alerts:
            size = args.burst if rng.random() < 0.2 else 1
            channel = f"ch{rng.randrange(10):02d}"
            for _ in range(min(size, args.alerts - i)):
                entry = await client.xadd(
                    Keys(settings.redis_prefix).alerts, {"alert": orjson.dumps(alert(i, channel))}
                )
                written[f"bench-{i:05d}"] = int(entry.decode().split("-")[0]) / 1000
                i += 1
            await asyncio.sleep(rng.uniform(args.spacing / 2, args.spacing * 1.5))
        deadline = time.monotonic() + 30
        while len(received) < len(written) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
        await runner.cleanup()
    return written, received


def one_run(args: argparse.Namespace, group_wait_s: float, workdir: Path, started: Started) -> dict[str, Any]:
    from adpulse.stack import EmbeddedStack

    kafka_port, redis_port, hook_port, router_port = free_ports(4)
    run_dir = workdir / f"wait{group_wait_s:g}"
    run_dir.mkdir(parents=True)
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        home=run_dir / "home",
        router_port=router_port,
        router_group_wait_s=group_wait_s,
    )
    routes = run_dir / "routes.yml"
    routes.write_text(
        f"targets:\n  hook: {{type: webhook, url: 'http://127.0.0.1:{hook_port}/hook', "
        "secret: '${BENCH_SECRET}'}\ndefault_targets: [hook]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADPULSE_")}
    env.update(settings.to_env(), BENCH_SECRET=SECRET, ADPULSE_ENV_FILE=str(run_dir / "no.env"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    stack = EmbeddedStack(settings)
    stack.up(timeout_s=30.0)
    try:
        router = started.add(
            subprocess.Popen(
                [sys.executable, "-m", "adpulse", "router", "--config", str(routes)],
                cwd=run_dir,
                env=env,
                stdout=(run_dir / "router.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{router_port}/healthz", timeout=1)
                break
            except OSError:
                if router.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the router did not start; see {run_dir / 'router.log'}") from None
                time.sleep(0.2)
        cpu_before = cpu_seconds(router.pid) or 0.0
        began = time.monotonic()
        written, received = asyncio.run(measure(args, settings, hook_port))
        cpu = ((cpu_seconds(router.pid) or 0.0) - cpu_before) / max(time.monotonic() - began, 1e-9)
        started.stop(router)
    finally:
        stack.down()
    latencies = [received[k] - written[k] for k in written if k in received]
    return {
        "group_wait_s": group_wait_s,
        "alerts": len(written),
        "delivered": len(latencies),
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "max": max(latencies),
        "min": min(latencies),
        "cpu": cpu,
    }


def markdown(runs: list[dict[str, Any]], info: dict[str, str], command: str, args: argparse.Namespace) -> str:
    lines = [
        *section_head(BEGIN, "Router latency", command, info),
        (
            "Per run: a fresh embedded stack (its valkey only), ONE `python -m adpulse router` with a "
            "routes file sending every alert to a signed generic webhook served by the benchmark on "
            f"loopback (aiohttp; the signature is checked). {args.alerts} alerts are written with XADD one "
            f"by one, {args.spacing * 1000:.0f} ms ± 50 % apart, a fifth of them as bursts of {args.burst} "
            "alerts of one channel. **Latency = when the webhook read the request − the stream entry id "
            "(Redis server time at XADD).** Same machine, same clock."
        ),
        "",
        "| `ADPULSE_ROUTER_GROUP_WAIT_S` | delivered | p50 | p95 | max | min | target p95 ≤ 500 ms "
        "| router CPU (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        default = " (default)" if r["group_wait_s"] == Settings().router_group_wait_s else ""
        lines.append(
            f"| {r['group_wait_s']:g}{default} | {r['delivered']} of {r['alerts']} "
            f"| {r['p50'] * 1000:,.0f} ms | **{r['p95'] * 1000:,.0f} ms** "
            f"| {r['max'] * 1000:,.0f} ms | {r['min'] * 1000:,.0f} ms | "
            f"{'met' if r['p95'] <= TARGET_P95_S else 'missed'} | {r['cpu']:.2f} |"
        )
    lines += [
        "",
        "The group wait is what a lone alert waits for others of its channel to share one message "
        "(Feishu, DingTalk, WeCom and Slack get one message per burst; a webhook one request per alert).",
        "",
        END,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--alerts", type=int, default=300, help="alerts per run (default 300)")
    parser.add_argument(
        "--spacing", type=float, default=0.05, help="seconds between writes, mean (default 0.05)"
    )
    parser.add_argument("--burst", type=int, default=5, help="alerts per burst (default 5)")
    parser.add_argument(
        "--wait",
        dest="waits",
        type=float,
        action="append",
        help="ADPULSE_ROUTER_GROUP_WAIT_S of a run (repeatable; default: the setting's default, and 0)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    waits = args.waits or [Settings().router_group_wait_s, 0.0]
    command, info = command_and_machine("router_latency.py", argv)
    started = Started()
    runs = []
    with tempfile.TemporaryDirectory(prefix="adpulse-router-latency-") as tmp:
        try:
            for wait in waits:
                result = one_run(args, wait, Path(tmp), started)
                runs.append(result)
                print(
                    f"[group wait {wait:g} s] {result['delivered']} of {result['alerts']} delivered: "
                    f"p50 {result['p50'] * 1000:,.0f} ms p95 {result['p95'] * 1000:,.0f} ms "
                    f"max {result['max'] * 1000:,.0f} ms; router CPU {result['cpu']:.2f} cores"
                )
        finally:
            started.stop_all()
    if not args.no_write:
        write_markdown(args.output, markdown(runs, info, command, args), BEGIN, END)
        print(f"wrote {args.output}")
    return 0 if all(r["delivered"] == r["alerts"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
