"""Reading results: the best MEI of each unit, the step before an experiment.

A lab generates each unit's MEI from several seeds (``MEISeed``) and shows the best one. Keys that differ
only in their seed form a group (one trained model, objective and method); the best is the one with the
highest ``score``. The score is the method's own measure of how well the generation went: for the built-in
gradient ascent the objective's value of the final image, negated by an ``inhibitory`` method so that higher
is better there too (a stronger inhibition). Ties go to the lowest seed.
"""

from __future__ import annotations

from typing import Any

SEED = "mei_seed"


def best_per_unit(meis: Any) -> list[dict[str, Any]]:
    """The primary keys of the best-scoring MEI in each seed group of ``meis`` (an MEI table, or a restriction
    of one); ``meis & best_per_unit(meis)`` are those rows."""
    best: dict[tuple, tuple[float, int, dict[str, Any]]] = {}
    for row in meis.proj("score").to_dicts():
        score = row.pop("score")
        group = tuple(sorted((name, value) for name, value in row.items() if name != SEED))
        candidate = (score, -row[SEED], row)
        if group not in best or candidate[:2] > best[group][:2]:
            best[group] = candidate
    return [row for _, _, row in best.values()]
