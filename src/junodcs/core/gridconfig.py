"""The validated description of one grid: `grid.yaml`.

One file says what the grid is made of: the VO, its sites with their computing and storage elements,
the network links between sites, the registry (users, groups, properties, VOMS FQAN -> group) and the
URLs of the central services. Every component reads the same model, so a rule about the grid's shape
(a link must join known sites, a user's groups must exist) is checked once, here, when the file loads.

A bad file raises `ConfigError` whose message names the field (`sites[2].computing_elements[0].slots`)
and the reason, so that an operator can fix it without reading code.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from junodcs.core.errors import ConfigError


class Property(StrEnum):
    """What a group's members may do. Policies test these, never group names."""

    NORMAL_USER = "NormalUser"
    PRODUCTION_MANAGEMENT = "ProductionManagement"
    JOB_ADMINISTRATOR = "JobAdministrator"
    FILE_CATALOG_ADMINISTRATOR = "FileCatalogAdministrator"
    TRANSFER_ADMINISTRATOR = "TransferAdministrator"
    CONDITIONS_MANAGER = "ConditionsManager"
    PILOT = "Pilot"
    SERVICE_ADMINISTRATOR = "ServiceAdministrator"


class CEType(StrEnum):
    LOCAL = "local"
    HTCONDOR = "htcondor"
    SLURM = "slurm"


class SEKind(StrEnum):
    DISK = "disk"
    TAPE = "tape"


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_megabytes(value: Any) -> int:
    """Memory in MB from `3500`, `"3.5 GB"`, `"4096MB"` or `"16GiB"`: operators write it all ways."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4096 (MB) or '4 GB'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError("must be positive")
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"cannot read {value!r} as a size; write e.g. 4096, '4 GB' or '16GiB'")
    number, unit = float(match.group(1)), match.group(2).lower()
    megabytes = number * _SIZE_UNITS[unit] / 10**6 if unit else number
    if megabytes <= 0:
        raise ValueError("must be positive")
    return int(round(megabytes))


_RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)([bB])(?:/s|ps)\s*$")


def parse_megabits_per_second(value: Any) -> float:
    """Bandwidth in Mb/s from `10000`, `"10 Gb/s"`, `"100 MB/s"` (bytes) or `"1Gbps"`."""
    if isinstance(value, bool):
        raise ValueError("expected a bandwidth such as '10 Gb/s'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError("must be positive")
        return float(value)
    match = _RATE_RE.match(str(value))
    if not match:
        raise ValueError(f"cannot read {value!r} as a bandwidth; write e.g. '10 Gb/s' or '100 MB/s'")
    number = float(match.group(1))
    scale = {"": 1e-6, "k": 1e-3, "m": 1.0, "g": 1e3, "t": 1e6}[match.group(2).lower()]
    bits = 8 if match.group(3) == "B" else 1
    rate = number * scale * bits
    if rate <= 0:
        raise ValueError("must be positive")
    return rate


Megabytes = Annotated[int, BeforeValidator(parse_megabytes)]
MegabitsPerSecond = Annotated[float, BeforeValidator(parse_megabits_per_second)]

_FQAN_RE = re.compile(r"^/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*(/Role=[A-Za-z0-9_.-]+)?(/Capability=[A-Za-z0-9_.-]+)?$")
_SITE_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def normalize_fqan(fqan: str) -> str:
    """`/juno/Role=NULL/Capability=NULL` and `/juno` mean the same FQAN: drop NULL parts."""
    parts = [p for p in fqan.split("/") if p and p not in ("Role=NULL", "Capability=NULL")]
    return "/" + "/".join(parts)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class ComputingElement(_Strict):
    name: str = Field(pattern=_NAME_RE.pattern)
    type: CEType = CEType.LOCAL
    slots: int = Field(gt=0, le=100_000)
    memory_per_slot: Megabytes = Field(description="MB of memory per slot (or per VM)")
    cores: int = Field(default=1, gt=0, le=1024, description="cores per slot")
    platform: str = "el9"
    tags: tuple[str, ...] = ()
    max_cpu_time: int = Field(default=86_400, gt=0, description="seconds a pilot may run")
    options: dict[str, str] = Field(default_factory=dict, description="backend settings (pool, partition...)")


class StorageElement(_Strict):
    name: str = Field(pattern=_NAME_RE.pattern)
    kind: SEKind = SEKind.DISK
    url: str | None = Field(default=None, description="base URL; omitted: served by the local grid")
    path: str = Field(default="/juno", description="VO namespace prefix on this SE")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^(https|davs|http|root|file)://", value):
            raise ValueError("must start with https://, davs://, http://, root:// or file://")
        return value.rstrip("/")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be an absolute path without '..'")
        return value.rstrip("/") or "/"


class Squid(_Strict):
    url: str | None = Field(default=None, description="proxy URL; omitted: started by the local grid")


class Site(_Strict):
    name: str
    tiers: tuple[int, ...] = Field(min_length=1, description="0, 1, 2 or 3; IHEP is both 0 and 1")
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166 two-letter code")
    description: str = ""
    computing_elements: tuple[ComputingElement, ...] = ()
    storage_elements: tuple[StorageElement, ...] = ()
    squids: tuple[Squid, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SITE_RE.match(value):
            raise ValueError("site names look like GRID.IHEP.cn (letters, digits, '-', '_', dots)")
        return value

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [t for t in value if t not in (0, 1, 2, 3)]
        if bad:
            raise ValueError(f"tier {bad[0]} is not one of 0, 1, 2, 3")
        return tuple(sorted(set(value)))


class Link(_Strict):
    source: str
    destination: str
    bandwidth: MegabitsPerSecond = Field(description="Mb/s")
    symmetric: bool = Field(default=True, description="also describes destination -> source")


class Group(_Strict):
    properties: tuple[Property, ...] = ()
    voms_fqan: str | None = Field(default=None, description="FQAN that maps to this group")
    pool_accounts: dict[str, str] = Field(default_factory=dict, description="site -> local account")

    @field_validator("voms_fqan")
    @classmethod
    def _fqan(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _FQAN_RE.match(value):
            raise ValueError("an FQAN looks like /juno or /juno/Role=production")
        return normalize_fqan(value)


class User(_Strict):
    dn: str | None = Field(default=None, description="certificate subject, e.g. /C=CN/O=JUNO/CN=Alice")
    subject: str | None = Field(default=None, description="token subject at the issuer")
    email: str | None = None
    groups: tuple[str, ...] = Field(min_length=1)
    local_accounts: dict[str, str] = Field(default_factory=dict, description="site -> local account")

    @field_validator("dn")
    @classmethod
    def _dn(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("write DNs in the OpenSSL slash form, e.g. /C=CN/O=JUNO/CN=Alice")
        return value


class Registry(_Strict):
    default_group: str = "juno_user"
    groups: dict[str, Group]
    users: dict[str, User] = Field(default_factory=dict)

    @field_validator("groups", "users")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid name (letters, digits, '_', '.', '-')")
        return value

    @model_validator(mode="after")
    def _references(self) -> Registry:
        if self.default_group not in self.groups:
            raise ValueError(f"default_group {self.default_group!r} is not a defined group")
        for name, user in self.users.items():
            for group in user.groups:
                if group not in self.groups:
                    raise ValueError(f"users.{name}.groups: unknown group {group!r}")
        seen: dict[str, str] = {}
        for name, group in self.groups.items():
            if group.voms_fqan is None:
                continue
            if group.voms_fqan in seen:
                raise ValueError(
                    f"groups.{name}.voms_fqan: {group.voms_fqan} already maps to group {seen[group.voms_fqan]!r}"
                )
            seen[group.voms_fqan] = name
        dns: dict[str, str] = {}
        for name, user in self.users.items():
            if user.dn is not None:
                if user.dn in dns:
                    raise ValueError(f"users.{name}.dn: the same DN is already user {dns[user.dn]!r}")
                dns[user.dn] = name
        return self


class Servers(_Strict):
    central: str | None = Field(default=None, description="central server URL; omitted: local grid")
    issuer: str | None = Field(default=None, description="token issuer; defaults to the central URL")
    trusted_issuers: tuple[str, ...] = Field(default=(), description="other issuers whose tokens we accept")
    frontier: str | None = Field(
        default=None, description="plain-HTTP Frontier endpoint the site Squids cache (…/Frontier)"
    )
    sandbox_se: str | None = Field(
        default=None, description="disk SE that holds job sandboxes; omitted: the central server's own disk"
    )


class VOMSServer(_Strict):
    host: str
    port: int = Field(default=15000, gt=0, lt=65536)
    dn: str | None = Field(default=None, description="subject of the VOMS server's host certificate")


class GridConfig(_Strict):
    vo: str = Field(pattern=r"^[a-z][a-z0-9.-]*$")
    servers: Servers = Servers()
    voms: tuple[VOMSServer, ...] = ()
    sites: tuple[Site, ...] = Field(min_length=1)
    links: tuple[Link, ...] = ()
    registry: Registry

    @model_validator(mode="after")
    def _consistent(self) -> GridConfig:
        site_names: set[str] = set()
        for index, site in enumerate(self.sites):
            if site.name in site_names:
                raise ValueError(f"sites[{index}].name: site {site.name!r} is defined twice")
            site_names.add(site.name)
        for kind, attribute in (("storage element", "storage_elements"), ("computing element", "computing_elements")):
            owner: dict[str, str] = {}
            for site in self.sites:
                for element in getattr(site, attribute):
                    if element.name in owner:
                        raise ValueError(
                            f"{kind} {element.name!r} is defined at {owner[element.name]} and at {site.name}"
                        )
                    owner[element.name] = site.name
        pairs: set[tuple[str, str]] = set()
        for index, link in enumerate(self.links):
            for end in ("source", "destination"):
                if getattr(link, end) not in site_names:
                    raise ValueError(f"links[{index}].{end}: unknown site {getattr(link, end)!r}")
            if link.source == link.destination:
                raise ValueError(f"links[{index}]: a link joins two different sites")
            if (link.source, link.destination) in pairs:
                raise ValueError(f"links[{index}]: link {link.source} -> {link.destination} is defined twice")
            pairs.add((link.source, link.destination))
        for name, group in self.registry.groups.items():
            if group.voms_fqan and group.voms_fqan.split("/")[1] != self.vo:
                raise ValueError(f"registry.groups.{name}.voms_fqan: {group.voms_fqan} is not in VO {self.vo!r}")
            for site in group.pool_accounts:
                if site not in site_names:
                    raise ValueError(f"registry.groups.{name}.pool_accounts: unknown site {site!r}")
        if self.servers.sandbox_se is not None:
            kinds = {se.name: se.kind for site in self.sites for se in site.storage_elements}
            if self.servers.sandbox_se not in kinds:
                raise ValueError(f"servers.sandbox_se: unknown storage element {self.servers.sandbox_se!r}")
            if kinds[self.servers.sandbox_se] is not SEKind.DISK:
                raise ValueError(f"servers.sandbox_se: {self.servers.sandbox_se} is a tape SE; sandboxes need disk")
        for name, user in self.registry.users.items():
            for site in user.local_accounts:
                if site not in site_names:
                    raise ValueError(f"registry.users.{name}.local_accounts: unknown site {site!r}")
        return self

    # -- lookups used across the code base ---------------------------------------------------------

    def site(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def storage_element(self, name: str) -> tuple[Site, StorageElement]:
        for site in self.sites:
            for se in site.storage_elements:
                if se.name == name:
                    return site, se
        raise KeyError(name)

    def link(self, source: str, destination: str) -> Link | None:
        for link in self.links:
            if (link.source, link.destination) == (source, destination):
                return link
            if link.symmetric and (link.destination, link.source) == (source, destination):
                return link
        return None


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith(("function-", "tagged-union", "constrained-")):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        if item["loc"]:
            lines.append(f"{source}: {_location(tuple(item['loc']))}: {message}")
        else:  # a cross-field rule: its message already names the fields
            lines.append(f"{source}: {message}")
    return "\n".join(lines)


def parse_grid_config(data: Any, source: str = "grid.yaml") -> GridConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with vo, sites and registry")
    try:
        return GridConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_grid_config(path: str | Path) -> GridConfig:
    """Read and validate a grid.yaml; any problem is a `ConfigError` naming the file and the field."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {reason}") from None
    return parse_grid_config(data, str(path))


def example_grid_path() -> Path:
    """The JUNO topology shipped with the package (also `examples/grid.yaml` in the source tree)."""
    return Path(__file__).resolve().parent.parent / "data" / "grid.yaml"
