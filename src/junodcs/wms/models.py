"""Workload management models: the job description (JDL and JSON), statuses, and the pilot-facing messages.

`JobDescription` is the equivalent of a DIRAC JDL as a pydantic model: the same attribute names (JSON keys are
the JDL names, e.g. `{"Executable": "run.sh", "CPUTime": 3600}`), the same defaults and bounds
(`JobModel.py`), and messages that name the attribute. `load_description` accepts JDL text or a JSON mapping
and returns the validated template plus its parametric expansion.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from junodcs.core.errors import InvalidInput
from junodcs.core.gridconfig import parse_megabytes
from junodcs.wms import jdl as jdlmod


class JobStatus(StrEnum):
    RECEIVED = "Received"
    CHECKING = "Checking"
    STAGING = "Staging"
    WAITING = "Waiting"
    MATCHED = "Matched"
    RUNNING = "Running"
    STALLED = "Stalled"
    COMPLETING = "Completing"
    DONE = "Done"
    FAILED = "Failed"
    KILLED = "Killed"
    DELETED = "Deleted"
    RESCHEDULED = "Rescheduled"


FINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.KILLED, JobStatus.DELETED})
ACTIVE = frozenset({JobStatus.MATCHED, JobStatus.RUNNING, JobStatus.STALLED, JobStatus.COMPLETING})
"""Statuses in which a pilot holds the job (they count against running limits and fair shares)."""


class Minor:
    """Minor statuses set by the server (DIRAC's `JobMinorStatus` wording where one exists)."""

    ACCEPTED = "Job accepted"
    OPTIMIZING = "Job sanity and input data"
    PILOT_SUBMISSION = "Pilot Agent Submission"
    ASSIGNED = "Assigned to pilot"
    STAGING = "Request to stage input files"
    INPUT_NOT_AVAILABLE = "Input Data Not Available"
    SANDBOX_MISSING = "Input sandbox not found"
    RESCHEDULED = "Job Rescheduled"
    MAX_RESCHEDULING = "Maximum of reschedulings reached"
    MARKED_FOR_TERMINATION = "Marked for termination"
    KILLED_BY_USER = "Killed by user"
    STALLED = "Watchdog identified this job as stalled"
    PILOT_DEAD = "Job stalled: pilot not running"
    MEMORY_EXCEEDED = "Job exceeded its memory limit"
    MATCHED_TOO_LONG = "Matched but never started"
    DELETED = "Deleted by user"
    PENDING_REQUESTS = "Pending Requests"
    """Prefix of the Completing minor status: output data wait on a failover SE for the RMS."""
    REQUESTS_DONE = "Execution Complete: pending requests done"


class SiteStatus(StrEnum):
    ACTIVE = "Active"
    BANNED = "Banned"


USER_JOB_TYPES = ("User", "Test", "Hospital")
PRODUCTION_JOB_TYPES = ("MCSimulation", "MCReconstruction", "DataReconstruction", "Merge", "Calibration")

MAX_INPUT_DATA = 500
TEXT_FIELDS = frozenset({"Executable", "Arguments", "StdOutput", "StdError", "JobName", "JobGroup", "OutputPath"})
"""Attributes whose values are free text: placeholders in them never change the validation outcome."""

IGNORED = frozenset({
    "LogLevel", "JobConfigArgs", "Origin", "JobPath", "SubmitPools", "Requirements", "Owner", "OwnerDN",
    "OwnerGroup", "VirtualOrganization", "DIRACSetup", "StopSigNumber", "StopSigRegex", "StopSigStartSeconds",
    "StopSigFinishSeconds", "InputDataModule", "DisableDataScheduling", "JobRequirements",
})
"""DIRAC attributes accepted for compatibility; the server sets owner and group from the credentials."""


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]
    return value


class ParameterSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    values: list[Any] | int | float
    start: float = 0
    step: float = 1
    factor: float = 1


class JobDescription(BaseModel):
    """One job as DIRAC's JDL describes it (attribute names as in the JDL)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=False)

    Executable: str = Field(min_length=1, max_length=4096)
    Arguments: str = Field(default="", max_length=65536)
    StdOutput: str = "std.out"
    StdError: str = "std.err"
    InputSandbox: list[str] = Field(default_factory=list, max_length=1000)
    OutputSandbox: list[str] = Field(default_factory=list, max_length=1000)
    InputData: list[str] = Field(default_factory=list)
    InputDataPolicy: str | None = Field(default=None, pattern="^(Download|Protocol)$")
    OutputData: list[str] = Field(default_factory=list, max_length=10000)
    OutputSE: list[str] = Field(default_factory=list)
    OutputPath: str = ""
    Site: list[str] = Field(default_factory=list)
    BannedSites: list[str] = Field(default_factory=list)
    GridCE: list[str] = Field(default_factory=list)
    Platform: str | None = None
    CPUTime: int = Field(default=86400, ge=100, le=500000, description="HS06-normalised seconds")
    Priority: int = Field(default=1, ge=0, le=10)
    JobGroup: str = Field(default="", max_length=128)
    JobName: str = Field(default="", max_length=255)
    JobType: str = "User"
    Tags: list[str] = Field(default_factory=list)
    NumberOfProcessors: int | None = Field(default=None, ge=1, le=1024)
    MinNumberOfProcessors: int | None = Field(default=None, ge=1, le=1024)
    MaxNumberOfProcessors: int | None = Field(default=None, ge=1, le=1024)
    WholeNode: bool = False
    MaxRAM: int | None = Field(default=None, ge=1, le=4_000_000, description="MB of memory the job needs")
    ExecutionEnvironment: dict[str, str] = Field(default_factory=dict)
    Parameters: list[Any] | int | float | None = None
    ParameterStart: float = 0
    ParameterStep: float = 1
    ParameterFactor: float = 1
    ParameterSets: dict[str, ParameterSet] = Field(default_factory=dict)
    """Named sequences `Parameters.<name>` (with `ParameterStart.<name>` ...)."""
    Parameter: Any = None
    """Set on each expanded job: the value of the default sequence (DIRAC: `Parameter`)."""
    ParameterNumber: int | None = None
    ParameterValues: dict[str, Any] = Field(default_factory=dict)
    """Set on each expanded job: the values of the named sequences (DIRAC: `Parameter.<name>`)."""

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a job description is a mapping of JDL attributes")
        return normalise_attributes(data)

    @field_validator("InputSandbox", "OutputSandbox", "InputData", "OutputData", "OutputSE", "Site",
                     "BannedSites", "GridCE", "Tags", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        value = _as_list(value)
        if isinstance(value, list):
            return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("Arguments", "JobGroup", "JobName", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return jdlmod.format_value(value)
        if isinstance(value, list):  # DIRAC accepts Arguments = {"a", "b"}
            return " ".join(str(v) for v in value)
        return value

    @field_validator("MaxRAM", mode="before")
    @classmethod
    def _ram(cls, value: Any) -> Any:
        if value is None or isinstance(value, int):
            return value
        return parse_megabytes(value)

    @field_validator("ExecutionEnvironment", mode="before")
    @classmethod
    def _environment(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            env: dict[str, str] = {}
            for item in value:
                key, sep, val = str(item).partition("=")
                if not sep or not key:
                    raise ValueError(f"{item!r} is not NAME=value")
                env[key] = val
            return env
        return value

    @field_validator("InputData")
    @classmethod
    def _lfns(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_INPUT_DATA:
            raise ValueError(f"{len(value)} files: at most {MAX_INPUT_DATA} input files per job")
        out = []
        for lfn in value:
            lfn = lfn.strip()
            if lfn.upper().startswith("LFN:"):
                lfn = lfn[4:]
            if not lfn.startswith("/") or "//" in lfn or "/../" in lfn + "/" or lfn.endswith("/"):
                raise ValueError(f"{lfn!r} is not an LFN (absolute, like /juno/..., no '//' or '..')")
            out.append(lfn)
        return out

    @field_validator("Executable")
    @classmethod
    def _executable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobDescription:
        if self.Site and not set(self.Site) - set(self.BannedSites):
            raise ValueError("Site minus BannedSites is empty: the job could run nowhere")
        low, high = self.MinNumberOfProcessors, self.MaxNumberOfProcessors
        if low is not None and high is not None and low > high:
            raise ValueError(f"MinNumberOfProcessors ({low}) is larger than MaxNumberOfProcessors ({high})")
        return self

    # -- derived requirements -----------------------------------------------------------------------

    @property
    def is_parametric(self) -> bool:
        return self.Parameters is not None or bool(self.ParameterSets)

    @property
    def cores(self) -> int:
        return self.NumberOfProcessors or self.MinNumberOfProcessors or 1

    def requirement_tags(self) -> list[str]:
        tags = set(self.Tags)
        if self.cores > 1:
            tags.add("MultiProcessor")
        if self.WholeNode:
            tags.add("WholeNode")
        return sorted(tags)

    def to_jdl(self) -> str:
        return jdlmod.dumps(self.public())

    def public(self) -> dict[str, Any]:
        """The attributes that differ from the defaults, JDL names as keys."""
        return self.model_dump(mode="json", exclude_defaults=True)


_CANONICAL = {name.lower(): name for name in JobDescription.model_fields}
_CANONICAL["tag"] = "Tags"
_CANONICAL["banned_sites"] = "BannedSites"
_IGNORED_LOWER = {name.lower(): name for name in IGNORED}
_SEQUENCE_KEYS = {"parameters": "values", "parameterstart": "start", "parameterstep": "step",
                  "parameterfactor": "factor"}


def normalise_attributes(data: dict[str, Any]) -> dict[str, Any]:
    """JDL names are case-insensitive: map them to DIRAC's spelling; collect `Parameters.<name>` sets;
    refuse unknown attributes with a suggestion (a typo must not silently lose a requirement)."""
    out: dict[str, Any] = {}
    sets: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"attribute names are strings, not {key!r}")
        lowered = key.lower()
        if "." in lowered:
            head, _, name = key.partition(".")
            field = _SEQUENCE_KEYS.get(head.lower())
            if field is None or not name.isidentifier():
                raise ValueError(f"unknown attribute {key!r}")
            sets.setdefault(name, {})[field] = value
            continue
        if lowered in _CANONICAL:
            canonical = _CANONICAL[lowered]
            if canonical in out:
                raise ValueError(f"attribute {canonical} is given twice")
            out[canonical] = value
        elif lowered in _IGNORED_LOWER:
            continue
        else:
            guess = difflib.get_close_matches(key, list(JobDescription.model_fields) + ["Tag"], n=1, cutoff=0.75)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            raise ValueError(f"unknown attribute {key!r}{hint}")
    if sets:
        merged = dict(out.get("ParameterSets") or {})
        for name, spec in sets.items():
            if "values" not in spec:
                raise ValueError(f"ParameterStart/Step/Factor.{name} given without Parameters.{name}")
            merged[name] = spec
        out["ParameterSets"] = merged
    return out


# -- loading and expansion --------------------------------------------------------------------------------


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith(("function-", "union[", "list[", "int", "float")))


def describe_validation_error(error: ValidationError, lines: dict[str, int] | None = None,
                              prefix: str = "") -> str:
    messages = []
    lowered = {k.lower(): v for k, v in (lines or {}).items()}
    for item in error.errors(include_url=False)[:5]:
        message = item["msg"].removeprefix("Value error, ")
        where = _location(tuple(item["loc"]))
        line = lowered.get(str(item["loc"][0]).lower()) if item["loc"] else None
        at = f" (line {line})" if line else ""
        if where:
            got = item.get("input")
            shown = "" if isinstance(got, (dict, list)) or got is None or "got" in message else f" (got {got!r})"
            messages.append(f"{prefix}{where}{at}: {message}{shown}")
        else:
            messages.append(f"{prefix}{message}")
    return "; ".join(messages)


class InvalidJob(InvalidInput):
    code = "invalid-job"


def validate_description(data: Any, lines: dict[str, int] | None = None, prefix: str = "") -> JobDescription:
    try:
        return JobDescription.model_validate(data)
    except ValidationError as exc:
        raise InvalidJob(describe_validation_error(exc, lines, prefix)) from None


def parse_description(source: str | dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """JDL text or a JSON mapping -> (raw attributes, attribute lines)."""
    if isinstance(source, str):
        return jdlmod.parse(source)
    if isinstance(source, dict):
        return dict(source), {}
    raise InvalidJob("a job is JDL text or a JSON object of JDL attributes")


@dataclass
class Expansion:
    """A validated description and the jobs it expands to (one for a plain job)."""

    template: JobDescription
    count: int
    default: list[Any] | None
    named: dict[str, list[Any]]
    placeholder_fields: frozenset[str]
    raw: dict[str, Any]

    @property
    def text_only(self) -> bool:
        return self.placeholder_fields <= TEXT_FIELDS

    def job(self, index: int, job_id: int | None = None) -> JobDescription:
        """The description of job `index` (0-based) with placeholders replaced."""
        if self.count == 1 and not self.default and not self.named:
            return self.template
        default = self.default[index] if self.default else None
        named = {name: values[index] for name, values in self.named.items()}
        width = len(str(self.count - 1))
        update: dict[str, Any] = {"Parameter": default, "ParameterNumber": index, "ParameterValues": named}
        if self.text_only:
            for name in self.placeholder_fields:
                update[name] = jdlmod.substitute(getattr(self.template, name), index, width, job_id, default, named)
            return self.template.model_copy(update=update)
        data = {k: v for k, v in self.raw.items()}
        for name in self.placeholder_fields:
            data[name] = jdlmod.substitute_value(data[name], index, width, job_id, default, named)
        data.update(update)
        return validate_description(data, prefix=f"job {index}: ")


def expand(source: str | dict[str, Any], *, limit: int) -> Expansion:
    """Parse and validate one description and prepare its parametric expansion (at most `limit` jobs)."""
    raw, lines = parse_description(source)
    try:
        raw = normalise_attributes(raw)
    except ValueError as exc:
        name = str(exc).split("'")[1] if "'" in str(exc) else ""
        line = lines.get(name)
        raise InvalidJob(f"{exc}" + (f" (line {line})" if line else "")) from None
    for key in ("Parameter", "ParameterNumber", "ParameterValues"):
        raw.pop(key, None)
    placeholders = frozenset(
        k for k, v in raw.items()
        if k not in ("Parameters", "ParameterSets", "ParameterStart", "ParameterStep", "ParameterFactor")
        and jdlmod.has_placeholder(v)
    )
    template_data = dict(raw)
    for name in placeholders - TEXT_FIELDS:  # validated per job, after substitution
        template_data.pop(name)
    if "Executable" in placeholders:
        template_data["Executable"] = raw["Executable"]
    try:
        template = JobDescription.model_validate(template_data)
    except ValidationError as exc:
        raise InvalidJob(describe_validation_error(exc, lines)) from None
    default: list[Any] | None = None
    named: dict[str, list[Any]] = {}
    if template.Parameters is not None:
        default = jdlmod.generate_sequence("", template.Parameters, template.ParameterStart,
                                           template.ParameterStep, template.ParameterFactor, limit)
    for name, spec in template.ParameterSets.items():
        named[name] = jdlmod.generate_sequence(name, spec.values, spec.start, spec.step, spec.factor, limit)
    lengths = {len(v) for v in ([default] if default is not None else []) + list(named.values())}
    if len(lengths) > 1:
        detail = ", ".join(([f"Parameters: {len(default)}"] if default is not None else [])
                           + [f"Parameters.{n}: {len(v)}" for n, v in named.items()])
        raise jdlmod.ParametricError(f"parameter sequences differ in length ({detail}); they must be equal")
    count = lengths.pop() if lengths else 1
    if placeholders and count == 1 and default is None and not named:
        # a plain job may still use %j (its ID) or %%: substitution happens per job at submission
        pass
    if count > limit:
        raise jdlmod.ParametricError(f"{count} jobs: at most {limit} per submission", code="too-many-jobs")
    expansion = Expansion(template, count, default, named, placeholders, raw)
    if not expansion.text_only and placeholders:
        expansion.job(0)  # a structural error shows before any job is created
    return expansion


# -- pilot-facing messages ---------------------------------------------------------------------------------


class MatchRequest(BaseModel):
    """What a pilot offers when it asks for a job (DIRAC's resource description)."""

    model_config = ConfigDict(extra="forbid")

    pilot_id: str = Field(min_length=1, max_length=128, description="pilot reference, stable for the pilot's life")
    site: str
    ce: str
    platform: str | None = None
    tags: list[str] = Field(default_factory=list)
    required_tags: list[str] = Field(default_factory=list, description="only jobs that require all of these")
    memory_mb: int = Field(gt=0, description="memory the slot provides")
    cores: int = Field(default=1, gt=0)
    time_left: int = Field(gt=0, description="seconds the slot may still run")
    job_types: list[str] = Field(default_factory=list, description="restrict to these job types")


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int
    attempt: int = Field(ge=1)
    pilot_id: str | None = None
    cpu: float = Field(default=0, ge=0, description="CPU seconds consumed")
    rss_mb: float = Field(default=0, ge=0, description="resident memory")
    wall: float = Field(default=0, ge=0, description="wall-clock seconds since the payload started")
    stdout_tail: str | None = Field(default=None, max_length=65536, description="latest standard output (peek)")


class StatusReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int
    attempt: int = Field(ge=1)
    pilot_id: str | None = None
    status: JobStatus | None = None
    minor_status: str | None = Field(default=None, max_length=255)
    application_status: str | None = Field(default=None, max_length=255)
    source: str = Field(default="JobWrapper", max_length=32)
    memory_exceeded_mb: float | None = Field(default=None, gt=0, description="peak RSS when killed for memory")
    reschedule: bool = Field(default=False, description="a transient failure: ask for an automatic reschedule")
    parameters: dict[str, Any] = Field(default_factory=dict)
