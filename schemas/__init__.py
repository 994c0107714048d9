"""Istmo's wire contract: labels, envelope, receipts, directory, audit events, and the pure
seal/open/sign/verify operations on them. No I/O, no clocks: callers pass ``now`` and keys.
"""
