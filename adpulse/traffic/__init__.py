"""Realistic tracker traffic, generated deterministically and without I/O.

:class:`~adpulse.traffic.generator.TrafficGenerator` turns an event-time interval and a target rate into
Kafka records for the ``clicks``, ``orders`` and ``spend`` topics exactly as CONTRACT.md §1 describes
them, and keeps a :class:`~adpulse.traffic.truth.GroundTruth` of what a correct pipeline must count: KPI
totals of the valid, first-seen, on-time records only, plus how many records of each other kind (invalid,
late, duplicate) were sent.

Scenarios (:class:`~adpulse.traffic.scenarios.Scenario` subclasses) change the traffic over a stretch of
the run: a CTR drop, a spend surge, a tracker outage, malformed, late or duplicate records. Everything
random comes from one ``random.Random(seed)``, so a seed and a start time reproduce a run record for
record.

One module per job: :mod:`~adpulse.traffic.profiles` (channels, campaigns, the daily curve),
:mod:`~adpulse.traffic.scenarios`, :mod:`~adpulse.traffic.truth` (the ground truth),
:mod:`~adpulse.traffic.sampling` (random counts), :mod:`~adpulse.traffic.malformed` and
:mod:`~adpulse.traffic.generator`; import from the module that holds a name.
"""
