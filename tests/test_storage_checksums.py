"""adler32/md5 helpers and RFC 3230 Digest handling."""

from __future__ import annotations

import base64
import hashlib
import zlib
from pathlib import Path

import pytest

from junodcs.core import checksums as ck


def test_adler32_is_zero_padded_lower_hex() -> None:
    assert ck.format_adler32(0x09600001) == "09600001"
    assert ck.normalize_adler32("9600001") == "09600001"
    assert ck.normalize_adler32("0xABCDEF01") == "abcdef01"
    with pytest.raises(ValueError):
        ck.normalize_adler32("xyz")
    with pytest.raises(ValueError):
        ck.normalize_adler32("123456789")


def test_streaming_equals_one_shot(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    summer = ck.Checksummer(md5=True)
    for i in range(0, len(data), 777):
        summer.update(data[i:i + 777])
    assert summer.adler32 == f"{zlib.adler32(data) & 0xFFFFFFFF:08x}" == ck.adler32_bytes(data)
    assert summer.md5 == hashlib.md5(data).hexdigest()
    (tmp_path / "f").write_bytes(data)
    assert ck.file_checksums(tmp_path / "f", md5=True) == {"adler32": summer.adler32, "md5": summer.md5}
    assert ck.file_adler32(tmp_path / "f") == summer.adler32


def test_digest_format_and_parse() -> None:
    md5_hex = hashlib.md5(b"x").hexdigest()
    b64 = base64.b64encode(bytes.fromhex(md5_hex)).decode()
    assert ck.format_digest({"adler32": "00000001", "md5": md5_hex}, ["adler32"]) == "adler32=00000001"
    assert ck.format_digest({"adler32": "00000001", "md5": md5_hex}, ["md5"]) == f"md5={b64}"
    assert ck.parse_digest(f"MD5={b64}, adler32=9600001, sha-256=zzz") == {"md5": md5_hex, "adler32": "09600001"}
    assert ck.parse_digest(f"md5={md5_hex}") == {"md5": md5_hex}  # old DPM hex form
    assert ck.parse_digest("adler32=nothex,garbage") == {}
    assert ck.parse_digest(None) == {}


def test_want_digest_ranking() -> None:
    assert ck.parse_want_digest("md5;q=0.3, adler32") == ["adler32", "md5"]
    assert ck.parse_want_digest("sha-256, ADLER32;q=0.5") == ["adler32"]
    assert ck.parse_want_digest("adler32;q=0") == []
    assert ck.parse_want_digest("") == []
