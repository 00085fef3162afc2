"""Frontier query encoding checked against the protocol's documented steps with nothing but the standard
library: SQL -> zlib (level 9) -> standard base64 -> `+`->`.`, `/`->`-`, `=`->`_`, no newlines. The
reference's example `p1` is truncated in the notes (no SQL given), so it cannot be compared byte for
byte; these tests pin every step instead."""

from __future__ import annotations

import base64
import zlib

import pytest

from junodcs.conditions import frontier

# statements as the client sends them; long enough that a line-wrapping base64 would insert newlines
STATEMENTS = [
    "SELECT status FROM cond_global_tags WHERE name = ?:GT-2025",
    "SELECT payload_type, tag_name FROM cond_global_tag_map WHERE global_tag = ?:GT-2025",
    "SELECT tag_name, since, id, payload_hash FROM cond_iovs WHERE tag_name IN (?,?,?) AND since <= ?"
    ":Calib.PMT-v1:Calib.Deconv-v3:Geometry-v2:1000",
    "SELECT hash, data, uri FROM cond_payloads WHERE hash = '" + "0123456789abcdef" * 4 + "'",
    "select 1 from dual",
    "SELECT name FROM cond_tags WHERE name = 'x~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~'",
]


def plain_decode(p1: str) -> str:
    """The server side of the documented steps, with only zlib and base64."""
    standard = p1.translate(str.maketrans(".-_", "+/="))
    return zlib.decompress(base64.b64decode(standard, validate=True)).decode()


@pytest.mark.parametrize("sql", STATEMENTS)
def test_p1_follows_the_documented_steps(sql: str) -> None:
    p1 = frontier.encode_query(sql)
    assert plain_decode(p1) == sql
    # zlib stream at level 9: header 0x78 0xDA, which base64-encodes to "eNo"
    assert base64.b64decode(p1[:4].translate(str.maketrans(".-_", "+/=")))[:2] == b"\x78\xda"
    assert p1.startswith("eNo")
    # exactly the level-9 stream, in the URL-safe alphabet of the protocol, on one line
    expected = base64.b64encode(zlib.compress(sql.encode(), 9)).decode()
    assert p1 == expected.replace("+", ".").replace("/", "-").replace("=", "_")
    assert not set(p1) & set("+/=\n\r ")
    assert frontier.decode_query(p1) == sql


def test_every_substitution_is_exercised() -> None:
    """Together the statements' encodings contain all three substituted characters, so a missing or
    wrong substitution fails the test above for at least one of them."""
    standard = "".join(base64.b64encode(zlib.compress(sql.encode(), 9)).decode() for sql in STATEMENTS)
    encoded = "".join(frontier.encode_query(sql) for sql in STATEMENTS)
    assert {"+", "/", "="} <= set(standard)
    assert {".", "-", "_"} <= set(encoded)
    assert max(len(frontier.encode_query(sql)) for sql in STATEMENTS) > 76  # beyond one MIME base64 line


def test_request_carries_the_encoded_queries_in_order() -> None:
    path = frontier.request_path(STATEMENTS[:2], encoding="BLOBzip5", ttl="short")
    tokens = path.split("&")
    assert tokens[0] == "type=frontier_request:1:DEFAULT" and tokens[1] == "encoding=BLOBzip5"
    assert [plain_decode(t[3:]) for t in tokens if t.startswith("p1=")] == STATEMENTS[:2]
    assert tokens[-1] == "ttl=short"
    # the server's parser sees the same two payloads
    parsed = frontier.parse_request(path)
    assert [frontier.decode_query(p.params["p1"]) for p in parsed.payloads] == STATEMENTS[:2]
    assert parsed.ttl == "short"


def _response(blob: bytes, *, keepalives: bool = False) -> bytes:
    stream, records = frontier.encode_rows([("data", "BLOB")], [[blob]])
    body = frontier.payload_body(stream, records, 5)
    if keepalives:  # as a server writes them into <data> while a slow query runs
        body = frontier.KEEPALIVE + b"\n" + frontier.KEEPALIVE + body
    return frontier.xml_head(1) + frontier.payload_open("BLOBzip5") + body + frontier.XML_TAIL


def test_client_decodes_keepalives_and_refuses_damaged_base64() -> None:
    blob = bytes(range(256)) * 300
    (result,) = frontier.parse_response(_response(blob, keepalives=True), expected=1)
    assert result.rows == [[blob]] and result.records == 1
    good = _response(blob)
    start = good.index(b"<data>") + 6
    with pytest.raises(frontier.FrontierError, match="bad base64"):  # a byte outside the alphabet
        frontier.parse_response(good[:start + 10] + b"!" + good[start + 11:])
    letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    original = good[start + 10:start + 11]
    assert original in letters
    flipped = original.translate(bytes.maketrans(letters, letters[1:] + letters[:1]))
    with pytest.raises(frontier.FrontierError, match="md5 mismatch"):  # inside the alphabet: the md5 tells
        frontier.parse_response(good[:start + 10] + flipped + good[start + 11:])
