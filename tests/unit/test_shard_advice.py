"""The worker's startup advice when the campaign cap outgrows the bucket shards."""

from __future__ import annotations

from adpulse.worker import CAMPAIGNS_PER_SHARD, shard_advice


def test_the_default_cap_fits_one_shard() -> None:
    assert shard_advice(2000, 1) is None
    assert shard_advice(10_000, 8) is None


def test_a_cap_beyond_the_shards_names_the_shards_it_needs() -> None:
    advice = shard_advice(10_000, 1)
    assert advice is not None
    assert "ADPULSE_BUCKET_SHARDS to 5 or more" in advice
    assert "up to 10000 campaigns" in advice
    assert shard_advice(CAMPAIGNS_PER_SHARD * 4 + 1, 4) is not None
