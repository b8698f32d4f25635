"""Page tokens of name-ordered listings."""

from __future__ import annotations

import pytest
from visionmesh.common.errors import InvalidArgument
from visionmesh.common.paging import name_after, name_page_token


def test_name_page_tokens_round_trip_and_refuse_junk() -> None:
    assert name_after("") == ""
    assert name_after(name_page_token("shelf-2")) == "shelf-2"
    for junk in ("!!!", "not base64 at all", "gA"):
        with pytest.raises(InvalidArgument) as raised:
            name_after(junk)
        assert [v.field for v in raised.value.field_violations] == ["page_token"]
