"""Opaque keyset page tokens for newest-first listings."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from visionmesh.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after the last row of a page: (created_at, id) of that row."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            created_at, row_id = json.loads(base64.urlsafe_b64decode(padded))
            return cls(datetime.fromisoformat(created_at), str(row_id))
        except (ValueError, TypeError) as exc:
            raise InvalidArgument.for_field("page_token", "is not a token from this API") from exc


def page_size(requested: int) -> int:
    return requested if requested > 0 else DEFAULT_PAGE_SIZE


def newest_first(query: Select[Any], model: Any, *, token: str, size: int) -> Select[Any]:
    """Orders by (created_at, id) descending, resumes after `token`, fetches size + 1 rows."""
    if token:
        cursor = Cursor.decode(token)
        query = query.where(
            or_(
                model.created_at < cursor.created_at,
                and_(model.created_at == cursor.created_at, model.id < cursor.id),
            )
        )
    return query.order_by(model.created_at.desc(), model.id.desc()).limit(size + 1)


def split_page(rows: list[Any], size: int) -> tuple[list[Any], str]:
    """The page and the token for the next one (empty on the last page)."""
    if len(rows) <= size:
        return rows, ""
    page = rows[:size]
    return page, Cursor(page[-1].created_at, page[-1].id).encode()
