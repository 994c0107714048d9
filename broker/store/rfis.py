"""The tables of requests for information (ADR 16, migration 0007).

``rfi`` keeps one row per RFI the relay accepted: who asked, its topic and precedence,
when it was created and when answers are due, and later when its asker closed it and when
the overdue alarm was raised. ``rfi_addressee`` names whom it was routed to. Nothing else
is written for an RFI: an acknowledgement is an addressee's signed receipt (``receipt``),
an answer an addressee's accepted reply (``bulletin.in_reply_to``), so where an RFI stands
is read, at the time asked, from what the relay records anyway (``schemas.rfi.rfi_state``).

The registry imports this module for its tables; the queries over them and the registry's
other tables are ``broker.store.rfi_book``'s. Left to others: deciding what to record
(``broker.relay.plan``), the alarm's sweep and the answers to agencies
(``broker.relay.rfis``), the audit events (``broker.audit.events``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer
from sqlmodel import Field, SQLModel

__all__ = ["RfiAddresseeRow", "RfiRow"]

_BIGINT = BigInteger().with_variant(Integer(), "sqlite")  # epoch seconds


class RfiRow(SQLModel, table=True):
    """A request for information: metadata of the bulletin that asks, never its content."""

    __tablename__ = "rfi"
    bulletin_id: str = Field(primary_key=True, max_length=36)
    asker: str = Field(index=True, max_length=32)
    topic: str = Field(max_length=64)
    precedence: str = Field(max_length=16)
    created_at: int = Field(sa_type=_BIGINT)
    due_at: int = Field(index=True, sa_type=_BIGINT)
    closed_at: int | None = Field(default=None, sa_type=_BIGINT)
    overdue_at: int | None = Field(default=None, sa_type=_BIGINT)


class RfiAddresseeRow(SQLModel, table=True):
    """One agency an RFI was routed to."""

    __tablename__ = "rfi_addressee"
    rfi_id: str = Field(primary_key=True, max_length=36)
    agency: str = Field(primary_key=True, index=True, max_length=32)
