"""Reading results: the best MEI of each unit, the step before an experiment.

A lab generates each unit's MEI from several seeds (``MEISeed``) and shows the best one. Keys that differ
only in their seed form a group (one trained model, objective and method); the best is the one with the
highest ``score``. The score is the method's own measure of how well the generation went: for the built-in
gradient ascent the objective's value of the final image, negated by an ``inhibitory`` method so that higher
is better there too (a stronger inhibition). Ties go to the lowest seed; a score that is not a number (an
ascent that diverged) comes last.
"""

from __future__ import annotations

import math
from typing import Any

SEED = "mei_seed"


def seed_groups(meis: Any) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The seed groups of ``meis`` (an MEI table, or a restriction of one, with a ``score``): for each, what its
    keys share (all but the seed) and its rows (primary key and ``score``), the best first."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in meis.proj("score").to_dicts():
        shared = tuple(sorted((name, value) for name, value in row.items() if name not in (SEED, "score")))
        groups.setdefault(shared, []).append(row)
    return [
        (dict(shared), sorted(rows, key=lambda row: (*best_first(row["score"]), row[SEED])))
        for shared, rows in groups.items()
    ]


def best_first(score: float) -> tuple[bool, float]:
    """A sort key that puts higher scores first and a score that is not a number (a diverged ascent) last."""
    return math.isnan(score), -score


def best_per_unit(meis: Any) -> list[dict[str, Any]]:
    """The primary keys of the best-scoring MEI in each seed group of ``meis`` (an MEI table, or a restriction
    of one); ``meis & best_per_unit(meis)`` are those rows."""
    best = []
    for _, rows in seed_groups(meis):
        key = dict(rows[0])
        del key["score"]
        best.append(key)
    return best
