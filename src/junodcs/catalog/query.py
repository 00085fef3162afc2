"""Metadata queries: the compact CLI syntax, the JSON form, and their validation.

JSON form (API), DIRAC style: `{field: value | [values] | {op: operand, ...}}` with the operators
`= != < > <= >= in nin exists missing`; a list means `in`; `{"exists": true}` / `{"missing": true}`.
String values accept `*` and `?` wildcards with `=` and `!=`.

Compact form (CLI): whitespace-separated terms, all ANDed:
`run>=100 type=rec se=IHEP-EOS run=1,2,3 (in) run!=4,5 (nin) name=*.root exists:quality missing:bad`.

Standard attributes (reserved, cannot be defined as user fields): size, se, created, owner, group,
status, name, guid, checksum.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from junodcs.catalog.errors import InvalidQuery

OPERATORS = ("=", "!=", "<", ">", "<=", ">=", "in", "nin", "exists", "missing")
COMPARE = ("<", ">", "<=", ">=")
#: standard attribute -> value type
STANDARD = {
    "size": "int",
    "se": "string",
    "created": "date",
    "owner": "string",
    "group": "string",
    "status": "string",
    "name": "string",
    "guid": "string",
    "checksum": "string",
}
FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_TERM_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>)(.*)$")
MAX_TERMS = 64
MAX_IN = 10_000
LIKE_ESCAPE = "!"


@dataclass(frozen=True)
class Term:
    field: str
    op: str
    value: Any = None


def parse_compact(text: str) -> list[Term]:
    """`run>=100 type=rec` -> terms. Raises `InvalidQuery` with the offending term."""
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise InvalidQuery(f"cannot parse query {text!r}: {exc}") from None
    terms: list[Term] = []
    for token in tokens:
        lower = token.lower()
        if lower.startswith(("exists:", "missing:")):
            op, _, field = token.partition(":")
            terms.append(Term(_field(field), op.lower()))
            continue
        match = _TERM_RE.match(token)
        if not match:
            raise InvalidQuery(f"malformed query term {token!r}: expected FIELD OP VALUE, e.g. run>=100")
        field, op, raw = match.group(1), match.group(2), match.group(3)
        if raw == "":
            raise InvalidQuery(f"query term {token!r} has no value")
        if op in ("=", "!=") and "," in raw:
            terms.append(Term(_field(field), "in" if op == "=" else "nin", [v for v in raw.split(",") if v != ""]))
        else:
            terms.append(Term(_field(field), op, raw))
    return _check(terms)


def parse_json(query: Any) -> list[Term]:
    if query is None:
        return []
    if isinstance(query, str):
        return parse_compact(query)
    if not isinstance(query, dict):
        raise InvalidQuery("a query is an object {field: value | [values] | {op: operand}}")
    terms: list[Term] = []
    for field, spec in query.items():
        field = _field(str(field))
        if isinstance(spec, list):
            terms.append(Term(field, "in", spec))
        elif isinstance(spec, dict):
            if not spec:
                raise InvalidQuery(f"empty operator object for {field!r}")
            for op, operand in spec.items():
                if op not in OPERATORS:
                    raise InvalidQuery(f"unknown operator {op!r} for {field!r}; use one of {' '.join(OPERATORS)}")
                if op in ("exists", "missing"):
                    if operand is False:
                        op = "missing" if op == "exists" else "exists"
                    terms.append(Term(field, op))
                else:
                    terms.append(Term(field, op, operand))
        else:
            terms.append(Term(field, "=", spec))
    return _check(terms)


def to_json(terms: list[Term]) -> dict[str, Any]:
    """The canonical JSON form of parsed terms (stored in datasets)."""
    out: dict[str, dict[str, Any]] = {}
    for term in terms:
        ops = out.setdefault(term.field, {})
        if term.op in ops:
            raise InvalidQuery(f"operator {term.op!r} given twice for {term.field!r}")
        ops[term.op] = True if term.op in ("exists", "missing") else term.value
    return out


def _field(name: str) -> str:
    if not FIELD_RE.match(name):
        raise InvalidQuery(f"invalid field name {name!r}")
    return name


def _check(terms: list[Term]) -> list[Term]:
    if len(terms) > MAX_TERMS:
        raise InvalidQuery(f"too many query terms ({len(terms)} > {MAX_TERMS})")
    for term in terms:
        if term.op in ("in", "nin"):
            if not isinstance(term.value, list) or not term.value:
                raise InvalidQuery(f"{term.field} {term.op} needs a non-empty list of values")
            if len(term.value) > MAX_IN:
                raise InvalidQuery(f"{term.field} {term.op}: at most {MAX_IN} values")
        elif term.op not in ("exists", "missing"):
            if isinstance(term.value, (list, dict)) or term.value is None:
                raise InvalidQuery(f"{term.field} {term.op} needs a single value")
    return terms


def wildcard_to_like(value: str) -> str:
    """SQL LIKE pattern for a `*`/`?` wildcard; the escape character is `!` (LIKE_ESCAPE)."""
    escaped = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return escaped.replace("*", "%").replace("?", "_")


def has_wildcard(value: Any) -> bool:
    return isinstance(value, str) and ("*" in value or "?" in value)
