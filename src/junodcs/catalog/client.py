"""Client of the file catalog API (`/api/v1/catalog`); streamed answers are read line by line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from junodcs.core.client import BaseClient

MAX_BULK = 10_000


class CatalogClient(BaseClient):
    prefix = "/api/v1/catalog"

    # namespace
    def stat(self, lfn: str) -> dict[str, Any]:
        return self.get("/stat", params={"lfn": lfn})

    def ls(self, lfn: str, *, cursor: str | None = None, limit: int = 1000) -> dict[str, Any]:
        params: dict[str, Any] = {"lfn": lfn, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self.get("/ls", params=params)

    def iter_ls(self, lfn: str) -> Iterator[dict[str, Any]]:
        return self.stream_lines("GET", "/ls", params={"lfn": lfn, "stream": "true"})

    def mkdir(self, lfn: str, mode: int | None = None) -> dict[str, Any]:
        return self.post("/mkdir", json={"lfn": lfn, "mode": mode})

    def move(self, source: str, destination: str) -> dict[str, Any]:
        return self.post("/move", json={"source": source, "destination": destination})

    def remove(self, lfn: str, *, recursive: bool = False) -> dict[str, Any]:
        return self.post("/remove", json={"lfn": lfn, "recursive": recursive})

    def usage(self, lfn: str, *, children: bool = False) -> dict[str, Any]:
        return self.get("/usage", params={"lfn": lfn, "children": children})

    # files and replicas
    def _bulk(self, path: str, entries: list[dict[str, Any]], all_or_nothing: bool) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        if all_or_nothing and len(entries) > MAX_BULK:
            from junodcs.catalog.errors import TooManyEntries

            raise TooManyEntries(f"all-or-nothing calls take at most {MAX_BULK} entries")
        for i in range(0, len(entries), MAX_BULK):
            answer = self.post(path, json={"entries": entries[i : i + MAX_BULK]},
                               params={"all_or_nothing": all_or_nothing})
            results.extend(answer["results"])
        return results

    def register(self, entries: list[dict[str, Any]], *, all_or_nothing: bool = False) -> list[dict[str, Any]]:
        return self._bulk("/files", entries, all_or_nothing)

    def add_replicas(self, entries: list[dict[str, Any]], *, all_or_nothing: bool = False) -> list[dict[str, Any]]:
        return self._bulk("/replicas", entries, all_or_nothing)

    def replicas(self, lfns: list[str]) -> dict[str, list[dict[str, Any]]]:
        return self.post("/replicas/get", json={"entries": lfns})

    def remove_replica(self, lfn: str, se: str, *, force: bool = False) -> dict[str, Any]:
        return self.post("/replicas/remove", json={"lfn": lfn, "se": se, "force": force})

    def set_replica_status(self, lfn: str, se: str, status: str) -> dict[str, Any]:
        return self.post("/replicas/status", json={"lfn": lfn, "se": se, "status": status})

    def set_file_status(self, lfn: str, status: str) -> dict[str, Any]:
        return self.post("/files/status", json={"lfn": lfn, "status": status})

    def add_ancestors(self, lfn: str, ancestors: list[str]) -> dict[str, Any]:
        return self.post("/ancestors", json={"lfn": lfn, "ancestors": ancestors})

    def ancestors(self, lfn: str, depth: int = 1) -> list[dict[str, Any]]:
        return self.get("/ancestors", params={"lfn": lfn, "depth": depth})

    def descendants(self, lfn: str, depth: int = 1) -> list[dict[str, Any]]:
        return self.get("/descendants", params={"lfn": lfn, "depth": depth})

    # metadata
    def define_field(self, name: str, type_: str, level: str = "file") -> dict[str, Any]:
        return self.post("/metadata/fields", json={"name": name, "type": type_, "level": level})

    def fields(self) -> list[dict[str, Any]]:
        return self.get("/metadata/fields")

    def set_metadata(self, entries: list[dict[str, Any]], *, all_or_nothing: bool = False) -> list[dict[str, Any]]:
        return self._bulk("/metadata", entries, all_or_nothing)

    def get_metadata(self, lfn: str) -> dict[str, Any]:
        return self.get("/metadata", params={"lfn": lfn})

    def find(self, query: Any, path: str | None = None, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
        return self.stream_lines("POST", "/find", json={"query": query, "path": path, "limit": limit})

    def count(self, query: Any, path: str | None = None) -> dict[str, int]:
        return self.post("/count", json={"query": query, "path": path})

    # datasets
    def create_dataset(self, name: str, query: Any, path: str | None = None, description: str = "") -> dict[str, Any]:
        return self.post("/datasets", json={"name": name, "query": query, "path": path, "description": description})

    def datasets(self) -> list[dict[str, Any]]:
        return self.get("/datasets")

    def dataset(self, name: str) -> dict[str, Any]:
        return self.get(f"/datasets/{name}")

    def freeze_dataset(self, name: str) -> dict[str, Any]:
        return self.post(f"/datasets/{name}/freeze")

    def release_dataset(self, name: str) -> dict[str, Any]:
        return self.post(f"/datasets/{name}/release")

    def dataset_files(self, name: str) -> Iterator[dict[str, Any]]:
        return self.stream_lines("GET", f"/datasets/{name}/files")

    def remove_dataset(self, name: str) -> dict[str, Any]:
        return self.delete(f"/datasets/{name}")
