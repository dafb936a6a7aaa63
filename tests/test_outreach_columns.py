"""The hot path sends its many-valued columns joined into one text each, split back by
PostgreSQL (``store.outreach``): what PostgreSQL splits is exactly what was joined, NULLs,
empty and one-value columns and instants included, and a value that would split wrong is
refused before anything is sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from quota_authority.store import outreach


async def split(db, n_kind: str, joined: str):  # type: ignore[no-untyped-def]
    async with db.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        return await raw.fetchval(f"SELECT {outreach._split(1, n_kind)}", joined)


@pytest.mark.parametrize(
    "values",
    [
        [],
        [None],
        ["seller-1"],
        ["a", None, "b.c:d-e_f", None],
        [None, None],
        ['{"allowed":true,"reason":"NEW_CREATOR","s":"\\u001f"}'],
    ],
)
async def test_text_columns_split_back_to_what_was_joined(db, values):
    assert await split(db, "text", outreach._texts(values)) == values


async def test_int_bool_and_instant_columns_split_back_to_what_was_joined(db):
    at = datetime(2026, 12, 2, 19, 30, 1, 123456, tzinfo=UTC)
    elsewhere = at.astimezone(timezone(timedelta(hours=-5, minutes=-30)))
    ints, bools = [0, -3, 2**31 - 1], [True, False, True]
    instants = [at, elsewhere, at + timedelta(days=7), at]

    assert await split(db, "int", outreach._ints(ints)) == ints
    assert await split(db, "boolean", outreach._bools(bools)) == bools
    assert await split(db, "timestamptz", outreach._times(instants)) == instants
    assert await split(db, "int", outreach._ints([])) == []


@pytest.mark.parametrize("bad", ["a\x1fb", "\x1e", "x\x1ey", ""])
def test_a_value_that_would_split_wrong_is_refused(bad):
    with pytest.raises(ValueError, match="U\\+001F"):
        outreach._texts(["ok", bad])
    with pytest.raises(ValueError, match="U\\+001F"):
        outreach._texts([bad])
