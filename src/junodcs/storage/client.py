"""One storage client over https/davs/http/dav/file URLs: what the data manager and transfers use.

Every operation verifies what it can: `get` checks the bytes against the SE's `Digest`, `put` sends
`Digest: adler32=` so that the SE refuses a corrupted upload (and keeps nothing), `tpc` reads the
performance markers to the final line and, like gfal2, compares source and destination checksums
afterwards. Tokens are chosen per URL prefix; for a third-party copy the active SE gets its own token
in `Authorization` and the passive SE's token travels in `TransferHeaderAuthorization`.
"""

from __future__ import annotations

import os
import shutil
import ssl
import stat as stat_mod
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import httpx

from junodcs.core.checksums import Checksummer, file_checksums, format_digest, parse_digest
from junodcs.core.errors import Conflict, DCSError, Forbidden, NotFound, Unauthenticated
from junodcs.storage.markers import MarkerParser

BLOCK = 4 << 20
DAV = "{DAV:}"


class StorageError(DCSError):
    status = 502
    code = "storage-error"
    title = "Storage error"


class ChecksumMismatch(DCSError):
    status = 502
    code = "checksum-mismatch"
    title = "Checksum mismatch"


class TransferFailed(DCSError):
    status = 502
    code = "transfer-failed"
    title = "Transfer failed"


class CopyMode(StrEnum):
    PULL = "pull"
    PUSH = "push"
    STREAM = "stream"


@dataclass(frozen=True, slots=True)
class StatInfo:
    url: str
    name: str
    size: int
    is_dir: bool
    mtime: float | None = None
    adler32: str | None = None


@dataclass(frozen=True, slots=True)
class TPCResult:
    mode: CopyMode
    size: int
    adler32: str | None
    markers: int
    message: str


def http_url(url: str) -> str:
    """dav/davs are http/https to every client (gfal2 and davix rewrite them the same way)."""
    parts = urlsplit(url)
    scheme = {"dav": "http", "davs": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def is_local(url: str) -> bool:
    return url.startswith("file://") or url.startswith("/")


def local_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path)) if url.startswith("file://") else Path(url)


def ssl_context(ca_dir: str | os.PathLike[str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca = ca_dir or os.environ.get("X509_CERT_DIR")
    if ca:
        if Path(ca).is_dir():
            context.load_verify_locations(capath=str(ca))
        else:
            context.load_verify_locations(cafile=str(ca))
    return context


class StorageClient:
    def __init__(self, token: str | None = None, *, tokens: Mapping[str, str] | None = None,
                 ca_dir: str | os.PathLike[str] | None = None, verify: bool = True, timeout: float = 60.0) -> None:
        self.token = token
        self.tokens = dict(tokens or {})
        verify_arg: ssl.SSLContext | bool = ssl_context(ca_dir) if verify else False
        self.http = httpx.Client(verify=verify_arg, timeout=httpx.Timeout(timeout, read=timeout),
                                 follow_redirects=False, headers={"User-Agent": "junodcs-storage-client"})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> StorageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------------

    def token_for(self, url: str) -> str | None:
        best: tuple[int, str] | None = None
        for prefix, token in self.tokens.items():
            if url.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), token)
        return best[1] if best else self.token

    def _headers(self, url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        token = self.token_for(url)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                 ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        target = http_url(url)
        for _ in range(6):
            response = self.http.request(method, target, headers=self._headers(url, headers), **kwargs)
            if response.status_code in (301, 302, 307, 308) and "location" in response.headers:
                target = urljoin(target, response.headers["location"])
                continue
            break
        if response.status_code not in ok:
            raise_for(response, f"{method} {url}")
        return response

    # -- metadata ----------------------------------------------------------------------------------

    def stat(self, url: str) -> StatInfo:
        if is_local(url):
            path = local_path(url)
            try:
                st = path.stat()
            except FileNotFoundError:
                raise NotFound(f"{url} does not exist") from None
            return StatInfo(url, path.name, st.st_size, stat_mod.S_ISDIR(st.st_mode), st.st_mtime)
        response = self._request("PROPFIND", url, headers={"Depth": "0"}, ok=(207,))
        entries = parse_multistatus(response.text, url)
        if not entries:
            raise StorageError(f"PROPFIND {url} returned no entry")
        return entries[0]

    def ls(self, url: str) -> list[StatInfo]:
        """Entries of a directory (itself excluded); a file lists as itself."""
        if is_local(url):
            path = local_path(url)
            if not path.is_dir():
                return [self.stat(url)]
            return [self.stat(str(child)) for child in sorted(path.iterdir())]
        response = self._request("PROPFIND", url, headers={"Depth": "1"}, ok=(207,))
        entries = parse_multistatus(response.text, url)
        if entries and entries[0].is_dir:
            return entries[1:]
        return entries

    def checksum(self, url: str, algorithm: str = "adler32") -> str:
        algorithm = algorithm.lower()
        if is_local(url):
            return file_checksums(local_path(url), md5=algorithm == "md5")[algorithm]
        response = self._request("HEAD", url, headers={"Want-Digest": algorithm})
        value = parse_digest(response.headers.get("digest")).get(algorithm)
        if value is None:
            raise StorageError(f"{url} did not give an {algorithm} checksum", code="no-checksum")
        return value

    # -- namespace ---------------------------------------------------------------------------------

    def mkdir(self, url: str, *, parents: bool = True) -> None:
        if is_local(url):
            local_path(url).mkdir(parents=parents, exist_ok=parents)
            return
        parts = urlsplit(http_url(url))
        segments = [s for s in parts.path.split("/") if s]
        steps = range(1, len(segments) + 1) if parents else [len(segments)]
        for n in steps:
            sub = urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(segments[:n]), "", ""))
            response = self._request("MKCOL", sub, ok=(201, 405))
            if response.status_code == 405 and n == len(segments) and not parents:
                raise Conflict(f"{url} already exists", code="exists")

    def delete(self, url: str) -> None:
        if is_local(url):
            path = local_path(url)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                try:
                    path.unlink()
                except FileNotFoundError:
                    raise NotFound(f"{url} does not exist") from None
            return
        self._request("DELETE", url, ok=(200, 204))

    # -- data --------------------------------------------------------------------------------------

    def get(self, url: str, destination: str | os.PathLike[str], *, verify_checksum: bool = True) -> str:
        """Download to a file (atomically: a temporary renamed at the end); returns the adler32."""
        target = Path(destination)
        if is_local(url):
            tmp = target.with_name(f".{target.name}.part")
            shutil.copyfile(local_path(url), tmp)
            os.replace(tmp, target)
            return file_checksums(target)["adler32"]
        tmp = target.with_name(f".{target.name}.part")
        summer = Checksummer()
        try:
            with self.http.stream("GET", http_url(url), headers=self._headers(url, {"Want-Digest": "adler32"})) as r:
                if r.status_code != 200:
                    r.read()
                    raise_for(r, f"GET {url}")
                remote = parse_digest(r.headers.get("digest"))
                length = r.headers.get("content-length")
                with open(tmp, "wb") as handle:
                    for chunk in r.iter_raw(BLOCK):
                        handle.write(chunk)
                        summer.update(chunk)
            if length is not None and summer.size != int(length):
                raise StorageError(f"GET {url}: got {summer.size} bytes of {length}", code="incomplete")
            if verify_checksum:
                expected = remote.get("adler32") or self.checksum(url)
                if expected != summer.adler32:
                    raise ChecksumMismatch(f"{url}: adler32 {summer.adler32} != {expected} on the SE")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return summer.adler32

    def put(self, source: str | os.PathLike[str], url: str, *, overwrite: bool = True,
            adler32: str | None = None, parents: bool = True) -> str:
        """Upload a file streamed, with `Digest: adler32=` so the SE verifies before keeping it."""
        path = Path(source)
        checksum = adler32 or file_checksums(path)["adler32"]
        if is_local(url):
            target = local_path(url)
            if target.exists() and not overwrite:
                raise Conflict(f"{url} exists", code="exists")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
            return checksum
        size = path.stat().st_size
        headers = {"Content-Length": str(size), "Digest": format_digest({"adler32": checksum}),
                   "Content-Type": "application/octet-stream"}
        if not overwrite:
            headers["Overwrite"] = "F"
        self._request("PUT", url, headers=headers, content=_file_chunks(path), ok=(200, 201, 204))
        return checksum

    def open_stream(self, url: str) -> Iterator[bytes]:
        """The bytes of a remote file as an iterator (for streamed copies)."""
        with self.http.stream("GET", http_url(url), headers=self._headers(url)) as r:
            if r.status_code != 200:
                r.read()
                raise_for(r, f"GET {url}")
            yield from r.iter_raw(BLOCK)

    # -- third-party copy ----------------------------------------------------------------------------

    def tpc(self, source: str, destination: str, *, mode: CopyMode | str = CopyMode.PULL, overwrite: bool = True,
            verify_checksum: bool = True, on_progress: Callable[[int], None] | None = None) -> TPCResult:
        mode = CopyMode(mode)
        src_sum: str | None = None
        stored: str | None = None
        if verify_checksum:
            src_sum = self.checksum(source)
        if mode is CopyMode.STREAM:
            size = self._stream_copy(source, destination, src_sum, overwrite=overwrite)
            markers, message = 0, "Created"
        else:
            active, passive = (destination, source) if mode is CopyMode.PULL else (source, destination)
            headers = {"Credential": "none", "X-Number-Of-Streams": "1",
                       "RequireChecksumVerification": "true" if verify_checksum else "false",
                       "Overwrite": "T" if overwrite else "F"}
            headers["Source" if mode is CopyMode.PULL else "Destination"] = http_url(passive)
            passive_token = self.token_for(passive)
            if passive_token:
                headers["TransferHeaderAuthorization"] = f"Bearer {passive_token}"
            parser = MarkerParser()
            with self.http.stream("COPY", http_url(active), headers=self._headers(active, headers),
                                  timeout=httpx.Timeout(60.0, read=120.0)) as r:
                if r.status_code >= 300:
                    r.read()
                    raise_for(r, f"COPY ({mode.value}) {active}")
                for line in r.iter_lines():
                    parser.feed(line)
                    if on_progress is not None and line.strip().lower() == "end":
                        on_progress(parser.transferred)
            if parser.outcome is None:
                raise TransferFailed(f"{mode.value} copy {source} -> {destination}: connection ended without a "
                                     "final line; status of the transfer unknown")
            if parser.outcome != "success":
                raise TransferFailed(f"{mode.value} copy {source} -> {destination}: {parser.message}",
                                     code="transfer-failed")
            size, markers, message = parser.transferred, parser.markers, parser.message
            stored = parser.adler32 if mode is CopyMode.PULL else None
        dst_sum = None
        if verify_checksum:
            # a junodcs destination names the stored file's adler32 in a pull's success line; others are asked
            dst_sum = stored or self.checksum(destination)
            if dst_sum != src_sum:
                raise ChecksumMismatch(f"{source} -> {destination}: source adler32 {src_sum}, "
                                       f"destination adler32 {dst_sum}")
        return TPCResult(mode, size, dst_sum, markers, message)

    def _stream_copy(self, source: str, destination: str, adler32: str | None, *, overwrite: bool) -> int:
        """GET from the source and PUT to the destination through this process (gfal2's "streamed")."""
        if is_local(source):
            self.put(local_path(source), destination, overwrite=overwrite, adler32=adler32)
            return local_path(source).stat().st_size
        info = self.stat(source)
        headers = {"Content-Length": str(info.size), "Content-Type": "application/octet-stream"}
        if adler32:
            headers["Digest"] = format_digest({"adler32": adler32})
        if not overwrite:
            headers["Overwrite"] = "F"
        if is_local(destination):
            self.get(source, local_path(destination), verify_checksum=adler32 is not None)
            return info.size
        self._request("PUT", destination, headers=headers, content=self.open_stream(source), ok=(200, 201, 204))
        return info.size


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(BLOCK):
            yield chunk


def raise_for(response: httpx.Response, what: str) -> None:
    detail = ""
    try:
        body = response.json()
        detail = body.get("detail", "") if isinstance(body, dict) else ""
    except ValueError:
        detail = response.text[:300].strip()
    message = f"{what}: HTTP {response.status_code}" + (f": {detail}" if detail else "")
    status = response.status_code
    if status == 404:
        raise NotFound(message)
    if status == 401:
        raise Unauthenticated(message)
    if status == 403:
        raise Forbidden(message)
    if status in (409, 412):
        raise Conflict(message, code="exists" if status == 412 else "conflict")
    if status == 400 and "checksum" in detail.lower():
        raise ChecksumMismatch(message)
    raise StorageError(message)


def parse_multistatus(text: str, base_url: str) -> list[StatInfo]:
    """The `d:multistatus` of a PROPFIND as StatInfo entries, in document order."""
    root = ET.fromstring(text)
    parts = urlsplit(http_url(base_url))
    entries = []
    for response in root.iter(f"{DAV}response"):
        href = unquote(response.findtext(f"{DAV}href") or "")
        prop = response.find(f".//{DAV}prop")
        if prop is None:
            continue
        is_dir = prop.find(f"{DAV}resourcetype/{DAV}collection") is not None
        size = int(prop.findtext(f"{DAV}getcontentlength") or 0)
        mtime = None
        modified = prop.findtext(f"{DAV}getlastmodified")
        if modified:
            try:
                mtime = parsedate_to_datetime(modified).timestamp()
            except (TypeError, ValueError):
                mtime = None
        adler = None
        for element in prop:
            if element.tag.endswith("}Checksums") and element.text:
                adler = parse_digest(element.text).get("adler32")
        path = urlsplit(href).path or href
        url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        name = path.rstrip("/").rsplit("/", 1)[-1]
        entries.append(StatInfo(url, name, size, is_dir, mtime, adler))
    return entries
