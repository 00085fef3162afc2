"""The FTS3 wire format: what `POST /jobs` accepts (as the real `fts3` client sends it) and what the job
and file records look like (`job_state`, `file_state`, `source_surl`, ...), plus link and SE settings."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class FileState(StrEnum):
    STAGING = "STAGING"
    STARTED = "STARTED"
    SUBMITTED = "SUBMITTED"
    READY = "READY"
    ACTIVE = "ACTIVE"
    ARCHIVING = "ARCHIVING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    NOT_USED = "NOT_USED"


class JobState(StrEnum):
    STAGING = "STAGING"
    SUBMITTED = "SUBMITTED"
    READY = "READY"
    ACTIVE = "ACTIVE"
    ARCHIVING = "ARCHIVING"
    FINISHED = "FINISHED"
    FINISHEDDIRTY = "FINISHEDDIRTY"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


FILE_TERMINAL = frozenset({FileState.FINISHED, FileState.FAILED, FileState.CANCELED})
JOB_TERMINAL = frozenset({JobState.FINISHED, JobState.FINISHEDDIRTY, JobState.FAILED, JobState.CANCELED})
#: States in which a worker holds the file under a lease.
LEASED = (FileState.READY, FileState.ACTIVE)


class TransferMode(StrEnum):
    PULL = "pull"
    PUSH = "push"
    STREAM = "stream"


class SubmitFile(BaseModel):
    """One entry of `files`. Unknown keys (scitag, selection_strategy, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    sources: list[str] = Field(min_length=1, max_length=16)
    destinations: list[str] = Field(min_length=1, max_length=16)
    checksum: str | None = None
    filesize: int | None = Field(default=None, ge=0)
    metadata: Any = None
    activity: str | None = None
    selection_strategy: str | None = None
    staging_metadata: Any = None
    archive_metadata: Any = None
    source_tokens: list[str] | None = None
    destination_tokens: list[str] | None = None

    @field_validator("sources", "destinations")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not isinstance(url, str) or "://" not in url:
                raise ValueError(f"{url!r} is not a URL (scheme://host/path)")
        return value


class SubmitParams(BaseModel):
    """`params` of a submission. The client sends many more keys (gridftp, spacetokens, ipv4, ...): they
    are accepted; those this service has no use for are kept in the job's internal parameters."""

    model_config = ConfigDict(extra="allow")

    verify_checksum: bool | str | None = None
    overwrite: bool | None = False
    overwrite_on_retry: bool | None = False
    reuse: bool | None = None
    retry: int | None = 0
    retry_delay: int | None = 0
    bring_online: int | None = -1
    copy_pin_lifetime: int | None = -1
    archive_timeout: int | None = -1
    priority: int | None = None
    job_metadata: Any = None
    max_time_in_queue: int | str | None = None
    timeout: int | None = None
    id_generator: str | None = "standard"
    sid: str | None = None
    multihop: bool | None = False
    checksum: str | None = None
    filesize: int | None = None
    activity: str | None = None
    file_metadata: Any = None
    transfer_mode: TransferMode | None = None
    """junodcs extension: force pull/push/stream for this job (else link/SE configuration, else pull)."""


class SubmitJob(BaseModel):
    model_config = ConfigDict(extra="allow")

    files: list[SubmitFile] = Field(default_factory=list, max_length=10_000)
    params: SubmitParams = Field(default_factory=SubmitParams)
    delete: Any = None
    staging: Any = None


class LinkConfig(BaseModel):
    """`/config/links` entry (FTS3 names) plus `tpc_mode`. `source`/`destination`: an SE name of
    grid.yaml, an SE URL (`https://host:port`) or `*`."""

    model_config = ConfigDict(extra="ignore")

    symbolicname: str | None = None
    source: str = "*"
    destination: str = "*"
    min_active: int = Field(default=2, ge=1, le=10_000)
    max_active: int = Field(default=130, ge=1, le=10_000)
    optimizer_mode: int = Field(default=2, ge=0, le=3)
    nostreams: int | None = None
    tcp_buffer_size: int | None = None
    no_delegation: bool | None = None
    tpc_mode: TransferMode | None = None


class SELimits(BaseModel):
    """Per-SE caps (`/config/se`, FTS3 `t_se` columns) plus the SE's preferred `tpc_mode`."""

    model_config = ConfigDict(extra="ignore")

    inbound_max_active: int | None = Field(default=None, ge=0)
    outbound_max_active: int | None = Field(default=None, ge=0)
    inbound_max_throughput: float | None = Field(default=None, ge=0)
    outbound_max_throughput: float | None = Field(default=None, ge=0)
    tpc_mode: TransferMode | None = None


class Share(BaseModel):
    vo: str
    activity: str = "*"
    """`*` = the VO's share (between VOs); a name = an activity share inside the VO."""
    weight: float = Field(ge=0)
