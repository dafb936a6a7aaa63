"""Rows read back as the domain's objects: one mapper per kind of row.

A seller-week is read by two statements: a ``SELECT`` of ``seller_weeks`` (``ledger``) and
``lock_outreach_state`` (``outreach``), which returns the same columns prefixed ``o_`` and
no ``seller_id``. ``seller_week`` maps both; ``seller_weeks``' columns bear the names of
``SellerWeek``'s fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..domain import SellerWeek

__all__ = ["seller_week"]


def seller_week(
    row: Mapping[Any, Any], prefix: str = "", *, seller_id: str | None = None
) -> SellerWeek:
    """The ``SellerWeek`` of a row holding ``seller_weeks``' columns, each named ``prefix``
    and the column's name; ``seller_id`` when the row does not hold it."""
    p = prefix
    return SellerWeek(
        seller_id=row[p + "seller_id"] if seller_id is None else seller_id,
        week_start=row[p + "week_start"],
        week_end=row[p + "week_end"],
        time_zone=row[p + "time_zone"],
        tier=row[p + "tier"],
        weekly_limit=row[p + "weekly_limit"],
        max_creator_followers=row[p + "max_creator_followers"],
        gmv_30d_minor=row[p + "gmv_30d_minor"],
        weekly_used=row[p + "weekly_used"],
        pack_used=row[p + "pack_used"],
        # lock_outreach_state does not return it (docs/operations.md, migration 0005).
        policy_digest=row.get(p + "policy_digest"),
        # Nor this (R17, migration 0010): the hot path reads the adjusted weekly_limit only.
        weekly_adjustment=row.get(p + "weekly_adjustment") or 0,
    )
