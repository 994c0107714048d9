"""NATS: nats-server processes and their configuration (``server``, ``natsconf``, ``cluster``),
the broker's own connection (``connect``), the streams and consumers (``streams``), the
ingest gate (``gate``) and leader election over a KV bucket (``election``).
"""
