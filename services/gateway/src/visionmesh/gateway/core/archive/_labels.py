"""YOLO label files: one box or polygon per line, normalised, class ids in range."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Final

# float() also takes "nan", "inf" and "1_0"; label values must be plain decimal numbers.
_NUMBER_RE: Final = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


def _check_label_line(values: Sequence[str], class_count: int) -> str | None:
    count = len(values)
    if count != 5 and (count < 7 or count % 2 == 0):
        return (
            "expected 5 values (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...), "
            f"got {count}"
        )
    numbers: list[float] = []
    for value in values:
        if not _NUMBER_RE.fullmatch(value):
            return f"{value!r} is not a number"
        numbers.append(float(value))
    class_id = numbers[0]
    if not class_id.is_integer():
        return f"class id {values[0]} is not an integer"
    if not 0 <= class_id < class_count:
        return f"class id {int(class_id)} out of range ({_plural(class_count, 'class')})"
    for column, number in enumerate(numbers[1:], start=2):
        if not 0.0 <= number <= 1.0:
            return (
                f"value {values[column - 1]} (column {column}) is outside [0, 1]; "
                "coordinates must be normalised by the image size"
            )
    if count == 5 and (numbers[3] <= 0 or numbers[4] <= 0):
        return f"box width and height must be > 0, got w={values[3]} h={values[4]}"
    return None


def parse_label(data: bytes, class_count: int) -> Counter[int] | str:
    """Instances per class id of one label file, or what is wrong with it."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    counts: Counter[int] = Counter()
    first_problem: str | None = None
    bad_lines = 0
    for line_number, line in enumerate(text.splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        problem = _check_label_line(values, class_count)
        if problem is not None:
            bad_lines += 1
            first_problem = first_problem or f"line {line_number}: {problem}"
            continue
        counts[int(float(values[0]))] += 1
    if first_problem is None:
        return counts
    if bad_lines > 1:
        first_problem += f" (and {bad_lines - 1} more bad line{'s' if bad_lines > 2 else ''})"
    return first_problem
