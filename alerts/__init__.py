"""Deciding and telling: KPI math, rules, detectors, sinks (pure core, I/O at the edges)."""
