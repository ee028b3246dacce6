"""Database layer: schema, migrations, engine and the case store.

Kept empty on purpose: the query path imports :mod:`kb.db.fastmeta`, and
anything imported here would be paid for by every query.
"""
