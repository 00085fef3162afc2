"""`dcs dm put|get|replicate|rm` (the data manager) and `dcs se ls` (the grid's storage elements).

The commands attach to the `dm` app of `cli.catalog` and the `se` app of `cli.se`. Every command takes
one item or many (arguments, `--from-file`, and for get/replicate/rm `--from-query`), shows a progress
bar for bulk work, prints a summary for people or, with `--json`, one JSON document with a result per
LFN, and exits non-zero when any item failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import typer

from junodcs.cli.catalog import dm_app
from junodcs.cli.output import JSON_OPTION, console, fail, handle_errors, print_json, print_table
from junodcs.cli.se import se_app

FROM_FILE = typer.Option(None, "--from-file", "-f",
                         help="Read the items from this file, one per line ('-': stdin).")
FROM_QUERY = typer.Option(None, "--from-query", "-q",
                          help='Act on the files matching a query, e.g. "run>=100".')
QUERY_PATH = typer.Option(None, "--path", help="With --from-query: search under this directory.")
PARALLEL = typer.Option(4, "--parallel", "-j", min=1, max=64, help="Items processed at once in bulk mode.")
SITE = typer.Option(None, "--site", envvar="DCS_SITE", help="Your site (replica choice); default $DCS_SITE.")


def _say(message: str) -> None:
    """Progress and warnings go to stderr, so that `--json` output on stdout stays one document."""
    typer.echo(message, err=True)


STAGE_TIMEOUT: Any = typer.Option(3600.0, "--stage-timeout", min=0.0,
                                  help="Seconds to wait for a tape SE to stage a file that is only on tape "
                                       "(used only when no disk replica is readable).")


def _manager(site: str | None = None, **options: Any) -> Any:
    from junodcs.dm import DataManager

    return DataManager(site=site, on_message=_say, **options)


def _read_list(path: str) -> list[list[str]]:
    import sys

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        from junodcs.core.errors import InvalidInput

        raise InvalidInput(f"{path}: cannot read: {exc.strerror or exc}", code="no-such-file") from None
    rows = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            rows.append(line.split())
    return rows


def _query_lfns(manager: Any, query: str, path: str | None) -> list[str]:
    return [item["lfn"] for item in manager.catalog.find(query, path)]


def _size(n: Any) -> str:
    from junodcs.cli.catalog import _size as size

    return size(n)


def _run(items: list[Any], work: Callable[[Any], Any], *, parallel: int, label: str,
         total_bytes: Callable[[Any], int | None] | None = None) -> list[Any]:
    """Run `work` on every item (threads for bulk), a Rich progress bar on stderr for more than one."""
    if len(items) <= 1:
        return [work(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = console(stderr=True)
    results: list[Any] = [None] * len(items)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[bad]}"),
                  TimeElapsedColumn(), console=out, disable=not out.is_terminal) as progress:
        task = progress.add_task(label, total=len(items), bad="")
        failed = 0
        with ThreadPoolExecutor(max_workers=min(parallel, len(items))) as pool:
            futures = {pool.submit(work, item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                if not result.ok:
                    failed += 1
                progress.update(task, advance=1, bad=f"[red]{failed} failed" if failed else "")
    return results


def _report(results: list[Any], json: bool, describe: Callable[[Any], str]) -> None:
    ok = [r for r in results if r.ok]
    bad = [r for r in results if not r.ok]
    if json:
        print_json({"ok": len(ok), "failed": len(bad), "results": [r.to_dict() for r in results]})
        if bad:
            raise typer.Exit(1)
        return
    if len(results) == 1:
        result = results[0]
        if result.ok:
            typer.echo(describe(result))
            return
        for attempt in result.attempts:
            marked = f" [replica marked {attempt.marked}]" if attempt.marked else ""
            typer.echo(f"  tried {attempt.se}{f' ({attempt.mode})' if attempt.mode else ''}: {attempt.error}"
                       f"{marked}", err=True)
        fail(result.code or "failed", result.detail or "failed")
    for result in ok:
        typer.echo(describe(result))
    if bad:
        print_table([{"lfn": r.lfn, "code": r.code, "detail": r.detail} for r in bad],
                    [("lfn", "LFN"), ("code", "Code"), ("detail", "Reason")], title=f"{len(bad)} failed")
    typer.echo(f"{len(ok)} succeeded, {len(bad)} failed")
    if bad:
        raise typer.Exit(1)


def _lfns(manager: Any, lfns: Iterable[str], from_file: str | None, query: str | None,
          path: str | None) -> list[str]:
    items = list(lfns)
    if from_file:
        items += [row[0] for row in _read_list(from_file)]
    if query:
        items += _query_lfns(manager, query, path)
    if not items:
        from junodcs.core.errors import InvalidInput

        raise InvalidInput("no LFN given (arguments, --from-file or --from-query)", code="no-input")
    return list(dict.fromkeys(items))


def _metadata(values: list[str] | None) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            from junodcs.core.errors import InvalidInput

            raise InvalidInput(f"{item!r}: expected field=value", code="invalid-metadata")
        metadata[key] = value
    return metadata


# -- put -------------------------------------------------------------------------------------------------


def put(
    args: list[str] = typer.Argument(None, metavar="LOCAL... LFN",
                                     help="Local file(s) and the LFN (a directory LFN ending in / for "
                                          "several)."),
    se: str = typer.Option(None, "--se", help="Destination SE (default: the disk SE of $DCS_SITE)."),
    meta: list[str] = typer.Option(None, "--meta", "-m",
                                   help="Metadata field=value for the new file(s) (repeat)."),
    from_file: str = typer.Option(None, "--from-file", "-f", help="Lines 'LOCAL LFN [SE]' ('-': stdin)."),
    parallel: int = PARALLEL,
    json: bool = JSON_OPTION,
) -> None:
    """Upload files and register them (adler32 verified by the SE; nothing left behind on failure)."""
    from junodcs.core.errors import InvalidInput

    jobs: list[tuple[str, str, str | None]] = []
    args = list(args or [])
    if args:
        if len(args) < 2:
            raise InvalidInput("put needs LOCAL and LFN", code="no-input")
        *locals_, target = args
        for local in locals_:
            if len(locals_) > 1 or target.endswith("/"):
                jobs.append((local, target.rstrip("/") + "/" + Path(local).name, se))
            else:
                jobs.append((local, target, se))
    if from_file:
        for row in _read_list(from_file):
            if len(row) not in (2, 3):
                raise InvalidInput(f"{from_file}: expected 'LOCAL LFN [SE]', got {' '.join(row)!r}",
                                   code="invalid-list")
            jobs.append((row[0], row[1], row[2] if len(row) == 3 else se))
    if not jobs:
        raise InvalidInput("nothing to put (arguments or --from-file)", code="no-input")
    metadata = _metadata(meta)
    with _manager() as manager:
        results = _run(jobs, lambda j: manager.put(j[0], j[1], j[2], metadata=metadata), parallel=parallel,
                       label="put")
    _report(results, json, lambda r: f"{r.lfn}: uploaded to {r.se} ({_size(r.size)}, adler32 {r.checksum}, "
                                     f"{r.seconds:.2f} s)")


# -- get -------------------------------------------------------------------------------------------------


def get(
    args: list[str] = typer.Argument(None, metavar="LFN... [DEST]",
                                     help="LFN(s), then optionally a local file or directory."),
    dest: str = typer.Option(None, "--dest", "-d", help="Local directory (or file, for one LFN)."),
    site: str = SITE,
    source_se: str = typer.Option(None, "--se", help="Read from this SE only."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different local file."),
    stage_timeout: float = STAGE_TIMEOUT,
    from_file: str = FROM_FILE, from_query: str = FROM_QUERY, path: str = QUERY_PATH,
    parallel: int = PARALLEL, json: bool = JSON_OPTION,
) -> None:
    """Download files from their best replica (same site, then fastest link, tape last: staged first;
    checksum checked; a missing or corrupt replica is marked Problematic and the next one is used)."""
    args = list(args or [])
    with _manager(site, stage_timeout=stage_timeout) as manager:
        root = f"/{manager.vo}/"
        bulk = len(args) > 1 or from_file or from_query
        if dest is None and args and not args[-1].startswith(root) and bulk:
            dest = args.pop()
        lfns = _lfns(manager, args, from_file, from_query, path)
        if len(lfns) > 1 and dest is not None:
            Path(dest).mkdir(parents=True, exist_ok=True)
        results = _run(lfns, lambda lfn: manager.get(lfn, dest, source_se=source_se, overwrite=overwrite),
                       parallel=parallel, label="get")
    _report(results, json, lambda r: f"{r.lfn} -> {r.path}" + (
        f" (from {r.se}, {_size(r.size)}, adler32 {r.checksum}{_notes(r)})" if r.status == "downloaded"
        else " (already present, checksum matches)"))


def _notes(r: Any) -> str:
    """What else happened on the way: staging, replicas marked Problematic or found good again."""
    notes = []
    if r.stage_request:
        notes.append(f"staged from tape at {r.staged_from} in {r.stage_seconds:.1f} s")
    if r.problematic:
        notes.append(f"replica at {', '.join(r.problematic)} marked Problematic")
    if r.recovered:
        notes.append(f"replica at {', '.join(r.recovered)} good again")
    return "".join(f"; {n}" for n in notes)


# -- replicate -------------------------------------------------------------------------------------------


def replicate(
    args: list[str] = typer.Argument(None, metavar="LFN... DEST_SE", help="LFN(s), then the destination SE."),
    mode: str = typer.Option(None, "--mode",
                             help="pull, push or stream (default: pull, then push, then stream)."),
    source_se: str = typer.Option(None, "--source", help="Copy from this SE (default: the best replica)."),
    from_file: str = FROM_FILE, from_query: str = FROM_QUERY, path: str = QUERY_PATH,
    stage_timeout: float = STAGE_TIMEOUT, parallel: int = PARALLEL, json: bool = JSON_OPTION,
    asynchronous: bool = typer.Option(False, "--async", help="Queue a ReplicateAndRegister request (RMS) and "
                                      "return its id; `dcs request show ID` follows it."),
) -> None:
    """Copy files to another SE by HTTP-TPC (streamed as the last fallback) and register the replicas."""
    from junodcs.core.errors import InvalidInput

    args = list(args or [])
    if not args:
        raise InvalidInput("replicate needs DEST_SE", code="no-input")
    destination = args.pop()
    if mode is not None and mode not in ("pull", "push", "stream"):
        raise InvalidInput(f"--mode {mode!r}: use pull, push or stream", code="invalid-mode")
    with _manager(stage_timeout=stage_timeout) as manager:
        manager.se(destination)  # unknown SE: one clear error, before any work
        lfns = _lfns(manager, args, from_file, from_query, path)
        if asynchronous:
            from junodcs.cli.request import submit_replication

            return submit_replication(lfns, destination, source_se, json)
        results = _run(lfns, lambda lfn: manager.replicate(lfn, destination, source_se=source_se, mode=mode),
                       parallel=parallel, label=f"replicate to {destination}")

    def describe(r: Any) -> str:
        if r.status == "exists":
            return f"{r.lfn}: already at {r.se}"
        tried = f", after {len(r.attempts)} failed attempt(s)" if r.attempts else ""
        verb = "repaired" if r.status == "repaired" else "verified"
        return (f"{r.lfn}: {r.source_se} -> {r.se} by {r.mode}{tried} ({_size(r.size)}, adler32 {r.checksum} "
                f"{verb}{_notes(r)})")

    _report(results, json, describe)


# -- rm --------------------------------------------------------------------------------------------------


def rm(
    lfns: list[str] = typer.Argument(None, metavar="LFN...", help="Files to remove."),
    se: str = typer.Option(None, "--se", help="Remove only the replica at this SE."),
    force: bool = typer.Option(False, "--force", help="Allow removing the last replica (and so the file)."),
    from_file: str = FROM_FILE, from_query: str = FROM_QUERY, path: str = QUERY_PATH,
    parallel: int = PARALLEL, json: bool = JSON_OPTION,
) -> None:
    """Remove files (physical replicas, then the catalog entry) or one replica (--se)."""
    with _manager() as manager:
        items = _lfns(manager, lfns or [], from_file, from_query, path)
        results = _run(items, lambda lfn: manager.remove(lfn, se=se, force=force), parallel=parallel,
                       label="rm")
    _report(results, json, lambda r: f"{r.lfn}: " + ("removed" if r.status == "removed" else
                                                    f"replica at {', '.join(r.removed)} removed"))


# -- se ls -----------------------------------------------------------------------------------------------


def se_ls(json: bool = JSON_OPTION) -> None:
    """List the grid's storage elements with their site, kind and URL."""
    from junodcs.config.client import ConfigClient

    with ConfigClient() as client:
        rows = client.storage_elements()
    if json:
        print_json(rows)
        return
    print_table(rows, [("name", "Name"), ("kind", "Kind"), ("site", "Site"), ("url", "URL"),
                       ("path", "Path")],
                title=f"{len(rows)} storage elements")


def register(app: typer.Typer) -> None:
    """Attach the commands to `dcs dm` and `dcs se` (the root app is already holding both)."""
    del app
    dm_app.command("put")(handle_errors(put))
    dm_app.command("get")(handle_errors(get))
    dm_app.command("replicate")(handle_errors(replicate))
    dm_app.command("rm")(handle_errors(rm))
    se_app.command("ls")(handle_errors(se_ls))

