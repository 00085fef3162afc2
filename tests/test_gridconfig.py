"""grid.yaml: the JUNO example loads, and every kind of mistake names its field and reason."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from junodcs.core.errors import ConfigError
from junodcs.core.gridconfig import (
    CEType,
    GridConfig,
    Property,
    SEKind,
    example_grid_path,
    load_grid_config,
    parse_grid_config,
    parse_megabits_per_second,
    parse_megabytes,
)

EXAMPLE = yaml.safe_load(example_grid_path().read_text())


def mutated(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE)
    change(data)
    return data


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_grid_config(data, "grid.yaml")
    return info.value.detail


def test_example_is_the_juno_topology(grid: GridConfig) -> None:
    names = {site.name for site in grid.sites}
    assert {"GRID.IHEP.cn", "GRID.CNAF.it", "GRID.IN2P3.fr", "GRID.JINR.ru", "GRID.MSU.ru"} <= names
    ihep = grid.site("GRID.IHEP.cn")
    assert ihep.tiers == (0, 1)
    assert {se.kind for se in ihep.storage_elements} == {SEKind.DISK, SEKind.TAPE}
    assert grid.site("GRID.JINR.ru").computing_elements[0].memory_per_slot == 16_000
    small = [s for s in grid.sites if s.name.startswith(("CLOUD.", "CLUSTER."))]
    assert len(small) == 2
    cloud = next(s for s in small if s.name.startswith("CLOUD."))
    assert cloud.computing_elements[0].memory_per_slot == 4_000
    others = [
        ce.memory_per_slot
        for s in grid.sites
        if s.name not in ("GRID.JINR.ru", cloud.name)
        for ce in s.computing_elements
    ]
    assert others and all(2_500 <= m <= 3_500 for m in others)
    assert all(ce.type is CEType.LOCAL for s in grid.sites for ce in s.computing_elements)


def test_links_are_symmetric_unless_said_otherwise(grid: GridConfig) -> None:
    forward = grid.link("GRID.IHEP.cn", "GRID.CNAF.it")
    assert forward is not None and forward.bandwidth == 10_000
    assert grid.link("GRID.CNAF.it", "GRID.IHEP.cn") is forward
    assert grid.link("GRID.MSU.ru", "CLUSTER.SDU.cn") is None


def test_registry_maps_fqans_to_groups(grid: GridConfig) -> None:
    groups = grid.registry.groups
    assert groups["juno_production"].voms_fqan == "/juno/Role=production"
    assert Property.PRODUCTION_MANAGEMENT in groups["juno_production"].properties
    assert groups["juno_pilot"].properties == (Property.PILOT,)


def test_storage_element_lookup(grid: GridConfig) -> None:
    site, se = grid.storage_element("IHEP-TAPE")
    assert site.name == "GRID.IHEP.cn" and se.kind is SEKind.TAPE
    with pytest.raises(KeyError):
        grid.storage_element("NOPE")


@pytest.mark.parametrize(
    ("value", "megabytes"), [(4096, 4096), ("4 GB", 4000), ("3.5GB", 3500), ("16GiB", 17180), ("512 MB", 512)]
)
def test_memory_units(value: Any, megabytes: int) -> None:
    assert parse_megabytes(value) == megabytes


@pytest.mark.parametrize("value", ["lots", "4 parsecs", -1, 0, True, "-3 GB"])
def test_bad_memory(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_megabytes(value)


@pytest.mark.parametrize(
    ("value", "mbps"), [("10 Gb/s", 10_000), ("100 MB/s", 800), ("1Gbps", 1000), (600, 600), ("500 kb/s", 0.5)]
)
def test_bandwidth_units(value: Any, mbps: float) -> None:
    assert parse_megabits_per_second(value) == pytest.approx(mbps)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["sites"][2]["computing_elements"][0].update(slots=0),
         "sites[2].computing_elements[0].slots: Input should be greater than 0"),
        (lambda d: d["sites"][0]["computing_elements"][0].update(type="pbs"),
         "sites[0].computing_elements[0].type: Input should be 'local', 'htcondor' or 'slurm'"),
        (lambda d: d["sites"][1]["computing_elements"][0].update(memory_per_slot="lots"),
         "sites[1].computing_elements[0].memory_per_slot: cannot read 'lots' as a size"),
        (lambda d: d["sites"][0]["storage_elements"][0].update(kind="cloud"),
         "sites[0].storage_elements[0].kind: Input should be 'disk' or 'tape'"),
        (lambda d: d["sites"][0]["storage_elements"][0].update(url="gsiftp://x/y"),
         "sites[0].storage_elements[0].url: must start with https://"),
        (lambda d: d["sites"][3].update(tiers=[7]), "sites[3].tiers: tier 7 is not one of 0, 1, 2, 3"),
        (lambda d: d["sites"][3].update(country="Russia"), "sites[3].country: String should match pattern"),
        (lambda d: d["sites"][0].update(colour="red"), "sites[0].colour: Extra inputs are not permitted"),
        (lambda d: d["sites"][1].update(name=d["sites"][0]["name"]), "site 'GRID.IHEP.cn' is defined twice"),
        (lambda d: d["sites"][1]["storage_elements"][0].update(name="IHEP-EOS"),
         "storage element 'IHEP-EOS' is defined at GRID.IHEP.cn and at GRID.CNAF.it"),
        (lambda d: d["links"][0].update(destination="GRID.MARS.sol"), "links[0].destination: unknown site"),
        (lambda d: d["links"][1].update(bandwidth="fast"), "links[1].bandwidth: cannot read 'fast' as a bandwidth"),
        (lambda d: d["registry"]["users"]["alice"].update(groups=["juno_wizards"]),
         "users.alice.groups: unknown group 'juno_wizards'"),
        (lambda d: d["registry"]["groups"]["juno_user"].update(voms_fqan="juno"),
         "registry.groups.juno_user.voms_fqan: an FQAN looks like /juno"),
        (lambda d: d["registry"]["groups"]["juno_data"].update(voms_fqan="/cepc/Role=x"),
         "registry.groups.juno_data.voms_fqan: /cepc/Role=x is not in VO 'juno'"),
        (lambda d: d["registry"]["groups"]["juno_data"].update(voms_fqan="/juno/Role=production"),
         "groups.juno_data.voms_fqan: /juno/Role=production already maps to group 'juno_production'"),
        (lambda d: d["registry"]["groups"]["juno_data"].update(properties=["Wizard"]),
         "registry.groups.juno_data.properties[0]: Input should be"),
        (lambda d: d["registry"]["users"]["alice"].update(dn="CN=alice"),
         "registry.users.alice.dn: write DNs in the OpenSSL slash form"),
        (lambda d: d.pop("vo"), "vo: Field required"),
    ],
)
def test_bad_files_name_the_field_and_the_reason(change: Any, expected: str) -> None:
    assert expected in error_of(mutated(change))


def test_top_level_must_be_a_mapping() -> None:
    assert "top level must be a mapping" in error_of(["not", "a", "mapping"])


def test_yaml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "grid.yaml"
    bad.write_text("vo: juno\nsites: [\n  - name: x\n")
    with pytest.raises(ConfigError) as info:
        load_grid_config(bad)
    assert str(bad) in info.value.detail and "line" in info.value.detail


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_grid_config(tmp_path / "absent.yaml")


def test_config_is_immutable(grid: GridConfig) -> None:
    with pytest.raises(Exception):
        grid.sites[0].country = "XX"  # type: ignore[misc]
