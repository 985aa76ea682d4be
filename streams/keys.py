"""Every Redis key adpulse reads or writes, in one place (CONTRACT.md §3 names the public ones).

``Keys(prefix)`` spells them; the prefix is ``ADPULSE_REDIS_PREFIX`` (default ``adpulse``). Public keys
(stable names, extend never rename): ``alerts`` (stream) and ``alerts:active`` (hash). The rest are the
project's own and may change between versions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    # --- public (CONTRACT.md §3) ---
    @property
    def alerts(self) -> str:
        """Stream: one entry per alert state change (field ``alert``)."""
        return f"{self.prefix}:alerts"

    @property
    def active(self) -> str:
        """Hash: fingerprint → alert JSON for every alert firing now."""
        return f"{self.prefix}:alerts:active"

    # --- the worker's alert state ---
    @property
    def alert_state(self) -> str:
        return f"{self.prefix}:alerts:state"

    @property
    def alert_ids(self) -> str:
        """Prefix of the ``SET NX`` idempotency keys, one per published alert id."""
        return f"{self.prefix}:alerts:ids:"

    @property
    def judged(self) -> str:
        return f"{self.prefix}:alerts:judged"

    @property
    def acks(self) -> str:
        """Hash: fingerprint → acknowledgement or snooze JSON."""
        return f"{self.prefix}:alerts:acks"

    @property
    def dead(self) -> str:
        """Stream: alerts the router could not deliver, with the error."""
        return f"{self.prefix}:alerts:dead"

    # --- KPIs and windows ---
    @property
    def kpis(self) -> str:
        """Hash: ``channel|campaign|window|current|last`` → KPI row JSON."""
        return f"{self.prefix}:kpis"

    @property
    def kpis_meta(self) -> str:
        return f"{self.prefix}:kpis:meta"

    def closed_windows(self, window: str, day: str) -> str:
        """Hash of one local day's closed ``window`` buckets (field ``channel|campaign|start``)."""
        return f"{self.prefix}:windows:{window}:{day}"

    # --- the fold stage and budgets ---
    @property
    def fold_checkpoints(self) -> str:
        return f"{self.prefix}:fold:checkpoints"

    def fold_clock(self, src: str) -> str:
        """Sorted set of one source partition's clock steps (``first:last:received_ms``, score ``last``)."""
        return f"{self.prefix}:fold:clock:{src}"

    def health(self, bucket_s: int) -> str:
        """Hash of the data-health counters of one wall-clock bucket (fold stage → evaluator): field
        ``channel|what`` → count, where ``what`` is ``accepted``, a reject reason,
        ``field:<name>:<problem>``, ``ahead`` or ``ahead_ms`` (records whose CreateTime is ahead of the
        worker's clock, and by how much)."""
        return f"{self.prefix}:health:{bucket_s}"

    @property
    def approvals(self) -> str:
        return f"{self.prefix}:budgets:approvals"

    # --- the router ---
    @property
    def deferred(self) -> str:
        return f"{self.prefix}:router:deferred"

    @property
    def escalations(self) -> str:
        return f"{self.prefix}:router:escalations"

    def sent(self, target: str, delivery_key: str) -> str:
        return f"{self.prefix}:router:sent:{target}:{delivery_key}"

    def digest_sent(self, report: str, period: str, target: str) -> str:
        """Set once a digest (``daily`` of ``2026-11-24``, ``weekly`` of ``2026-W48``) reached ``target``."""
        return f"{self.prefix}:router:digest:{report}:{period}:sent:{target}"

    def digest_lease(self, report: str, period: str) -> str:
        """Held (``SET NX EX``) by the router posting a digest, so two routers do not post it together."""
        return f"{self.prefix}:router:digest:{report}:{period}:lease"
