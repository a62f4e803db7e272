"""Restrictions that users pass to the service: keys as JSON, checked against the table, bound as parameters.

A key restriction is a mapping of attribute names to a scalar (equality) or a list of scalars (``IN``), or a
list of such mappings (any of them). Every name must be an attribute of the table's keys: DataJoint ignores
names it does not know, so a misspelt ``{"neuron": 0}`` would otherwise select the whole table. The values are
bound by the database driver, never spliced into SQL text. A SQL condition is accepted only where the caller
asks for one explicitly (``--where``, or a string in Python).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

SCALARS = (str, int, float, bool)


class RestrictionError(ValueError):
    """A restriction names an unknown attribute, has a value of the wrong kind, or is missing where required."""


def key_attributes(table: Any) -> list[str]:
    """The attributes a key restriction of ``table`` may name: those of its key source."""
    return list(table().key_source.heading.names)


def key_condition(table: Any, keys: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """A SQL condition that selects ``keys`` of ``table``, with every value bound by the driver."""
    alternatives = [keys] if isinstance(keys, Mapping) else keys
    if isinstance(alternatives, str | bytes) or not isinstance(alternatives, Sequence):
        raise RestrictionError(f"a key restriction is a JSON object or a list of them, got {keys!r}")
    known = key_attributes(table)
    clauses, values = [], []
    for key in alternatives:
        clause, bound = _conjunction(key, known)
        clauses.append(clause)
        values += bound
    sql = " OR ".join(f"({clause})" for clause in clauses) or "FALSE"
    cursor = table.connection._conn.cursor()  # the driver's own binding: psycopg2 binds on the client side
    try:
        condition = cursor.mogrify(sql, values).decode()
    finally:
        cursor.close()
    # DataJoint runs queries with a parameter tuple, so a literal % in a bound value must be doubled.
    return condition.replace("%", "%%")


def _conjunction(key: Any, known: list[str]) -> tuple[str, list[Any]]:
    if not isinstance(key, Mapping) or not key:
        raise RestrictionError(f"each key of a restriction is a non-empty JSON object of attributes, got {key!r}")
    unknown = sorted(set(key) - set(known))
    if unknown:
        raise RestrictionError(f"unknown attributes {unknown} in the restriction; the table's keys have {known}")
    terms, values = [], []
    for name, value in key.items():
        if isinstance(value, list | tuple):
            if not all(isinstance(item, SCALARS) for item in value):
                raise RestrictionError(f"the values of '{name}' must be numbers or strings, got {value!r}")
            terms.append(f'"{name}" IN ({", ".join(["%s"] * len(value))})' if value else "FALSE")
            values += list(value)
        elif isinstance(value, SCALARS):
            terms.append(f'"{name}" = %s')
            values.append(value)
        else:
            raise RestrictionError(f"the value of '{name}' must be a number, a string or a list of them, got {value!r}")
    return " AND ".join(terms), values


def restriction(table: Any, value: Any) -> Any:
    """What the client functions restrict by: keys (a mapping or list of mappings) become a checked condition;
    ``None``, a SQL string or a DataJoint expression, all given explicitly in Python, are used as they are."""
    if isinstance(value, Mapping) or (isinstance(value, list) and all(isinstance(key, Mapping) for key in value)):
        return key_condition(table, value)
    return value


def from_command_line(table: Any, keys: str | None, where: str | None) -> str | None:
    """The restriction of ``--restriction`` (JSON keys) and ``--where`` (a SQL condition), both if given."""
    conditions = []
    if keys is not None:
        try:
            parsed = json.loads(keys)
        except json.JSONDecodeError as error:
            raise RestrictionError(
                f"--restriction must be JSON, such as '{{\"mei_seed\": 42}}' or '[{{\"neuron_id\": [1, 2]}}]' "
                f"({error.msg}); a SQL condition goes in --where"
            ) from error
        conditions.append(key_condition(table, parsed))
    if where is not None:
        conditions.append(where.replace("%", "%%"))
    return " AND ".join(f"({condition})" for condition in conditions) or None
