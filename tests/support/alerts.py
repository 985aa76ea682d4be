"""A sample alert (CONTRACT.md §3) for the router's tests: a CTR drop on douyin, firing."""

from __future__ import annotations

from typing import Any

ALERT: dict[str, Any] = {
    "id": "a1b2c3",
    "fingerprint": "anomaly/ctr/douyin/-",
    "status": "firing",
    "change": "fired",
    "kind": "anomaly",
    "severity": "critical",
    "metric": "ctr",
    "channel": "douyin",
    "campaign": None,
    "window": "10m",
    "window_start": "2026-11-24T10:00:00+08:00",
    "window_end": "2026-11-24T10:10:00+08:00",
    "value": 0.0115,
    "baseline": 0.024,
    "change_pct": -52.1,
    "evidence": {
        "impressions": 38000,
        "clicks": 437,
        "baseline_impressions": 410000,
        "baseline_clicks": 9840,
        "p_value": 1e-9,
        "test": "two-proportion z",
    },
    "summary": "CTR fell 52 % in the last 10 min (2.40 % → 1.15 %, 38k impressions, p < 0.001)",
    "description": "Clicks per impression on douyin dropped ...",
    "owner": "@zhang.wei",
    "runbook_url": "https://example.invalid/docs/runbook.md#anomaly",
    "dashboard_url": "http://127.0.0.1:3000/d/adpulse-channels/adpulse-channels?var-channel=douyin",
    "fired_at": "2026-11-24T10:10:03+08:00",
    "resolved_at": None,
}
