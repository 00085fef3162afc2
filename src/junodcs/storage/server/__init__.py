"""The junodcs storage element: WebDAV + HTTP-TPC + checksums + macaroons/tokens on aiohttp.

Modules: `config` (what an SE is), `paths` (confinement), `store` (files, checksums, atomic uploads),
`auth` + `macaroons` (who may do what), `webdav` (the methods), `tpc` (COPY), `app` (dispatch,
health, metrics), `run` (foreground and background servers).
"""

from junodcs.storage.server.config import SEConfig

__all__ = ["SEConfig"]
