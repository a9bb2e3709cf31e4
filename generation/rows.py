"""Model instances from the rows of written SQL, with each column converted as the ORM converts it (JSON
decoded, 64-bit seeds as int, SQLite's UUIDs and naive datetimes as UUIDs and aware datetimes)."""

from collections.abc import Sequence

from django.db import connections
from django.db.models import Model
from django.db.models.sql import Query


def columns(model: type[Model], alias: str) -> str:
    """Every concrete column of `model`, in field order, qualified by `alias`: what instances() reads."""
    return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)


def instances(connection, model: type[Model], rows: list[tuple], extra: Sequence[str] = ()) -> list:
    """Rows of every concrete column of `model` (in field order), then `extra` values, as model instances
    with those extra attributes."""
    if not rows:
        return []
    fields = model._meta.concrete_fields
    rows = _converted(connection, model, fields, rows)
    names = [f.attname for f in fields]
    n = len(fields)
    objects = []
    for row in rows:
        obj = model.from_db(connection.alias, names, row[:n])
        for name, value in zip(extra, row[n:], strict=True):
            setattr(obj, name, value)
        objects.append(obj)
    return objects


def instance(connection, model: type[Model], values: dict) -> Model:
    """A model instance holding some of its columns (`values`, by attname, as the database returned them);
    the other fields load on first access."""
    fields = [f for f in model._meta.concrete_fields if f.attname in values]
    (row,) = _converted(connection, model, fields, [tuple(values[f.attname] for f in fields)])
    return model.from_db(connection.alias, [f.attname for f in fields], row)


def _converted(connection, model: type[Model], fields: Sequence, rows: list[tuple]) -> list:
    compiler, converters = _converters(connections[connection.alias], model, tuple(fields))
    return list(compiler.apply_converters(rows, converters)) if converters else rows


def _converters(wrapper, model: type[Model], fields: tuple) -> tuple:
    """The compiler and converters for these columns, made once per database connection: making them costs
    about 0.2 ms, four times building the instance, on every worker request."""
    cache = wrapper.__dict__.setdefault("_t2i_row_converters", {})
    key = (model, fields)
    if key not in cache:
        compiler = wrapper.ops.compiler("SQLCompiler")(Query(model), wrapper, wrapper.alias)
        cache[key] = compiler, compiler.get_converters([f.get_col(model._meta.db_table) for f in fields])
    return cache[key]
