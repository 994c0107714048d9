"""The HTTP API (FastAPI): the app and its routers (``app``, ``admin``, ``audit``, ``enrol``,
``subscriptions``), the request context and scopes (``context``), the outer guard (limits,
Host, metrics: ``guard``) and the OAuth 2.0 token authority (``oauth``). The web console
mounts on it from the layer above.
"""
