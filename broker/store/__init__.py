"""The broker's database: engine and sessions (``db``), the registry of agencies, keys,
bulletins and decisions with its audit outbox (``registry``), the Alembic migrations, and
the table names the grants follow (``tables``). SQLite by default, PostgreSQL by URL.
"""
