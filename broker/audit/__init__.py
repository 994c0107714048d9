"""The tamper-evident audit log: Merkle math (``merkle``, pure), the named constructor of
every audit event (``events``, pure), what an entry is (``entries``), the log itself
(``log``), recomputing it (``verify``) and the single sequencer that appends the
registry's outbox in signed batches (``sequencer``).
"""
