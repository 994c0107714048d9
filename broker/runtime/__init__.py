"""Running a region's broker: a data directory opened (``datadir``) and claimed
(``claim``), the embedded stack behind ``istmo up`` (``stack``), the whole HTTP app
(``app``: API plus console), telling a running stack of a change (``control``), the
operational health checks (``health``) and the SQLite -> PostgreSQL copy (``db_copy``).
"""
