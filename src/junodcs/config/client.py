"""Client of the grid-description API (`/api/v1/config`)."""

from __future__ import annotations

from typing import Any

from junodcs.core.client import BaseClient


class ConfigClient(BaseClient):
    prefix = "/api/v1/config"

    def sites(self) -> list[dict[str, Any]]:
        return self.get("/sites")

    def site(self, name: str) -> dict[str, Any]:
        return self.get(f"/sites/{name}")

    def storage_elements(self) -> list[dict[str, Any]]:
        return self.get("/storage-elements")

    def links(self) -> list[dict[str, Any]]:
        return self.get("/links")
