"""Reading a ``/metrics`` page (Prometheus text format): the demo's live counts, and what the tests and
benchmarks check on a worker or router.

Plain line matching, not a full parser: adpulse writes the page itself (prometheus-client), label values
never hold a space, and a benchmark polls it every 100 ms on a machine whose CPU it is measuring.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator


def read_metrics(url: str, timeout_s: float = 2.0) -> str | None:
    """The page at ``url``, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - our own http URL
            return str(response.read().decode())
    except OSError:
        return None


def metric_samples(text: str | None, name: str) -> Iterator[tuple[str, float]]:
    """``(labels, value)`` of every sample of exactly ``name``; ``labels`` is the ``{...}`` part, or ""."""
    for line in (text or "").splitlines():
        if line.startswith((name + "{", name + " ")):
            head, _, value = line.rpartition(" ")
            yield head[len(name) :], float(value)


def label(labels: str, key: str) -> str | None:
    """The value of label ``key`` in a sample's ``{...}`` part."""
    for start in (f'{{{key}="', f',{key}="'):
        _, found, rest = labels.partition(start)
        if found:
            return rest.split('"', 1)[0]
    return None


def metric_sum(text: str | None, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there are none)."""
    return sum(
        (
            value
            for have, value in metric_samples(text, name)
            if all(label(have, k) == v for k, v in labels.items())
        ),
        0.0,
    )


def sums_by(text: str | None, name: str, key: str) -> dict[str, float]:
    """The samples of ``name`` summed per value of label ``key`` (``adpulse_events_total`` by outcome)."""
    sums: dict[str, float] = {}
    for have, value in metric_samples(text, name):
        group = label(have, key)
        if group is not None:
            sums[group] = sums.get(group, 0.0) + value
    return sums
