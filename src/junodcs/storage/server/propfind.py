"""PROPFIND answers in the shape davix and gfal2 parse: `d:multistatus` with one `d:response` per entry.

davix reads `getcontentlength`, `getlastmodified`, `creationdate`, `resourcetype` (with `d:collection`
for directories) and, like mod_dav/lcgdm-dav servers send it, `iscollection`. The checksum is also given
as dCache's `Checksums` property so WebDAV clients can read it without a HEAD.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import formatdate
from urllib.parse import quote
from xml.sax.saxutils import escape

HEADER = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<d:multistatus xmlns:d="DAV:" xmlns:ns1="http://www.dcache.org/2013/webdav">\n'
)
FOOTER = "</d:multistatus>\n"


def http_date(seconds: float) -> str:
    return formatdate(seconds, usegmt=True)


def iso_date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def response_xml(logical: str, st: os.stat_result, checksums: dict[str, str] | None = None) -> str:
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    href = quote(logical.rstrip("/") + "/" if is_dir and logical != "/" else logical)
    name = logical.rstrip("/").rsplit("/", 1)[-1] or "/"
    props = [
        f"<d:displayname>{escape(name)}</d:displayname>",
        f"<d:getlastmodified>{http_date(st.st_mtime)}</d:getlastmodified>",
        f"<d:creationdate>{iso_date(st.st_ctime)}</d:creationdate>",
    ]
    if is_dir:
        props += ["<d:resourcetype><d:collection/></d:resourcetype>", "<d:iscollection>1</d:iscollection>",
                  "<d:getcontentlength>0</d:getcontentlength>"]
    else:
        props += [
            "<d:resourcetype/>",
            "<d:iscollection>0</d:iscollection>",
            f"<d:getcontentlength>{st.st_size}</d:getcontentlength>",
            "<d:getcontenttype>application/octet-stream</d:getcontenttype>",
            f'<d:getetag>"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"</d:getetag>',
        ]
        if checksums and "adler32" in checksums:
            props.append(f"<ns1:Checksums>adler32={checksums['adler32']}</ns1:Checksums>")
    body = "".join(props)
    return (
        f"<d:response><d:href>{escape(href)}</d:href><d:propstat><d:prop>{body}</d:prop>"
        "<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>\n"
    )


def multistatus(entries: Iterable[str]) -> str:
    return HEADER + "".join(entries) + FOOTER
