"""The chat router on the real Redis server, delivering to real local HTTP servers; killed with kill -9."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from adpulse.metrics_page import metric_sum
from adpulse.settings import Settings
from adpulse.stack import free_port
from alerts.router.tokens import ActionLinks
from streams.keys import Keys
from tests.conftest import own_stack
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration

SECRET = "adpulse-canary-7f3a-hook-secret"
CHANNELS = ("douyin", "taobao", "wechat", "xiaohongshu", "baidu", "jd")


class Receiver:
    """A webhook receiver on loopback: checks the HMAC signature, records every delivery, answers what
    ``answer(path, count_for_path)`` says (status, headers)."""

    def __init__(
        self,
        delay_s: float = 0.0,
        answer: Callable[[str, int], tuple[int, dict[str, str]]] = lambda path, n: (200, {}),
    ) -> None:
        self.deliveries: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                if delay_s:
                    time.sleep(delay_s)
                with receiver.lock:
                    seen = sum(1 for path, _, _ in receiver.deliveries if path == self.path)
                    if not hmac.compare_digest(self.headers.get("X-Adpulse-Signature", ""), expected):
                        receiver.bad_signatures += 1
                        status, headers = 401, {}
                    else:
                        status, headers = answer(self.path, seen)
                        if status == 200:
                            receiver.deliveries.append((self.path, orjson.loads(body), dict(self.headers)))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def idempotency_keys(self) -> list[str]:
        with self.lock:
            return [headers.get("Idempotency-Key", "") for _, _, headers in self.deliveries]

    def received(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(path, body["id"]) for path, body, _ in self.deliveries]


class RouterProcess:
    def __init__(self, settings: Settings, config: Path, log: Path, name: str, **env: str) -> None:
        self.settings, self.config, self.log, self.name, self.env = settings, config, log, name, env
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RouterProcess:
        env = {
            **os.environ,
            **self.settings.to_env(),
            "ROUTE_SECRET": SECRET,
            "ADPULSE_ROUTER_NAME": self.name,
            "ADPULSE_ROUTER_PORT": str(self.port),
            **self.env,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "adpulse", "router", "--config", str(self.config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self.get("/healthz") is not None or self._dead(), 30, f"router {self.name} ready")
        return self

    def _dead(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"router exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            )
        return False

    def get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.read().decode()
        except OSError:
            return None

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()


def routes_file(tmp_path: Path, receiver: Receiver, extra: str = "") -> Path:
    path = tmp_path / "routes.yml"
    path.write_text(
        "targets:\n"
        f"  hook-a: {{type: webhook, url: '{receiver.url('/a')}', secret: '${{ROUTE_SECRET}}', "
        "timeout_s: 2}\n"
        f"  hook-b: {{type: webhook, url: '{receiver.url('/b')}', secret: '${{ROUTE_SECRET}}', "
        "timeout_s: 2}\n"
        f"{extra}"
        "routes:\n"
        "  - match: {channel: [douyin, taobao]}\n"
        "    targets: [hook-a, hook-b]\n"
        "default_targets: [hook-a]\n"
    )
    return path


def alert(i: int, channel: str | None = None, **fields: Any) -> dict[str, Any]:
    channel = channel or CHANNELS[i % len(CHANNELS)]
    return {
        "id": f"alert-{i:05d}",
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
        "window_start": "2026-11-24T10:00:00+08:00",
        "window_end": "2026-11-24T10:10:00+08:00",
        "summary": f"CTR fell 52 % ({i})",
        "fired_at": "2026-11-24T10:10:03+08:00",
        **fields,
    }


def write_alerts(settings: Settings, alerts: list[dict[str, Any]], active: bool = False) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for item in alerts:
            pipe.xadd(f"{settings.redis_prefix}:alerts", {"alert": orjson.dumps(item)})
            if active:
                pipe.hset(f"{settings.redis_prefix}:alerts:active", item["fingerprint"], orjson.dumps(item))
        pipe.execute()
    finally:
        client.close()


def expected_deliveries(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {
        (path, a["id"])
        for a in alerts
        for path in (("/a", "/b") if a["channel"] in ("douyin", "taobao") else ("/a",))
    }


def test_kill9_in_the_middle_of_1000_alerts_loses_none_and_each_target_takes_each_once(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    alerts = [alert(i) for i in range(1000)]
    expected = expected_deliveries(alerts)
    with Receiver(delay_s=0.002) as receiver:
        config = routes_file(tmp_path, receiver)
        first = RouterProcess(settings, config, tmp_path / "router-1.log", "router-1").start()
        second = RouterProcess(
            settings, config, tmp_path / "router-2.log", "router-2", ADPULSE_ROUTER_CLAIM_IDLE_S="2"
        ).start()
        second.stop()  # it joined the group; it comes back after the kill to take over
        try:
            write_alerts(settings, alerts)
            wait_for(
                lambda: len(receiver.received()) >= 300, 60, "300 deliveries before the kill", interval_s=0.01
            )
            first.kill9()
            at_kill = len(receiver.received())
            assert at_kill < len(expected), "the router finished before the kill: make the receiver slower"
            second.start()  # another router: takes the dead one's pending alerts over after 2 s idle
            wait_for(
                lambda: set(receiver.received()) >= expected,
                120,
                "every alert at every target",
                interval_s=0.2,
            )
            time.sleep(1.0)  # anything sent twice would arrive by now
            received = receiver.received()
            assert set(received) == expected, "an alert is missing at a target"
            # The router marks each delivery in Redis as soon as the target accepts it, so a router killed
            # in the middle leaves at most the one request per target that was in flight unmarked. Its
            # resend carries the same Idempotency-Key: the receiver takes each key once.
            resent = {k: n for k, n in Counter(received).items() if n > 1}
            assert len(resent) <= 2 and all(n == 2 for n in resent.values()), f"sent more than once: {resent}"
            keys = Counter(receiver.idempotency_keys())
            assert len(keys) == len(expected) and all(
                keys[f"{alert_id}:hook-{path[1]}"] == 1 + ((path, alert_id) in resent)
                for path, alert_id in expected
            )
            assert receiver.bad_signatures == 0
            log2 = (tmp_path / "router-2.log").read_text()
            assert "took over" in log2, log2[-2000:]
            metrics = second.get("/metrics")
            # The second router sent what the first had not, plus the requests in flight at the kill.
            sent = metric_sum(metrics, "adpulse_notifications_total", outcome="sent")
            assert sent == len(expected) - at_kill + len(resent)
            assert metric_sum(metrics, "adpulse_notifications_total", outcome="failed") == 0
            client = redis.Redis.from_url(settings.redis_url)
            try:
                assert client.xpending(f"{settings.redis_prefix}:alerts", "router")["pending"] == 0
            finally:
                client.close()
        finally:
            first.stop()
            second.stop()


def test_retries_5xx_honours_retry_after_and_dead_letters_4xx_without_leaking_the_secret(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()

    def answer(path: str, seen: int) -> tuple[int, dict[str, str]]:
        path = path.partition("?")[0]
        if path == "/flaky":
            return (503, {}) if seen == 0 and not flaky_failed.is_set() else (200, {})
        if path == "/busy":
            return (429, {"Retry-After": "1"}) if not busy_failed.is_set() else (200, {})
        return (400, {}) if path == "/broken" else (200, {})

    flaky_failed, busy_failed = threading.Event(), threading.Event()

    def answer_once(path: str, seen: int) -> tuple[int, dict[str, str]]:
        status, headers = answer(path, seen)
        if path == "/flaky" and status != 200:
            flaky_failed.set()
        if path == "/busy" and status != 200:
            busy_failed.set()
        return status, headers

    with Receiver(answer=answer_once) as receiver:
        config = tmp_path / "routes.yml"
        config.write_text(
            "targets:\n"
            f"  flaky: {{type: webhook, url: '{receiver.url('/flaky')}', secret: '${{ROUTE_SECRET}}'}}\n"
            f"  busy: {{type: webhook, url: '{receiver.url('/busy')}', secret: '${{ROUTE_SECRET}}'}}\n"
            f"  broken: {{type: webhook, url: '{receiver.url('/broken')}?token=${{ROUTE_SECRET}}', "
            "secret: '${ROUTE_SECRET}'}\n"
            "default_targets: [flaky, busy, broken]\n"
        )
        router = RouterProcess(
            settings, config, tmp_path / "router.log", "r1", ADPULSE_ROUTER_TOKEN_KEY=SECRET + "-token"
        ).start()
        try:
            write_alerts(settings, [alert(1)])
            client = redis.Redis.from_url(settings.redis_url)
            try:
                wait_for(
                    lambda: client.xlen(f"{settings.redis_prefix}:alerts:dead") == 1, 60, "the dead letter"
                )
                wait_for(
                    lambda: {p for p, _ in receiver.received()} == {"/flaky", "/busy"},
                    60,
                    "retried deliveries",
                )
                dead = client.xrange(f"{settings.redis_prefix}:alerts:dead")[0][1]
                pending = client.xpending(f"{settings.redis_prefix}:alerts", "router")["pending"]
            finally:
                client.close()
            assert dead[b"target"] == b"broken" and b"400" in dead[b"error"]
            assert orjson.loads(dead[b"alert"])["id"] == "alert-00001"
            wait_for(lambda: pending == 0, 1, "the entry acknowledged")
            metrics = router.get("/metrics") or ""
            assert metric_sum(metrics, "adpulse_notifications_total", target="flaky", outcome="retried") >= 1
            assert metric_sum(metrics, "adpulse_notifications_total", target="busy", outcome="retried") >= 1
            assert metric_sum(metrics, "adpulse_notifications_total", target="broken", outcome="failed") == 1
            assert metric_sum(metrics, "adpulse_notifications_total", target="broken", outcome="retried") == 0
            assert metric_sum(metrics, "adpulse_notification_latency_seconds_count", target="flaky") == 1
            for text, where in (
                (metrics, "metrics"),
                ((tmp_path / "router.log").read_text(), "log"),
                (dead[b"error"].decode(), "dead letter"),
            ):
                assert SECRET not in text, f"the secret leaked into the {where}"
        finally:
            router.stop()


def test_acknowledge_link_stops_escalation_and_the_unacknowledged_one_escalates(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    key = secrets.token_hex(32)
    with Receiver() as receiver:
        config = tmp_path / "routes.yml"
        config.write_text(
            "targets:\n"
            f"  team: {{type: webhook, url: '{receiver.url('/team')}', secret: '${{ROUTE_SECRET}}'}}\n"
            f"  boss: {{type: webhook, url: '{receiver.url('/boss')}', secret: '${{ROUTE_SECRET}}'}}\n"
            "routes:\n"
            "  - match: {severity: critical}\n"
            "    targets: [team]\n"
            "    escalate: {after_s: 3, owners: ['@boss'], targets: [boss]}\n"
        )
        router = RouterProcess(
            settings, config, tmp_path / "router.log", "r1", ADPULSE_ROUTER_TOKEN_KEY=key
        ).start()
        try:
            acked, ignored = alert(1, "douyin", severity="critical"), alert(2, "taobao", severity="critical")
            # Acknowledge the first through its chat link, as a user would (GET shows, POST acts).
            links = ActionLinks(key.encode(), f"http://127.0.0.1:{router.port}").for_alert(acked, time.time())
            write_alerts(settings, [acked, ignored], active=True)
            wait_for(lambda: len(receiver.received()) == 2, 30, "both alerts at the team")
            page = urllib.request.urlopen(links["ack"], timeout=5).read().decode()  # noqa: S310
            assert "Acknowledge" in page and "<form" in page
            post = urllib.request.Request(  # noqa: S310
                links["ack"], data=urllib.parse.urlencode({"by": "@zhang.wei"}).encode()
            )
            done = urllib.request.urlopen(post, timeout=5).read().decode()  # noqa: S310
            assert "acknowledged" in done
            forged = links["ack"][:-3] + "xyz"
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(forged, data=b"by=x"), timeout=5)  # noqa: S310
            assert refused.value.code == 403
            wait_for(lambda: ("/boss", "alert-00002") in receiver.received(), 30, "the escalation")
            time.sleep(2.0)
            received = receiver.received()
            assert ("/boss", "alert-00001") not in received, "an acknowledged alert must not escalate"
            escalation = next(body for path, body, _ in receiver.deliveries if path == "/boss")
            assert escalation["change"] == "escalated"
            metrics = router.get("/metrics") or ""
            wait_for(
                lambda: (
                    metric_sum(router.get("/metrics"), "adpulse_alerts_unacknowledged", severity="critical")
                    == 1
                ),
                10,
                "one unacknowledged critical",
            )
            assert metric_sum(metrics, "adpulse_alerts_unacknowledged_age_seconds", severity="critical") > 0
        finally:
            router.stop()


def _post(url: str, by: str) -> tuple[int, str]:
    """POST an action link as the page's form does: (status, page)."""
    request = urllib.request.Request(url, data=urllib.parse.urlencode({"by": by}).encode())  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_snooze_link_mutes_its_own_episode_only_and_an_old_link_changes_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    key = secrets.token_hex(32)
    with Receiver() as receiver:
        config = tmp_path / "routes.yml"
        config.write_text(
            "targets:\n"
            f"  team: {{type: webhook, url: '{receiver.url('/team')}', secret: '${{ROUTE_SECRET}}'}}\n"
            f"  boss: {{type: webhook, url: '{receiver.url('/boss')}', secret: '${{ROUTE_SECRET}}'}}\n"
            "routes:\n"
            "  - match: {severity: critical}\n"
            "    targets: [team]\n"
            "    escalate: {after_s: 3, owners: ['@boss'], targets: [boss]}\n"
        )
        router = RouterProcess(
            settings, config, tmp_path / "router.log", "r1", ADPULSE_ROUTER_TOKEN_KEY=key
        ).start()
        base = f"http://127.0.0.1:{router.port}"
        client = redis.Redis.from_url(settings.redis_url)
        acks = f"{settings.redis_prefix}:alerts:acks"
        try:
            first = alert(1, "douyin", severity="critical")
            first_links = ActionLinks(key.encode(), base).for_alert(first, time.time())
            write_alerts(settings, [first], active=True)
            wait_for(lambda: ("/team", "alert-00001") in receiver.received(), 30, "the first episode")
            status, page = _post(first_links["snooze"], "@zhang.wei")
            assert status == 200 and "snoozed" in page, page
            # It resolves and fires again a while later: a new episode, which pages and escalates again.
            second = {**alert(2, "douyin", severity="critical"), "fingerprint": first["fingerprint"]}
            second["fired_at"] = "2026-11-24T11:40:00+08:00"
            write_alerts(settings, [second], active=True)
            wait_for(lambda: ("/boss", "alert-00002") in receiver.received(), 30, "the new episode escalated")
            assert ("/team", "alert-00002") in receiver.received()
            # The new episode is acknowledged; the old message's snooze link must not undo that.
            second_links = ActionLinks(key.encode(), base).for_alert(second, time.time())
            assert _post(second_links["ack"], "@li.na")[0] == 200
            acked = client.hget(acks, first["fingerprint"])
            status, page = _post(first_links["snooze"], "@late.reader")
            assert status == 410 and "fired again" in page and "nothing changed" in page, page
            assert client.hget(acks, first["fingerprint"]) == acked
            assert (
                orjson.loads(acked)["fired_at"] == second["fired_at"] and orjson.loads(acked)["until"] is None
            )
            with pytest.raises(urllib.error.HTTPError) as shown:
                urllib.request.urlopen(first_links["ack"], timeout=5)  # noqa: S310
            assert shown.value.code == 410
        finally:
            client.close()
            router.stop()


def test_a_redis_outage_pauses_the_router_which_resumes_without_loss(tmp_path: Path) -> None:
    alerts = [alert(i) for i in range(60)]
    with own_stack(tmp_path / "home") as (settings, stack), Receiver(delay_s=0.02) as receiver:
        config = routes_file(tmp_path, receiver)
        router = RouterProcess(settings, config, tmp_path / "router.log", "r1").start()
        try:
            write_alerts(settings, alerts[:30])
            wait_for(lambda: len(receiver.received()) >= 5, 30, "the first deliveries")
            stack.down(["redis"])
            time.sleep(2.0)
            stack.up()
            write_alerts(settings, alerts[30:])
            wait_for(
                lambda: set(receiver.received()) >= expected_deliveries(alerts), 60, "every alert delivered"
            )
            time.sleep(1.0)
            doubled = {k: n for k, n in Counter(receiver.received()).items() if n > 1}
            assert not doubled, f"sent twice: {doubled}"
            assert "Redis unavailable" in (tmp_path / "router.log").read_text()
        finally:
            router.stop()


def test_bad_entries_are_dead_lettered_and_the_router_goes_on(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    with Receiver() as receiver:
        router = RouterProcess(
            settings,
            routes_file(tmp_path, receiver),
            tmp_path / "router.log",
            "r1",
            ADPULSE_ROUTER_TOKEN_KEY=secrets.token_hex(32),
        ).start()
        try:
            client = redis.Redis.from_url(settings.redis_url)
            try:
                stream = f"{settings.redis_prefix}:alerts"
                client.xadd(stream, {"alert": b"{not json"})
                client.xadd(stream, {"other": b"field"})
                client.xadd(stream, {"alert": orjson.dumps(alert(1, owner=5))})
                client.xadd(stream, {"alert": orjson.dumps(alert(2, kind="budget", evidence=[1, 2]))})
                client.hset(f"{settings.redis_prefix}:alerts:active", "junk", b"\xff not json")
                write_alerts(settings, [alert(3, "jd")])
                wait_for(lambda: ("/a", "alert-00003") in receiver.received(), 30, "the good alert delivered")
                wait_for(
                    lambda: client.xlen(f"{settings.redis_prefix}:alerts:dead") == 4, 10, "four dead letters"
                )
                errors = [
                    fields[b"error"].decode()
                    for _, fields in client.xrange(f"{settings.redis_prefix}:alerts:dead")
                ]
            finally:
                client.close()
            assert all(e.startswith("not an alert") for e in errors), errors
            assert receiver.received() == [("/a", "alert-00003")]
            odd = urllib.request.Request(f"http://127.0.0.1:{router.port}/a/x.%C3%A9", data=b"by=x")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(odd, timeout=5)  # noqa: S310
            assert refused.value.code == 403
            assert router.get("/healthz") is not None, "the router is still up"
        finally:
            router.stop()


def test_approve_link_records_the_approval_where_the_worker_reads_it(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from datetime import datetime

    from alerts.budgets import Approval, approval_field

    settings = make_settings()
    key = secrets.token_hex(32)
    with Receiver() as receiver:
        router = RouterProcess(
            settings,
            routes_file(tmp_path, receiver),
            tmp_path / "router.log",
            "r1",
            ADPULSE_ROUTER_TOKEN_KEY=key,
        ).start()
        try:
            warning = alert(
                7,
                "taobao",
                kind="budget",
                metric="spend",
                window="day",
                window_start="2026-11-24T00:00:00+08:00",
                window_end="2026-11-25T00:00:00+08:00",
                evidence={"period": "day", "used_ratio": 0.81},
            )
            links = ActionLinks(key.encode(), f"http://127.0.0.1:{router.port}").for_alert(
                warning, time.time()
            )
            post = urllib.request.Request(  # noqa: S310
                links["approve"], data=urllib.parse.urlencode({"by": "@wang.fang"}).encode()
            )
            assert "approved" in urllib.request.urlopen(post, timeout=5).read().decode()  # noqa: S310
            again = urllib.request.urlopen(post, timeout=5).read().decode()  # noqa: S310
            assert "already approved by @wang.fang" in again
            start = int(datetime.fromisoformat("2026-11-24T00:00:00+08:00").timestamp())
            client = redis.Redis.from_url(settings.redis_url)
            try:
                raw = client.hget(
                    Keys(settings.redis_prefix).approvals,
                    approval_field("taobao", None, "day", start, settings.zone),
                )
            finally:
                client.close()
            assert raw is not None and Approval.from_json(raw).by == "@wang.fang"
        finally:
            router.stop()


class ChatReceiver:
    """A stand-in for WeCom's and Feishu's bots on loopback: records every message body, answers "ok"."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.bodies.append((self.path, body))
                answer = b'{"errcode":0,"errmsg":"ok"}' if self.path == "/wecom" else b'{"code":0,"msg":"ok"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ChatReceiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def texts(self, path: str) -> list[str]:
        """The text of every message to ``path``, as the chat shows it (WeCom markdown, Feishu card JSON)."""
        with self.lock:
            return [
                body["markdown"]["content"] if path == "/wecom" else orjson.dumps(body["card"]).decode()
                for where, body in self.bodies
                if where == path
            ]


def test_every_summary_of_a_100_alert_burst_for_one_channel_reaches_the_chat(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    dashboard = "http://127.0.0.1:3000/d/adpulse-channels/adpulse-channels?var-channel=douyin"
    # Long descriptions, as real anomaly alerts have: WeCom's 4 KB per message is the binding limit there.
    burst = [
        alert(i, "douyin", dashboard_url=dashboard, description="点击率下降，请检查素材与投放位。" * 30)
        for i in range(100)
    ]
    with ChatReceiver() as chat:
        config = tmp_path / "routes.yml"
        config.write_text(
            "targets:\n"
            f"  wecom-a: {{type: wecom, url: '{chat.url('/wecom')}', locale: en, rate_per_minute: 6000}}\n"
            f"  feishu-a: {{type: feishu, url: '{chat.url('/feishu')}', locale: en, rate_per_minute: 6000}}\n"
            "routes:\n"
            "  - match: {channel: [douyin]}\n"
            "    owners: ['@zhang.wei']\n"
            "    targets: [wecom-a, feishu-a]\n"
            "default_targets: [wecom-a]\n"
        )
        router = RouterProcess(settings, config, tmp_path / "router.log", "r1").start()
        try:
            write_alerts(settings, burst)

            def delivered(path: str) -> int:
                return sum(text.count("CTR fell 52 % (") for text in chat.texts(path))

            wait_for(
                lambda: delivered("/wecom") >= 100 and delivered("/feishu") >= 100,
                60,
                "every summary in the chat",
                interval_s=0.2,
            )
            time.sleep(1.0)  # anything sent twice would arrive by now
            for path in ("/wecom", "/feishu"):
                texts = chat.texts(path)
                joined = "\n".join(texts)
                for item in burst:
                    assert joined.count(f"{item['summary']}") == 1, (path, item["summary"])
                assert "more alerts" not in joined
                # Each message links the dashboard and names the part of the burst it is.
                assert all(dashboard in t for t in texts)
                assert len(texts) >= 10 and all(f"of {len(texts)})" in t for t in texts), path
                assert all("zhang.wei" in t for t in texts)
            metrics = router.get("/metrics")
            for target in ("wecom-a", "feishu-a"):
                assert (
                    metric_sum(metrics, "adpulse_notifications_total", target=target, outcome="sent") == 100
                )
            assert metric_sum(metrics, "adpulse_notifications_total", outcome="failed") == 0
        finally:
            router.stop()
