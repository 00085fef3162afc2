"""`dcs se serve --grid` shapes third-party copies to the configured link bandwidths."""

from __future__ import annotations

import yaml

from junodcs.core.gridconfig import example_grid_path, parse_grid_config
from junodcs.transfer.shaping import shaper_for


def test_each_se_is_limited_by_the_link_to_the_peer_site() -> None:
    data = yaml.safe_load(example_grid_path().read_text())
    port = 40000
    for site in data["sites"]:
        for se in site.get("storage_elements", []):
            port += 1
            se["url"] = f"https://127.0.0.1:{port}"
    grid = parse_grid_config(data)
    url = {se.name: se.url for site in grid.sites for se in site.storage_elements}
    peer = {name: value.split("://")[1] for name, value in url.items()}

    ihep = shaper_for(grid, "IHEP-EOS")
    assert ihep is not None
    assert ihep.rates[peer["CNAF-STORM"]] == 10_000e6 / 8  # 10 Gb/s IHEP <-> CNAF
    assert ihep.rates[peer["MSU-EOS"]] == 1_000e6 / 8  # 1 Gb/s IHEP <-> MSU
    assert peer["IHEP-TAPE"] not in ihep.rates  # same site: not a wide-area link
    msu = shaper_for(grid, "MSU-EOS")
    assert msu is not None and set(msu.rates) == {peer["IHEP-EOS"], peer["IHEP-TAPE"]}  # MSU only links to IHEP

    del data["links"]
    assert shaper_for(parse_grid_config(data), "IHEP-EOS") is None
