"""A real headless browser (Debian's chromium) driven over the DevTools protocol: load a page as a phone
would, collect every console error, uncaught exception and failed load, and take a full-page screenshot."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    """The browser's path; skips the test where there is none, except in CI (`make tools` installs it)."""
    found = next((path for name in NAMES if (path := shutil.which(name))), None)
    if found is not None:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: `make tools` (deploy/setup-tools.sh) installs it")
    pytest.skip("chromium is not installed (apt-get install chromium; `make tools` does it)")


@dataclass
class PageResult:
    """What loading a page showed: its problems, a PNG of the whole page, and answers to ``checks``."""

    errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    checks: dict[str, Any] = field(default_factory=dict)


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = message.json()
            future = self.waiting.pop(data.get("id", -1), None)
            if future is not None:
                future.set_result(data)
            else:
                await self.events.put(data)

    async def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.waiting[call_id] = asyncio.get_running_loop().create_future()
        body: dict[str, Any] = {"id": call_id, "method": method, "params": params}
        if session:
            body["sessionId"] = session
        await self.ws.send_json(body)
        answer = await asyncio.wait_for(self.waiting[call_id], 30)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result


@contextlib.asynccontextmanager
async def _browser(binary: str) -> AsyncIterator[str]:
    """Start chromium headless on a free DevTools port; yields the browser's websocket URL."""
    profile = tempfile.mkdtemp(prefix="adpulse-chromium-")
    proc = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {proc.poll()})")
            await asyncio.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        yield f"ws://127.0.0.1:{port}{path}"
    finally:
        _stop(proc)
        _remove(profile)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop chromium and every process it started (its own session, so its process group): the renderer,
    GPU and crashpad helpers outlive the main process by a moment and keep writing into the profile."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
        deadline = time.monotonic() + wait_s
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _group_alive(proc.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _remove(profile: str) -> None:
    """Remove the profile; a helper that was still closing can leave a file behind for a moment."""
    for _ in range(20):
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.25)
    shutil.rmtree(profile)


async def load(
    url: str, checks: dict[str, str] | None = None, width: int = 412, height: int = 915
) -> PageResult:
    """Load ``url`` in a phone-sized viewport; ``checks`` are JavaScript expressions evaluated after load."""
    result = PageResult()
    async with (
        _browser(chromium()) as ws_url,
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url, max_msg_size=0) as ws,
    ):
        cdp = _Session(ws)
        target = await cdp.send("Target.createTarget", url="about:blank")
        attached = await cdp.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await cdp.send(f"{domain}.enable", session)
        await cdp.send(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=2,
            mobile=True,
        )
        await cdp.send("Page.navigate", session, url=url)
        deadline = time.monotonic() + 60
        loaded = False
        while time.monotonic() < deadline:
            try:
                event = await asyncio.wait_for(cdp.events.get(), 1.0)
            except TimeoutError:
                if loaded:
                    break  # a quiet second after the load event: nothing more is coming
                continue
            result.errors.extend(_problems(event))
            loaded = loaded or event.get("method") == "Page.loadEventFired"
        assert loaded, f"{url} did not load within 60 s"
        for name, expression in (checks or {}).items():
            answer = await cdp.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
            result.checks[name] = answer.get("result", {}).get("value")
        shot = await cdp.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        result.screenshot = base64.b64decode(shot["data"])
        cdp.reader.cancel()
    return result


def _problems(event: dict[str, Any]) -> list[str]:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return [" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))]
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return [str(details.get("exception", {}).get("description") or details.get("text"))]
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return [f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()]
    return []
