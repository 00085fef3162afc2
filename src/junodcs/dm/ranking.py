"""Which replica to read (or copy) first: same site, then the best configured link; tape after disk.

The grid description gives every SE's site and kind and the links between sites with their bandwidth.
A reader at site S prefers a disk replica at S, then the replica whose site has the fastest link to S
(a symmetric link counts both ways); replicas with no known link come after, by name so the order is
stable. Tape replicas need staging first (minutes to hours on a real tape system), so any disk replica
goes before them, and callers that cannot stage leave them out (`tape=False`). A replica marked
Problematic (missing on its SE or with the wrong checksum) is tried only after every other one, tape
included: staging is slow but a known-bad copy is worse; replicas being removed are never read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: replica statuses a reader skips entirely (being removed) or tries only after the others
SKIPPED_STATUSES = frozenset({"Trash", "Removing"})
LAST_STATUSES = frozenset({"Problematic", "Probing"})


@dataclass(frozen=True, slots=True)
class SEInfo:
    name: str
    kind: str
    site: str | None
    url: str | None
    path: str = "/juno"

    @property
    def is_tape(self) -> bool:
        return self.kind == "tape"

    def url_for(self, lfn: str, vo: str = "juno") -> str | None:
        """The physical URL of an LFN on this SE (the catalog derives replica URLs the same way)."""
        if self.url is None:
            return None
        root = f"/{vo}"
        relative = lfn[len(root):] if lfn.startswith(root + "/") else lfn
        return f"{self.url.rstrip('/')}{self.path.rstrip('/')}{relative}"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> SEInfo:
        return cls(name=data["name"], kind=str(data.get("kind") or "disk"), site=data.get("site"),
                   url=data.get("url"), path=data.get("path") or "/juno")


class Links:
    """Bandwidth (Mb/s) between sites, from the grid description's links."""

    def __init__(self, links: Iterable[Mapping[str, Any]] = ()) -> None:
        self._bw: dict[tuple[str, str], float] = {}
        for link in links:
            src, dst, bw = link["source"], link["destination"], float(link["bandwidth"])
            self._bw[(src, dst)] = max(bw, self._bw.get((src, dst), 0.0))
            if link.get("symmetric", True):
                self._bw.setdefault((dst, src), bw)

    def bandwidth(self, source: str | None, destination: str | None) -> float | None:
        if source is None or destination is None:
            return None
        return self._bw.get((source, destination))


@dataclass(frozen=True, slots=True)
class Candidate:
    se: SEInfo
    url: str
    status: str

    @property
    def problematic(self) -> bool:
        return self.status in LAST_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {"se": self.se.name, "site": self.se.site, "url": self.url, "status": self.status}


def rank_replicas(replicas: Iterable[Mapping[str, Any]], ses: Mapping[str, SEInfo], links: Links,
                  site: str | None, *, lfn: str, vo: str = "juno",
                  exclude: Iterable[str] = (), tape: bool = False) -> tuple[list[Candidate], list[str]]:
    """Readable replicas best first, and the names of the SEs skipped (no URL, being removed, and tape
    unless `tape`: the caller can stage)."""
    excluded = set(exclude)
    ranked: list[tuple[tuple[Any, ...], Candidate]] = []
    skipped: list[str] = []
    for replica in replicas:
        name = replica["se"]
        if name in excluded:
            continue
        se = ses.get(name) or SEInfo(name=name, kind="disk", site=None, url=None)
        status = str(replica.get("status") or "AprioriGood")
        url = replica.get("url") or se.url_for(lfn, vo)
        if (se.is_tape and not tape) or url is None or status in SKIPPED_STATUSES:
            skipped.append(name)
            continue
        same_site = site is not None and se.site == site
        bandwidth = links.bandwidth(se.site, site) if not same_site else None
        key = (status in LAST_STATUSES, se.is_tape, not same_site, -(bandwidth or 0.0), bandwidth is None, name)
        ranked.append((key, Candidate(se, url, status)))
    ranked.sort(key=lambda item: item[0])
    return [c for _, c in ranked], skipped
