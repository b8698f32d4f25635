"""Opaque page tokens for listings ordered by a unique name (deployments, collections)."""

from __future__ import annotations

import base64
import binascii

from visionmesh.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50


def name_page_token(last_name: str) -> str:
    """The token of the page after the one ending with `last_name`."""
    return base64.urlsafe_b64encode(last_name.encode()).decode()


def name_after(token: str, *, field: str = "page_token") -> str:
    """The name a page token continues after ("" for the first page); InvalidArgument
    naming `field` for anything this API did not issue."""
    if not token:
        return ""
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument.for_field(field, "not a token this service issued") from None
