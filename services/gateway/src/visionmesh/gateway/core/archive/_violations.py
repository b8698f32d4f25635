"""Archive violations: reasons, the collector and its single InvalidArgument."""

from __future__ import annotations

from typing import Final, NoReturn

from visionmesh.common.errors import FieldViolation, InvalidArgument

ARCHIVE_FIELD: Final = "archive"
"""Field of violations about the archive as a whole (size, corruption, layout)."""

MAX_VIOLATIONS: Final = 20
"""Violations reported at most; scanning stops once this many are found."""

_MESSAGE_VIOLATIONS: Final = 3


class Reason:
    """Machine-readable `FieldViolation.reason` values of archive violations."""

    CORRUPT_ARCHIVE: Final = "CORRUPT_ARCHIVE"
    ARCHIVE_TOO_LARGE: Final = "ARCHIVE_TOO_LARGE"
    TOO_MANY_FILES: Final = "TOO_MANY_FILES"
    UNSAFE_PATH: Final = "UNSAFE_PATH"
    SYMLINK: Final = "SYMLINK"
    SPECIAL_FILE: Final = "SPECIAL_FILE"
    UNSUPPORTED_ENTRY: Final = "UNSUPPORTED_ENTRY"
    DUPLICATE_ENTRY: Final = "DUPLICATE_ENTRY"
    CORRUPT_ENTRY: Final = "CORRUPT_ENTRY"
    UNRECOGNISED_LAYOUT: Final = "UNRECOGNISED_LAYOUT"
    BAD_DATA_YAML: Final = "BAD_DATA_YAML"
    MISSING_SPLIT: Final = "MISSING_SPLIT"
    NO_IMAGES: Final = "NO_IMAGES"
    MISPLACED_IMAGE: Final = "MISPLACED_IMAGE"
    UNKNOWN_CLASS: Final = "UNKNOWN_CLASS"
    BAD_IMAGE: Final = "BAD_IMAGE"
    BAD_LABEL: Final = "BAD_LABEL"
    BAD_PRODUCTS: Final = "BAD_PRODUCTS"
    """A catalogue's products.jsonl (or one of its lines) is unusable."""
    UNKNOWN_PRODUCT: Final = "UNKNOWN_PRODUCT"
    """A catalogue's images/<id>/ folder whose product products.jsonl does not list."""


class Violations:
    """Collects up to `MAX_VIOLATIONS` problems in discovery order and raises them as one."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_VIOLATIONS

    def add(self, path: str, description: str, reason: str) -> None:
        if not self.full:
            self.items.append(FieldViolation(field=path, description=description, reason=reason))

    def raise_if_any(self) -> None:
        if self.items:
            raise self.error()

    def error(self) -> InvalidArgument:
        shown = "; ".join(_describe(v) for v in self.items[:_MESSAGE_VIOLATIONS])
        message = f"invalid dataset archive: {shown}"
        rest = len(self.items) - _MESSAGE_VIOLATIONS
        if self.full:
            # Scanning stopped at the cap, so there may be more than we counted.
            message += f" (and at least {rest} more problems)"
        elif rest > 0:
            message += f" (and {rest} more problem{'s' if rest > 1 else ''})"
        return InvalidArgument(message, field_violations=self.items)


def _describe(violation: FieldViolation) -> str:
    if violation.field == ARCHIVE_FIELD:
        return violation.description
    return f"{violation.field}: {violation.description}"


def fail(path: str, description: str, reason: str) -> NoReturn:
    violations = Violations()
    violations.add(path, description, reason)
    raise violations.error()


def too_many_files(count: int, max_files: int) -> NoReturn:
    fail(
        ARCHIVE_FIELD,
        f"archive has {count} entries, over the limit of {max_files}",
        Reason.TOO_MANY_FILES,
    )
