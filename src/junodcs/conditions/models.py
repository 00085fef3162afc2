"""Conditions wire format and Python API (pydantic): payloads, tags, IOVs, global tags, resolutions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"
#: Names the REST paths use themselves; no global tag may take them.
RESERVED_NAMES = frozenset({"payloads", "tags", "globaltags", "frontier"})


class GlobalTagStatus(StrEnum):
    OPEN = "open"
    LOCKED = "locked"
    INVALID = "invalid"


class TimeType(StrEnum):
    RUN = "run"
    TIME = "time"


class PayloadInfo(BaseModel):
    hash: str
    payload_type: str
    size: int
    uri: str | None = None
    created_at: datetime
    created_by: str


class TagCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    payload_type: str = Field(pattern=NAME_PATTERN)
    time_type: TimeType = TimeType.RUN
    description: str = ""


class TagInfo(BaseModel):
    name: str
    payload_type: str
    time_type: TimeType
    description: str
    locked: bool
    created_at: datetime
    created_by: str
    locked_at: datetime | None = None
    iovs: int | None = None


class IOVCreate(BaseModel):
    since: int = Field(ge=0, description="first run (or UNIX second) of validity")
    payload_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class IOVInfo(BaseModel):
    id: int
    tag: str
    since: int
    until: int | None = Field(default=None, description="first run of the next IOV (exclusive); None: open-ended")
    payload_hash: str
    insertion_time: datetime
    inserted_by: str


class GlobalTagCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""


class GlobalTagInfo(BaseModel):
    name: str
    status: GlobalTagStatus
    description: str
    created_at: datetime
    created_by: str
    modified_at: datetime
    tags: dict[str, str] | None = Field(default=None, description="payload type -> tag")


class MapEntry(BaseModel):
    tag: str
    payload_type: str | None = Field(default=None, description="default: the tag's payload type")


class Resolution(BaseModel):
    """The payload valid for one run (or time) of one payload type in a global tag."""

    global_tag: str
    payload_type: str
    tag: str
    run: int
    since: int
    until: int | None
    payload_hash: str
    size: int
    uri: str | None = None
    cacheable: bool = Field(description="True when the global tag and the tag are locked (the answer never changes)")
