"""The relay: takes each bulletin from the ingest stream, checks it (``checks``), decides
(``plan``, with what each receive decision records in ``decisions``), audits and delivers
(``worker``), and checks receipts (``receipts``); serves agencies' requests over NATS
(``agency_api``, with the answers in ``queries``); keeps what could not be delivered
(``dead_letters``) and heals gaps (``reconcile``).
"""
