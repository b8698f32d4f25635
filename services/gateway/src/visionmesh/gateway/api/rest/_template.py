"""`google.api.http` path templates (`/v1/jobs/{id}:cancel`) parsed and compiled to regexes."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PathTemplate", "PathTemplateError", "PathVariable", "parse_template"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 3986 pchar minus the characters the template grammar reserves ("{", "}", "*", "/", ":"
# are structural, "=" only inside variables); percent-escapes are allowed in literals.
_LITERAL = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()+,;=@]|%[0-9A-Fa-f]{2})+")

_ONE_SEGMENT = r"[^/]+"
_MANY_SEGMENTS = r"[^/]+(?:/[^/]+)*"


class PathTemplateError(ValueError):
    """A `google.api.http` path template that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class PathVariable:
    """`{field.path=segments}`: the request field a piece of the URL path binds to."""

    field_path: tuple[str, ...]
    """Proto field names from the request message down, e.g. `("dataset", "id")`."""
    segments: tuple[str, ...]
    """The variable's own segments: `("*",)` for `{id}`, `("**",)`, `("projects", "*")`."""

    @property
    def name(self) -> str:
        """The dotted field path, also the OpenAPI parameter name."""
        return ".".join(self.field_path)

    @property
    def multi_segment(self) -> bool:
        """Whether the value may contain `/` (and so keeps `%2F` escaped when decoded)."""
        return len(self.segments) > 1 or self.segments[0] == "**"


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A parsed template; `regex(prefix)` is the source of its matcher."""

    text: str
    segments: tuple[str | PathVariable, ...]
    verb: str

    @property
    def variables(self) -> tuple[PathVariable, ...]:
        return tuple(s for s in self.segments if isinstance(s, PathVariable))

    def canonical(self) -> str:
        """The template with variables replaced by their patterns: equal for colliding routes."""
        parts = ["/".join(s.segments) if isinstance(s, PathVariable) else s for s in self.segments]
        return "/" + "/".join(parts) + (f":{self.verb}" if self.verb else "")

    def openapi_path(self) -> str:
        """`/v1/jobs/{id}:cancel`: the OpenAPI path key (`{name=**}` becomes `{name}`)."""
        parts = [f"{{{s.name}}}" if isinstance(s, PathVariable) else s for s in self.segments]
        return "/" + "/".join(parts) + (f":{self.verb}" if self.verb else "")

    def specificity(self) -> tuple[int, tuple[int, ...]]:
        """Sort key that tries custom verbs, then literal segments, before wildcards."""
        ranks: list[int] = []
        for segment in self.segments:
            if isinstance(segment, PathVariable):
                ranks.extend(_rank(s) for s in segment.segments)
            else:
                ranks.append(_rank(segment))
        return (0 if self.verb else 1, tuple(ranks))

    def regex(self, group_prefix: str) -> str:
        """Regex source matching a raw (still percent-encoded) path; groups `<prefix>_<i>`."""
        out: list[str] = []
        index = 0
        for segment in self.segments:
            if isinstance(segment, PathVariable):
                inner = "/".join(_segment_regex(s) for s in segment.segments)
                out.append(f"(?P<{group_prefix}_{index}>{inner})")
                index += 1
            else:
                out.append(_segment_regex(segment))
        return "/" + "/".join(out) + (re.escape(":" + self.verb) if self.verb else "")


def _rank(segment: str) -> int:
    return {"*": 1, "**": 2}.get(segment, 0)


def _segment_regex(segment: str) -> str:
    if segment == "*":
        return _ONE_SEGMENT
    if segment == "**":
        return _MANY_SEGMENTS
    return re.escape(segment)


def parse_template(text: str) -> PathTemplate:
    """Parse `/v1/{name=projects/*}/items/{id}:verb`; raises PathTemplateError."""
    if not text.startswith("/"):
        raise PathTemplateError(f"path template {text!r} must start with '/'")
    body, verb = _split_verb(text)
    raw_segments = _split_top_level(body[1:], text)
    segments: list[str | PathVariable] = []
    seen: set[tuple[str, ...]] = set()
    for raw in raw_segments:
        if raw.startswith("{"):
            if not raw.endswith("}"):
                raise PathTemplateError(f"unterminated variable {raw!r} in {text!r}")
            variable = _parse_variable(raw[1:-1], text)
            if variable.field_path in seen:
                raise PathTemplateError(f"{variable.name!r} bound twice in {text!r}")
            seen.add(variable.field_path)
            segments.append(variable)
        else:
            _check_segment(raw, text)
            segments.append(raw)
    multi = [i for i, s in enumerate(segments) if _is_multi(s)]
    if multi and multi != [len(segments) - 1]:
        raise PathTemplateError(f"'**' is only allowed in the last segment of {text!r}")
    return PathTemplate(text=text, segments=tuple(segments), verb=verb)


def _is_multi(segment: str | PathVariable) -> bool:
    if isinstance(segment, PathVariable):
        return "**" in segment.segments
    return segment == "**"


def _split_verb(text: str) -> tuple[str, str]:
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        char = text[i]
        if char == "}":
            depth += 1
        elif char == "{":
            depth -= 1
        elif char == "/" and depth == 0:
            break
        elif char == ":" and depth == 0:
            verb = text[i + 1 :]
            if not _LITERAL.fullmatch(verb):
                raise PathTemplateError(f"bad custom verb {verb!r} in {text!r}")
            return text[:i], verb
    return text, ""


def _split_top_level(body: str, text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(body):
        if char == "{":
            depth += 1
            if depth > 1:
                raise PathTemplateError(f"nested variables in {text!r}")
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise PathTemplateError(f"unbalanced '}}' in {text!r}")
        elif char == "/" and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    if depth:
        raise PathTemplateError(f"unbalanced '{{' in {text!r}")
    parts.append(body[start:])
    return parts


def _parse_variable(inner: str, text: str) -> PathVariable:
    field_path, has_pattern, pattern = inner.partition("=")
    names = tuple(field_path.split("."))
    if not all(_IDENT.fullmatch(n) for n in names):
        raise PathTemplateError(f"bad field path {field_path!r} in {text!r}")
    segments = tuple(pattern.split("/")) if has_pattern else ("*",)
    for segment in segments:
        _check_segment(segment, text)
    return PathVariable(field_path=names, segments=segments)


def _check_segment(segment: str, text: str) -> None:
    if segment in ("*", "**"):
        return
    if not _LITERAL.fullmatch(segment):
        raise PathTemplateError(f"bad segment {segment!r} in {text!r}")
