"""Random counts for the simulated funnel: Poisson and binomial draws from one ``random.Random``. Pure.

Exact for the small counts of one campaign's second, normal approximations for large ones.
"""

from __future__ import annotations

import math
import random


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson count with mean ``mean``."""
    if mean <= 0:
        return 0
    if mean < 30:
        # Knuth's product of uniforms: exact, and cheap for the small means of one campaign's second.
        limit, k, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            k += 1
            product *= rng.random()
        return k
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


def binomial(rng: random.Random, n: int, p: float) -> int:
    """The successes among ``n`` trials of probability ``p``."""
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1 - p)
    if n < 40:
        rand = rng.random
        return sum(1 for _ in range(n) if rand() < p)
    mean = n * p
    if mean * (1 - p) >= 9:
        return min(n, max(0, round(rng.gauss(mean, math.sqrt(mean * (1 - p))))))
    return min(n, poisson(rng, mean))
