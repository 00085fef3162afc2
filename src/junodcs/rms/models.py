"""RMS wire format: a request of ordered operations, each on files (DIRAC's Request/Operation/File)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, field_validator


class RequestStatus(StrEnum):
    WAITING = "Waiting"
    SCHEDULED = "Scheduled"
    ASSIGNED = "Assigned"
    DONE = "Done"
    FAILED = "Failed"
    CANCELED = "Canceled"


class OperationStatus(StrEnum):
    QUEUED = "Queued"
    WAITING = "Waiting"
    SCHEDULED = "Scheduled"
    DONE = "Done"
    FAILED = "Failed"
    CANCELED = "Canceled"


class FileStatus(StrEnum):
    WAITING = "Waiting"
    SCHEDULED = "Scheduled"
    DONE = "Done"
    FAILED = "Failed"


class OperationType(StrEnum):
    REPLICATE_AND_REGISTER = "ReplicateAndRegister"
    REMOVE_REPLICA = "RemoveReplica"
    REMOVE_FILE = "RemoveFile"
    REGISTER_FILE = "RegisterFile"
    REGISTER_REPLICA = "RegisterReplica"
    PUT_AND_REGISTER = "PutAndRegister"
    SET_FILE_STATUS = "SetFileStatus"


REQUEST_FINAL = frozenset({RequestStatus.DONE, RequestStatus.FAILED, RequestStatus.CANCELED})
MAX_FILES_PER_OPERATION = 10_000


class FileIn(BaseModel):
    lfn: str = Field(min_length=2, max_length=1024)
    pfn: str | None = None
    guid: str | None = None
    size: int | None = Field(default=None, ge=0)
    checksum: str | None = None
    checksum_type: str | None = "ADLER32"

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.split(":", 1)[-1].strip().lower()
        return value.zfill(8) if len(value) < 8 else value


class OperationIn(BaseModel):
    type: OperationType
    source_se: str | None = None
    target_se: list[str] = Field(default_factory=list)
    arguments: dict[str, Any] = Field(default_factory=dict)
    files: list[FileIn] = Field(min_length=1, max_length=MAX_FILES_PER_OPERATION)

    @field_validator("target_se", mode="before")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class RequestIn(BaseModel):
    name: str | None = Field(default=None, max_length=255)
    job_id: int | None = None
    source_component: str | None = Field(default=None, max_length=64)
    not_before: float | None = Field(default=None, ge=0, description="seconds from now")
    operations: list[OperationIn] = Field(min_length=1, max_length=100)


def from_dirac(record: dict[str, Any]) -> dict[str, Any]:
    """A DIRAC-shaped request (the job wrapper's failover record: `RequestName`, `JobID`, `Operations` of
    `{Type, LFN, SourceSE, TargetSE, Checksum, ChecksumType, Size}`) as a `RequestIn` body."""
    if "operations" in record:
        return record
    operations = []
    for op in record.get("Operations", []):
        files = op.get("Files") or [{"LFN": op.get("LFN"), "PFN": op.get("PFN"), "GUID": op.get("GUID"),
                                     "Size": op.get("Size"), "Checksum": op.get("Checksum"),
                                     "ChecksumType": op.get("ChecksumType")}]
        arguments = dict(op.get("Arguments") or {})
        operations.append({
            "type": op["Type"], "source_se": op.get("SourceSE"), "target_se": op.get("TargetSE"),
            "arguments": arguments,
            "files": [{"lfn": f.get("LFN"), "pfn": f.get("PFN"), "guid": f.get("GUID"), "size": f.get("Size"),
                       "checksum": f.get("Checksum"), "checksum_type": f.get("ChecksumType") or "ADLER32"}
                      for f in files]})
    return {"name": record.get("RequestName"), "job_id": record.get("JobID"),
            "source_component": record.get("SourceComponent"), "operations": operations}
