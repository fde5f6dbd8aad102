"""SQL terms over a fixed set of values, for statements built once (issue 17).

SQLAlchemy's default `column.in_(values)` is an "expanding" IN: its SQL is rendered again on every
execution, and such a statement cannot run on the driver's cursor (worker/infra/driver_sql.py).
Here each value is its own bound literal, so the statement compiles once like any other.
"""

from __future__ import annotations

from sqlalchemy import literal


def one_of(column, values):
    """`column IN (...)` over a fixed set of values, each its own bound parameter."""
    return column.in_([literal(value, column.type) for value in values])


def none_of(column, values):
    """`column NOT IN (...)` over a fixed set of values (see one_of)."""
    return column.not_in([literal(value, column.type) for value in values])
