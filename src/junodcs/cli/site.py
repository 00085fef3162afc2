"""`dcs site`: the sites of the grid."""

from __future__ import annotations

import typer

from junodcs.cli.output import JSON_OPTION, handle_errors, print_json, print_table

site_app = typer.Typer(help="Sites: tiers, computing and storage elements.", no_args_is_help=True)


@site_app.command("ls")
@handle_errors
def list_sites(json: bool = JSON_OPTION) -> None:
    """List the sites with their tiers, CEs (slots, memory per slot) and SEs."""
    from junodcs.config.client import ConfigClient

    with ConfigClient() as client:
        sites = client.sites()
    if json:
        print_json(sites)
        return
    rows = [
        {
            "name": s["name"],
            "tiers": "/".join(f"T{t}" for t in s["tiers"]),
            "country": s["country"],
            "ces": [f"{ce['name']} ({ce['type']}, {ce['slots']}x{ce['memory_per_slot'] / 1000:g} GB)"
                    for ce in s["computing_elements"]],
            "ses": [f"{se['name']} ({se['kind']})" for se in s["storage_elements"]],
        }
        for s in sites
    ]
    print_table(
        rows,
        [("name", "Site"), ("tiers", "Tier"), ("country", "Country"), ("ces", "Computing elements"),
         ("ses", "Storage elements")],
        title=f"{len(rows)} sites",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(site_app, name="site")
