"""`dcs dm`: the file catalog from the command line (namespace, replicas, metadata, datasets).

The data-movement commands (put, get, replicate, rm) attach to the same `dm_app`.
"""

from __future__ import annotations

from typing import Any

import typer

from junodcs.cli.output import JSON_OPTION, handle_errors, print_fields, print_json, print_table

dm_app = typer.Typer(help="Data management: catalog namespace, replicas, metadata, datasets.", no_args_is_help=True)
meta_app = typer.Typer(help="Typed metadata: define fields, set and get values.", no_args_is_help=True)
dataset_app = typer.Typer(help="Datasets: named queries and frozen snapshots.", no_args_is_help=True)
dm_app.add_typer(meta_app, name="meta")
dm_app.add_typer(dataset_app, name="dataset")


def _client() -> Any:
    from junodcs.catalog.client import CatalogClient

    return CatalogClient()


def _size(n: Any) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)


@dm_app.command("ls")
@handle_errors
def ls(lfn: str = typer.Argument(..., help="Directory LFN."), json: bool = JSON_OPTION,
       limit: int = typer.Option(0, help="Show at most this many entries (0: all, streamed).")) -> None:
    """List a directory (streamed: works for directories of any size)."""
    with _client() as client:
        rows = []
        for entry in client.iter_ls(lfn):
            rows.append(entry)
            if limit and len(rows) >= limit:
                break
    if json:
        print_json(rows)
        return
    print_table(
        [{**r, "size": _size(r.get("size")) if r["type"] == "file" else "dir"} for r in rows],
        [("mode", "Mode"), ("owner", "Owner"), ("group", "Group"), ("size", "Size"), ("created_at", "Created"),
         ("name", "Name")],
        title=f"{lfn}: {len(rows)} entries",
    )


@dm_app.command("stat")
@handle_errors
def stat(lfn: str, json: bool = JSON_OPTION) -> None:
    """Show a file's or directory's catalog entry."""
    with _client() as client:
        data = client.stat(lfn)
    print_json(data) if json else print_fields(data, title=lfn)


@dm_app.command("mkdir")
@handle_errors
def mkdir(lfn: str, mode: str = typer.Option(None, help="Octal mode, e.g. 775.")) -> None:
    """Create a directory and its parents (mkdir -p)."""
    with _client() as client:
        data = client.mkdir(lfn, int(mode, 8) if mode else None)
    typer.echo(f"{data['lfn']} {'created' if data.get('created') else 'exists'}")


@dm_app.command("replicas")
@handle_errors
def replicas(lfns: list[str], json: bool = JSON_OPTION) -> None:
    """Show the replicas (SE, URL, status) of files."""
    with _client() as client:
        data = client.replicas(lfns)
    if json:
        print_json(data)
        return
    rows = [{"lfn": lfn, **rep} for lfn, reps in data.items() for rep in reps]
    print_table(rows, [("lfn", "LFN"), ("se", "SE"), ("status", "Status"), ("url", "URL")])


@dm_app.command("usage")
@handle_errors
def usage(lfn: str = typer.Argument("/juno"), long: bool = typer.Option(False, "-l", "--long", help="Per subdirectory."),
          json: bool = JSON_OPTION) -> None:
    """Files and bytes under a directory, in total and per SE."""
    with _client() as client:
        data = client.usage(lfn, children=long)
    if json:
        print_json(data)
        return
    rows = [{"what": "total", "files": data["files"], "bytes": _size(data["bytes"])}]
    rows += [{"what": se, "files": v["files"], "bytes": _size(v["bytes"])} for se, v in data["per_se"].items()]
    rows += [{"what": c["lfn"], "files": c["files"], "bytes": _size(c["bytes"])} for c in data.get("children", [])]
    print_table(rows, [("what", "Directory / SE"), ("files", "Files"), ("bytes", "Size")], title=data["lfn"])


@dm_app.command("find")
@handle_errors
def find(query: list[str] = typer.Argument(None, help="Terms such as run>=100 type=rec se=IHEP-EOS."),
         path: str = typer.Option(None, "--path", help="Search under this directory."),
         limit: int = typer.Option(None, help="At most this many files."), json: bool = JSON_OPTION) -> None:
    """Find files by metadata and standard attributes (size, se, created, owner...)."""
    with _client() as client:
        items = client.find(" ".join(query or []), path, limit=limit)
        if json:
            import sys
            import json as jsonlib

            for item in items:
                sys.stdout.write(jsonlib.dumps(item) + "\n")
            return
        for item in items:
            typer.echo(item["lfn"])


@meta_app.command("define")
@handle_errors
def meta_define(name: str, type_: str = typer.Argument(..., metavar="TYPE", help="int, float, string or date"),
                directory: bool = typer.Option(False, "-d", "--dir", help="Directory field (inherited below).")) -> None:
    """Define a metadata field (FileCatalogAdministrator)."""
    with _client() as client:
        data = client.define_field(name, type_, "dir" if directory else "file")
    typer.echo(f"{data['level']} field {data['name']} ({data['type']}) {'defined' if data['created'] else 'exists'}")


@meta_app.command("set")
@handle_errors
def meta_set(lfn: str, values: list[str] = typer.Argument(..., help="field=value ...")) -> None:
    """Set metadata on a file or directory."""
    metadata: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            from junodcs.core.errors import InvalidInput

            raise InvalidInput(f"{item!r}: expected field=value")
        metadata[key] = value
    with _client() as client:
        result = client.set_metadata([{"path": lfn, "metadata": metadata}])[0]
    if not result["ok"]:
        from junodcs.core.errors import DCSError

        raise DCSError(result["detail"], code=result["code"])
    typer.echo(f"{lfn}: {len(metadata)} value(s) set")


@meta_app.command("get")
@handle_errors
def meta_get(lfn: str, json: bool = JSON_OPTION) -> None:
    """Show a path's metadata (directory fields inherited from above)."""
    with _client() as client:
        data = client.get_metadata(lfn)
    if json:
        print_json(data)
        return
    rows = [{"field": k, "value": v, "from": data["inherited_from"].get(k, "(here)")} for k, v in data["metadata"].items()]
    print_table(rows, [("field", "Field"), ("value", "Value"), ("from", "Set on")], title=lfn)


@dataset_app.command("create")
@handle_errors
def dataset_create(name: str, query: list[str] = typer.Argument(..., help="Terms such as run>=100 type=rec."),
                   path: str = typer.Option(None, "--path"), description: str = typer.Option("", "--description")) -> None:
    """Create a (dynamic) dataset from a metadata query."""
    with _client() as client:
        data = client.create_dataset(name, " ".join(query), path, description)
    typer.echo(f"dataset {data['name']} created ({data['status']})")


def _dataset_action(name: str, action: str) -> None:
    with _client() as client:
        data = getattr(client, f"{action}_dataset")(name)
    typer.echo(f"dataset {name}: {data.get('status', 'removed')}"
               + (f", {data['files']} files, {_size(data['bytes'])}, hash {data['content_hash'][:16]}"
                  if data.get("content_hash") else ""))


@dataset_app.command("freeze")
@handle_errors
def dataset_freeze(name: str) -> None:
    """Snapshot the dataset's current files (count, size, content hash)."""
    _dataset_action(name, "freeze")


@dataset_app.command("release")
@handle_errors
def dataset_release(name: str) -> None:
    """Make a frozen dataset dynamic again."""
    _dataset_action(name, "release")


@dataset_app.command("rm")
@handle_errors
def dataset_rm(name: str) -> None:
    """Delete a dataset (its files stay)."""
    _dataset_action(name, "remove")


@dataset_app.command("ls")
@handle_errors
def dataset_ls(json: bool = JSON_OPTION) -> None:
    """List datasets."""
    with _client() as client:
        rows = client.datasets()
    if json:
        print_json(rows)
        return
    print_table([{**r, "bytes": _size(r["bytes"])} for r in rows],
                [("name", "Name"), ("status", "Status"), ("owner", "Owner"), ("files", "Files"), ("bytes", "Size"),
                 ("path", "Path"), ("query", "Query")], title=f"{len(rows)} datasets")


@dataset_app.command("show")
@handle_errors
def dataset_show(name: str, json: bool = JSON_OPTION) -> None:
    """Show a dataset (dynamic: current count and size)."""
    with _client() as client:
        data = client.dataset(name)
    print_json(data) if json else print_fields(data, title=name)


@dataset_app.command("files")
@handle_errors
def dataset_files(name: str, json: bool = JSON_OPTION) -> None:
    """List a dataset's files (streamed)."""
    import sys
    import json as jsonlib

    with _client() as client:
        for item in client.dataset_files(name):
            sys.stdout.write((jsonlib.dumps(item) if json else item["lfn"]) + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(dm_app, name="dm")
