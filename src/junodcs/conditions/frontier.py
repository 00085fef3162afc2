"""The Frontier protocol (FroNTier, Fermilab/CERN), exactly as its SQL plugin speaks it.

Request: `GET <server>/Frontier?type=frontier_request:1:DEFAULT&encoding=BLOBzip5&p1=<query>[&ttl=short|
forever]` (or `/Frontier/type=...` in the path); several `type&encoding&p1` groups in one URL are several
payloads of one transaction. `p1` is the SQL text zlib-compressed at level 9, standard base64 with
`+/=` replaced by `.-_` and newlines removed. With bind variables the SQL carries `?` and the text is
`<sql>:<v1>:<v2>...`.

Response: an XML envelope whose `<data>` holds, base64-encoded (and zlib-compressed for `BLOBzipN`), a
typed big-endian row stream; the first record is the column names and type names, each following
record a row; `<quality>` carries `md5` (of the base64-decoded bytes), `records` and `full_size` (the
uncompressed stream). `<keepalive />` may be interleaved in `<data>` while a slow query runs.

This module is pure protocol: request encoding and decoding, the SQL whitelist (read-only statements on
the conditions tables only, parsed into SQLAlchemy Core, never handed to the database as text), and the
response encoder and decoder. The HTTP side is in `router.py`, the failover client in `client.py`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

SERVLET_VERSION = "3.41"
XML_VERSION = "1.0"
OBJECT = "frontier_request"
OBJECT_VERSION = "1"
DEFAULT_ENCODING = "BLOBzip5"

MAX_P1 = 32 * 1024
"""Longest accepted encoded query (characters)."""
MAX_SQL = 16 * 1024
"""Longest accepted SQL text after inflating (zip bombs stop here)."""
MAX_PAYLOADS = 64
"""Most payloads in one transaction."""
_FORBIDDEN = ("drop ", "delete ", "insert ", "alter ", "create ", "update ", "grant ", "truncate ", "replace ")

# type codes of the row stream
BYTE, INT4, INT8, FLOAT, DOUBLE, TIME, ARRAY_BYTE, EOR = range(8)
NULL = 0x80


class FrontierError(Exception):
    """A request the server answers with an error payload (never a crash, never other data)."""


# -- query encoding ----------------------------------------------------------------------------------


def encode_query(sql: str) -> str:
    """`p1` for `sql`: zlib level 9, base64, `+/=` -> `.-_`, no newlines (what every Frontier client sends)."""
    raw = base64.b64encode(zlib.compress(sql.encode(), 9)).decode("ascii")
    return raw.replace("+", ".").replace("/", "-").replace("=", "_")


def decode_query(p1: str, *, max_sql: int = MAX_SQL) -> str:
    if len(p1) > MAX_P1:
        raise FrontierError(f"query too long ({len(p1)} characters encoded, at most {MAX_P1})")
    text = p1.replace(".", "+").replace("-", "/").replace("_", "=").replace(" ", "+").strip()
    try:
        compressed = base64.b64decode(text, validate=True)
    except ValueError:
        raise FrontierError("bad base64 in p1") from None
    inflater = zlib.decompressobj()
    try:
        sql = inflater.decompress(compressed, max_sql + 1)
    except zlib.error:
        raise FrontierError("bad zlib data in p1") from None
    if len(sql) > max_sql or inflater.unconsumed_tail:
        raise FrontierError(f"query too long (more than {max_sql} bytes of SQL)")
    if not inflater.eof:
        raise FrontierError("bad zlib data in p1 (truncated)")
    try:
        return sql.decode("utf-8")
    except UnicodeDecodeError:
        raise FrontierError("query is not UTF-8 text") from None


def request_path(queries: Sequence[str], *, encoding: str = DEFAULT_ENCODING, ttl: str | None = None) -> str:
    """The query string of one transaction (one payload per SQL text), without the leading `?`."""
    parts: list[str] = []
    for sql in queries:
        parts += [f"type={OBJECT}:{OBJECT_VERSION}:DEFAULT", f"encoding={encoding}", f"p1={encode_query(sql)}"]
    if ttl and ttl != "long":
        parts.append(f"ttl={ttl}")
    return "&".join(parts)


# -- request parsing ---------------------------------------------------------------------------------


@dataclass
class PayloadRequest:
    object: str
    version: str
    method: str
    encoding: str = DEFAULT_ENCODING
    zip_level: int = 5
    params: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    """Set when this payload's parameters are unusable: the answer is an error payload for it."""


@dataclass
class FrontierRequest:
    payloads: list[PayloadRequest]
    ttl: str = "long"
    freshkey: str | None = None
    sec: str | None = None


def parse_encoding(value: str) -> tuple[str, int]:
    if value == "BLOB":
        return value, 0
    match = re.fullmatch(r"BLOBzip(\d?)", value)
    if not match:
        raise FrontierError(f"unsupported encoding {value[:40]!r} (BLOB or BLOBzip[0-9])")
    return value, int(match.group(1) or 5)


def parse_request(query: str) -> FrontierRequest:
    """Order-sensitive `&`-separated tokens; each `type=` opens a payload. Raises for a request with no
    payload at all; a payload with bad parameters carries `error`."""
    request = FrontierRequest(payloads=[])
    current: PayloadRequest | None = None
    for token in query.split("&"):
        if not token:
            continue
        key, _, value = token.partition("=")
        key, value = unquote(key), unquote(value)
        if key == "type":
            if len(request.payloads) >= MAX_PAYLOADS:
                raise FrontierError(f"more than {MAX_PAYLOADS} payloads in one request")
            fields = value.split(":")
            current = PayloadRequest(object=fields[0][:64], version=fields[1][:16] if len(fields) > 1 else "",
                                     method=fields[2][:32] if len(fields) > 2 else "DEFAULT")
            if (current.object, current.version) != (OBJECT, OBJECT_VERSION) or current.method != "DEFAULT":
                current.error = f"unsupported object type {value[:80]!r} (this server serves {OBJECT}:1:DEFAULT)"
            request.payloads.append(current)
        elif key == "encoding" and current is not None:
            try:
                current.encoding, current.zip_level = parse_encoding(value)
            except FrontierError as exc:
                current.error = current.error or str(exc)
        elif re.fullmatch(r"p\d{1,2}", key) and current is not None:
            current.params[key] = value
        elif key == "ttl":
            if value not in ("short", "long", "forever"):
                raise FrontierError(f"ttl must be short, long or forever, not {value[:20]!r}")
            request.ttl = value
        elif key == "freshkey":
            request.freshkey = value
        elif key == "sec":
            request.sec = value
        elif key in ("meta", "write"):
            raise FrontierError(f"{key} requests are not supported: this server is read-only")
        # unknown keys are ignored, as the servlet does
    if not request.payloads:
        raise FrontierError("no payload in the request (expected type=frontier_request:1:DEFAULT&encoding=...&p1=...)")
    if request.sec:
        raise FrontierError("signed responses (sec=sig) are not supported by this server")
    return request


# -- SQL whitelist -----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+)(?![\w.])|(?P<str>'(?:[^']|'')*')|(?P<op><=|>=|<>|!=|=|<|>)"
    r"|(?P<punct>[,*()?])|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>\S))"
)
_KEYWORDS = {"select", "from", "where", "and", "order", "by", "asc", "desc", "limit", "in"}


@dataclass
class Condition:
    column: str
    op: str
    values: list[Any]


@dataclass
class SelectQuery:
    table: str
    columns: list[str]
    where: list[Condition] = field(default_factory=list)
    order: list[tuple[str, bool]] = field(default_factory=list)
    limit: int | None = None

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.table,)


def split_bind_variables(text: str) -> tuple[str, list[str]]:
    """Frontier's rule: SQL with both `?` and `:` is `<statement>:<param>:<param>...`."""
    if "?" in text and ":" in text:
        statement, *params = text.split(":")
        return statement, params
    return text, []


def parse_sql(text: str, allowed: dict[str, Sequence[str]]) -> SelectQuery:
    """Parse one read-only statement over the tables in `allowed` (table -> columns). Anything else —
    DML/DDL, other tables or columns, joins, sub-queries, functions, several statements — is refused."""
    lowered = " ".join(text.lower().split()) + " "
    for word in _FORBIDDEN:
        if word in lowered:
            raise FrontierError(f"statement refused: '{word.strip()}' is not allowed (read-only server)")
    statement, params = split_bind_variables(text)
    tokens: list[tuple[str, str]] = []
    for match in _TOKEN.finditer(statement):
        kind = match.lastgroup
        if kind is None:
            continue
        value = match.group(kind)
        if kind == "bad":
            raise FrontierError(f"statement refused: unexpected character {value!r}")
        tokens.append((kind, value))
    position = 0
    param_index = 0

    def peek(offset: int = 0) -> tuple[str, str] | None:
        return tokens[position + offset] if position + offset < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal position
        if position >= len(tokens):
            raise FrontierError("statement refused: unexpected end of the statement")
        position += 1
        return tokens[position - 1]

    def keyword(word: str) -> bool:
        token = peek()
        if token and token[0] == "word" and token[1].lower() == word:
            take()
            return True
        return False

    def expect_keyword(word: str) -> None:
        if not keyword(word):
            token = peek()
            raise FrontierError(f"statement refused: expected {word.upper()}"
                                + (f" near {token[1][:30]!r}" if token else ""))

    def identifier() -> str:
        kind, value = take()
        if kind != "word" or value.lower() in _KEYWORDS:
            raise FrontierError(f"statement refused: expected a name, found {value[:30]!r}")
        return value.lower()

    def value() -> Any:
        nonlocal param_index
        kind, text_ = take()
        if kind == "num":
            return int(text_)
        if kind == "str":
            return text_[1:-1].replace("''", "'")
        if kind == "punct" and text_ == "?":
            if param_index >= len(params):
                raise FrontierError("statement refused: fewer bind values than '?' markers")
            param_index += 1
            return params[param_index - 1]
        raise FrontierError(f"statement refused: expected a value, found {text_[:30]!r}")

    expect_keyword("select")
    columns: list[str] = []
    if peek() == ("punct", "*"):
        take()
    else:
        columns.append(identifier())
        while peek() == ("punct", ","):
            take()
            columns.append(identifier())
    expect_keyword("from")
    table = identifier()
    if table not in allowed:
        raise FrontierError(f"statement refused: table {table!r} is not in the conditions schema")
    known = list(allowed[table])
    if not columns:
        columns = known
    for column in columns:
        if column not in known:
            raise FrontierError(f"statement refused: {table} has no column {column!r}")
    query = SelectQuery(table=table, columns=columns)
    if keyword("where"):
        while True:
            column = identifier()
            if column not in known:
                raise FrontierError(f"statement refused: {table} has no column {column!r}")
            if keyword("in"):
                if take() != ("punct", "("):
                    raise FrontierError("statement refused: expected '(' after IN")
                values = [value()]
                while peek() == ("punct", ","):
                    take()
                    values.append(value())
                if take() != ("punct", ")"):
                    raise FrontierError("statement refused: expected ')'")
                query.where.append(Condition(column, "in", values))
            else:
                kind, op = take()
                if kind != "op":
                    raise FrontierError(f"statement refused: expected a comparison, found {op[:30]!r}")
                query.where.append(Condition(column, "!=" if op == "<>" else op, [value()]))
            if not keyword("and"):
                break
    if keyword("order"):
        expect_keyword("by")
        while True:
            column = identifier()
            if column not in known:
                raise FrontierError(f"statement refused: {table} has no column {column!r}")
            descending = keyword("desc")
            if not descending:
                keyword("asc")
            query.order.append((column, descending))
            if peek() != ("punct", ","):
                break
            take()
    if keyword("limit"):
        kind, number = take()
        if kind != "num" or int(number) < 0:
            raise FrontierError("statement refused: LIMIT takes a non-negative number")
        query.limit = int(number)
    if position != len(tokens):
        raise FrontierError(f"statement refused: unexpected {tokens[position][1][:30]!r}")
    if param_index != len(params):
        raise FrontierError("statement refused: more bind values than '?' markers")
    return query


# -- row stream --------------------------------------------------------------------------------------


def _array(value: bytes) -> bytes:
    return bytes((ARRAY_BYTE,)) + struct.pack(">I", len(value)) + value


def as_text(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S").encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode()


def encode_rows(header: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> tuple[bytes, int]:
    """The typed stream: header record (name, type name pairs), then one record per row; every value
    as ARRAY_BYTE (the SQL plugin sends non-BLOB columns as strings), NULL as `0x86`. Returns (stream,
    number of rows)."""
    out = bytearray()
    for name, type_name in header:
        out += _array(name.encode()) + _array(type_name.encode())
    out.append(EOR)
    count = 0
    null = bytes((ARRAY_BYTE | NULL,))
    for row in rows:
        for value in row:
            out += null if value is None else _array(as_text(value))
        out.append(EOR)
        count += 1
    return bytes(out), count


def decode_rows(stream: bytes) -> tuple[list[tuple[str, str]], list[list[Any]]]:
    """Inverse of the stream encoder, for every type code of the protocol."""
    records: list[list[Any]] = []
    record: list[Any] = []
    view = memoryview(stream)
    i = 0
    n = len(stream)
    sizes = {BYTE: (1, ">b"), INT4: (4, ">i"), INT8: (8, ">q"), FLOAT: (4, ">f"), DOUBLE: (8, ">d"), TIME: (8, ">q")}
    while i < n:
        code = stream[i]
        i += 1
        base = code & 0x7F
        if base == EOR:
            records.append(record)
            record = []
            continue
        if code & NULL:
            record.append(None)
            continue
        if base == ARRAY_BYTE:
            if i + 4 > n:
                raise FrontierError("truncated row stream")
            (length,) = struct.unpack_from(">I", stream, i)
            i += 4
            if i + length > n:
                raise FrontierError("truncated row stream")
            record.append(bytes(view[i:i + length]))
            i += length
        elif base in sizes:
            size, fmt = sizes[base]
            if i + size > n:
                raise FrontierError("truncated row stream")
            record.append(struct.unpack_from(fmt, stream, i)[0])
            i += size
        else:
            raise FrontierError(f"unknown type code {code} in the row stream")
    if record:
        raise FrontierError("row stream does not end with an end-of-record")
    if not records:
        raise FrontierError("empty row stream (no header record)")
    head = records[0]
    if len(head) % 2:
        raise FrontierError("malformed header record")
    header = [(head[k].decode(), head[k + 1].decode()) for k in range(0, len(head), 2)]
    return header, records[1:]


# -- response envelope -------------------------------------------------------------------------------


def xml_head(payloads: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="US-ASCII"?>\n'
        '<!DOCTYPE frontier SYSTEM "http://frontier.fnal.gov/frontier.dtd">\n'
        f'<frontier version="{SERVLET_VERSION}" xmlversion="{XML_VERSION}">\n'
        f' <transaction payloads="{payloads}">\n'
    ).encode()


XML_TAIL = b" </transaction>\n</frontier>\n"
KEEPALIVE = b"<keepalive />"


def payload_open(encoding: str) -> bytes:
    return f'  <payload type="{OBJECT}" version="{OBJECT_VERSION}" encoding="{html.escape(encoding)}">\n   <data>'.encode()


def payload_body(stream: bytes, records: int, zip_level: int | None) -> bytes:
    """`<data>` content (already opened), its closing tag, `<quality>` and the payload's closing tag."""
    raw = zlib.compress(stream, zip_level) if zip_level is not None else stream
    text = base64.encodebytes(raw)
    md5 = hashlib.md5(raw).hexdigest()
    return (text + b"</data>\n" + f'   <quality error="0" md5="{md5}" records="{records}" full_size="{len(stream)}"/>\n'
            "  </payload>\n".encode())


def payload_error(message: str) -> bytes:
    return ("</data>\n" + f'   <quality error="1" message="{html.escape(message, quote=True)}"/>\n'
            "  </payload>\n").encode("ascii", "xmlcharrefreplace")


def global_error(message: str) -> bytes:
    return f'<global_error msg="{html.escape(message, quote=True)}"/>\n'.encode("ascii", "xmlcharrefreplace")


# -- response decoding (client side) -----------------------------------------------------------------

_PAYLOAD = re.compile(
    rb'<payload\s+([^>]*)>\s*<data>(.*?)</data>\s*<quality\s+([^>]*?)/>\s*</payload>', re.DOTALL)
_ATTR = re.compile(rb'(\w+)="([^"]*)"')
_GLOBAL_ERROR = re.compile(rb'<global_error\s+msg="([^"]*)"\s*/>')


@dataclass
class Result:
    """One decoded, verified payload of a response."""

    encoding: str
    error: int = 0
    message: str | None = None
    records: int = 0
    full_size: int = 0
    md5: str | None = None
    header: list[tuple[str, str]] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)

    def dicts(self) -> list[dict[str, Any]]:
        names = [name for name, _ in self.header]
        return [dict(zip(names, row, strict=True)) for row in self.rows]


def _payloads(body: bytes) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(payload attributes, data, quality attributes) of each payload: a linear scan with `find` (a
    regular expression over megabytes of base64 is an order of magnitude slower)."""
    position = 0
    while True:
        start = body.find(b"<payload ", position)
        if start < 0:
            return
        head_end = body.find(b">", start)
        data_start = body.find(b"<data>", head_end)
        data_end = body.find(b"</data>", data_start)
        quality = body.find(b"<quality ", data_end)
        quality_end = body.find(b"/>", quality)
        close = body.find(b"</payload>", quality_end)
        if min(head_end, data_start, data_end, quality, quality_end, close) < 0:
            raise FrontierError("malformed payload element")
        yield body[start + 9:head_end], body[data_start + 6:data_end], body[quality + 9:quality_end]
        position = close + 10


def _attrs(raw: bytes) -> dict[str, str]:
    return {k.decode(): html.unescape(v.decode("ascii", "replace")) for k, v in _ATTR.findall(raw)}


_KEEPALIVE = re.compile(rb"<keepalive\s*/>")
_BASE64_TEXT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"


def _base64_payload(data: bytes) -> bytes:
    """The bytes of a `<data>` element: keepalives dropped, then base64 with its line breaks.

    Why not split and join the lines first: a 100 KB payload is ~1,400 lines, and making an object of
    each cost as much as the decoding itself. Anything outside the base64 alphabet and white space is
    refused here (a lenient decoder would skip it silently); a character inside the alphabet but in the
    wrong place is caught by the decoder's padding check or, at the latest, by the payload's md5."""
    if b"<keepalive" in data:
        data = _KEEPALIVE.sub(b"", data)
    if data.translate(None, _BASE64_TEXT):
        raise FrontierError("bad base64 in a response payload")
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        raise FrontierError("bad base64 in a response payload") from None


def parse_response(body: bytes, expected: int | None = None) -> list[Result]:
    """Decode a Frontier response and verify each payload (md5 of the decoded bytes, record count,
    uncompressed size). Raises `FrontierError` on a malformed or unverifiable response; error payloads
    come back as `Result(error != 0)`."""
    if b"<frontier" not in body[:400]:
        raise FrontierError("not a Frontier response")
    glob = _GLOBAL_ERROR.search(body) if b"<global_error" in body else None
    if glob:
        raise FrontierError("server error after the response started: " + html.unescape(glob.group(1).decode()))
    if not body[-256:].rstrip().endswith(b"</frontier>"):
        raise FrontierError("truncated Frontier response")
    transaction = re.search(rb'<transaction\s+payloads="(\d+)"', body)
    results: list[Result] = []
    for head, data, quality in _payloads(body):
        attrs, q = _attrs(head), _attrs(quality)
        encoding = attrs.get("encoding", "")
        result = Result(encoding=encoding, error=int(q.get("error", "1") or 1), message=q.get("message"))
        results.append(result)
        if result.error:
            continue
        raw = _base64_payload(data)
        result.md5 = q.get("md5")
        result.records = int(q.get("records", "-1"))
        result.full_size = int(q.get("full_size", "-1"))
        if result.md5 is not None and hashlib.md5(raw).hexdigest() != result.md5:
            raise FrontierError("md5 mismatch in a response payload")
        if encoding.startswith("BLOBzip"):
            try:
                stream = zlib.decompress(raw)
            except zlib.error:
                raise FrontierError("bad zlib data in a response payload") from None
        else:
            stream = raw
        if len(stream) != result.full_size:
            raise FrontierError(f"size mismatch: {len(stream)} bytes, full_size says {result.full_size}")
        result.header, result.rows = decode_rows(stream)
        if len(result.rows) != result.records:
            raise FrontierError(f"record count mismatch: {len(result.rows)} rows, records says {result.records}")
    declared = int(transaction.group(1)) if transaction else -1
    if declared != len(results) or (expected is not None and len(results) != expected):
        raise FrontierError(f"response holds {len(results)} payloads, expected {expected or declared}")
    return results


def iter_chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
