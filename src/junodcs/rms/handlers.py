"""Operation handlers: one function per operation type, each idempotent.

A handler gets the operation, its open files (Waiting or Scheduled) and a context with the owner's data
manager (catalog + storage) and transfer client, and returns what happened to each file. It first looks
at what is already true (a replica already registered, a file already gone), so that running a finished
operation again changes nothing. Failures are classified: recoverable ones (service unavailable, 5xx,
timeouts, connection errors, a transfer that failed recoverably) keep the file Waiting for a retry after
a backoff; final ones (missing source, permission, checksum mismatch, last replica) fail it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from junodcs.core.errors import DCSError, RemoteError
from junodcs.rms.logic import FileOutcome, OperationOutcome, Settings
from junodcs.rms.models import FileStatus, OperationType

log = logging.getLogger(__name__)

F = FileStatus

#: error codes that no retry can fix
FINAL_CODES = frozenset({
    "no-such-path", "no-such-replica", "last-replica", "checksum-mismatch", "permission-denied", "forbidden",
    "invalid-lfn", "unknown-se", "se-without-url", "no-replica", "invalid-input", "is-directory",
    "already-exists", "file-exists", "unauthenticated", "not-found",
})
FINAL_TRANSFER_REASONS = ("does not exist", "checksum mismatch", "permission", "forbidden", "overwrite is not",
                          "not found", "no such file")


@dataclass
class Context:
    dm: Any
    """`junodcs.dm.DataManager` with the owner's token."""
    transfer: Any
    """`junodcs.transfer.client.TransferClient` with the owner's token."""
    settings: Settings
    request: dict[str, Any]


def recoverable(exc: BaseException) -> bool:
    if isinstance(exc, DCSError):
        if exc.code in FINAL_CODES:
            return False
        if isinstance(exc, RemoteError):
            return exc.status >= 500 or exc.status in (408, 429)
        return exc.status >= 500
    return isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.startswith(("httpx", "httpcore"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DCSError):
        return f"{exc.code}: {exc.detail}"
    return f"{type(exc).__name__}: {exc}"


def failed(exc: BaseException) -> FileOutcome:
    """A file's outcome after an exception: retry (Waiting, attempted) or final (Failed)."""
    if recoverable(exc):
        return FileOutcome(F.WAITING, _describe(exc), attempted=True)
    return FileOutcome(F.FAILED, _describe(exc), attempted=True)


def _replica_ses(ctx: Context, lfn: str) -> set[str] | None:
    """SEs registered for `lfn`, None when the catalog has no such file."""
    try:
        entry = ctx.dm.catalog.stat(lfn)
    except RemoteError as exc:
        if exc.status == 404:
            return None
        raise
    if entry.get("type") == "directory":
        return None
    return {r["se"] for r in ctx.dm.catalog.replicas([lfn]).get(lfn, [])}


# -- copy through the transfer service -----------------------------------------------------------------


def copy_and_register(op: dict[str, Any], files: list[dict[str, Any]], ctx: Context) -> OperationOutcome:
    """ReplicateAndRegister (source: a registered replica) and PutAndRegister (source: the file on a
    failover SE, or its PFN; the file is registered when missing from the catalog). Copies go through
    the transfer service in rounds: one deterministic job per (request, operation, round), so a crashed
    executor re-submitting gets the same job back instead of a second copy. A replica is registered only
    for a transfer FINISHED (checksum verified at both ends)."""
    put = op["type"] == OperationType.PUT_AND_REGISTER
    targets: list[str] = op["target_se"]
    out = OperationOutcome()
    missing: dict[int, list[str]] = {}
    registered: dict[int, set[str] | None] = {}
    for f in files:
        try:
            ses = _replica_ses(ctx, f["lfn"])
        except Exception as exc:  # noqa: BLE001 - classified
            out.files[f["file_id"]] = failed(exc)
            continue
        registered[f["file_id"]] = ses
        if ses is None and not put:
            out.files[f["file_id"]] = FileOutcome(F.FAILED, f"no such file in the catalog: {f['lfn']}",
                                                  attempted=True)
            continue
        todo = [t for t in targets if ses is None or t not in ses]
        if not todo:
            out.files[f["file_id"]] = FileOutcome(F.DONE)
        else:
            missing[f["file_id"]] = todo
    if not missing:
        if op["transfer_job"]:
            out.updates["transfer_job"] = None
        return out
    by_id = {f["file_id"]: f for f in files}
    if op["transfer_job"]:
        return _follow(op, by_id, missing, registered, ctx, out, put)
    return _submit(op, by_id, missing, ctx, out, put)


def _submit(op: dict[str, Any], by_id: dict[int, dict[str, Any]], missing: dict[int, list[str]], ctx: Context,
            out: OperationOutcome, put: bool) -> OperationOutcome:
    from junodcs.transfer.client import Transfer

    transfers = []
    for file_id, todo in missing.items():
        f = by_id[file_id]
        try:
            source = _source_url(op, f, ctx, put)
            checksum = f["checksum"] or (None if put else ctx.dm.catalog.stat(f["lfn"]).get("checksum"))
            size = f["size"]
            for target in todo:
                transfers.append(Transfer(source, ctx.dm.se_url(target, f["lfn"]),
                                          checksum=f"ADLER32:{checksum}" if checksum else None, filesize=size,
                                          metadata={"lfn": f["lfn"], "request_id": op["request_id"],
                                                    "operation": op["operation_id"], "rms_file": file_id,
                                                    "target": target}))
        except Exception as exc:  # noqa: BLE001 - classified
            out.files[file_id] = failed(exc)
    if not transfers:
        return out
    rnd = int(op["transfer_round"]) + 1
    try:
        job_id = ctx.transfer.submit(transfers, sid=f"rms-{op['request_id']}-{op['operation_id']}-{rnd}",
                                     activity=op["arguments"].get("activity") or ctx.settings.activity,
                                     retry=ctx.settings.transfer_retry, overwrite=True)
    except Exception as exc:  # noqa: BLE001 - the transfer service refused or is unreachable
        outcome = failed(exc)
        for t in transfers:
            out.files.setdefault(t.metadata["rms_file"], outcome)
        return out
    log.info("request %s operation %s: transfer job %s (round %d, %d files)", op["request_id"],
             op["operation_id"], job_id, rnd, len(transfers))
    out.updates.update(transfer_job=job_id, transfer_round=rnd)
    for t in transfers:
        out.files.setdefault(t.metadata["rms_file"], FileOutcome(F.SCHEDULED, attempted=True))
    out.delay = ctx.settings.poll
    return out


def _source_url(op: dict[str, Any], f: dict[str, Any], ctx: Context, put: bool) -> str:
    if f.get("pfn"):
        return str(f["pfn"])
    if put or op["source_se"]:
        if not put:
            reps = {r["se"]: r for r in ctx.dm.catalog.replicas([f["lfn"]]).get(f["lfn"], [])}
            if op["source_se"] in reps and reps[op["source_se"]].get("url"):
                return str(reps[op["source_se"]]["url"])
        return str(ctx.dm.se_url(op["source_se"], f["lfn"]))
    replicas = ctx.dm.catalog.replicas([f["lfn"]]).get(f["lfn"], [])
    site = ctx.dm.se(op["target_se"][0]).site
    candidates, skipped = ctx.dm.rank(f["lfn"], replicas, site, exclude=op["target_se"])
    if not candidates:
        raise DCSError(f"{f['lfn']} has no disk replica to copy from", code="no-replica")
    return str(candidates[0].url)


def _follow(op: dict[str, Any], by_id: dict[int, dict[str, Any]], missing: dict[int, list[str]],
            registered: dict[int, set[str] | None], ctx: Context, out: OperationOutcome, put: bool) -> OperationOutcome:
    from junodcs.transfer.client import TERMINAL_JOB_STATES

    try:
        job = ctx.transfer.status(op["transfer_job"])
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, RemoteError) and exc.status == 404:  # the job is gone: a new round
            out.updates["transfer_job"] = None
            for file_id in missing:
                out.files[file_id] = FileOutcome(F.WAITING, "transfer job disappeared")
            return out
        for file_id in missing:  # cannot see the transfer service now: look again later
            out.files[file_id] = FileOutcome(F.SCHEDULED)
        out.delay = ctx.settings.poll
        return out
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for tf in job.get("files", []):
        meta = tf.get("file_metadata") or {}
        if isinstance(meta, dict) and meta.get("rms_file") in missing:
            results.setdefault(int(meta["rms_file"]), {})[str(meta.get("target"))] = tf
    if job["job_state"] not in TERMINAL_JOB_STATES:
        # register what is finished already, keep the rest scheduled
        for file_id in missing:
            for target, tf in results.get(file_id, {}).items():
                if tf["file_state"] == "FINISHED":
                    _register(by_id[file_id], target, registered, ctx, put)
            out.files[file_id] = FileOutcome(F.SCHEDULED)
        out.delay = ctx.settings.poll
        return out
    out.updates["transfer_job"] = None
    for file_id, todo in missing.items():
        f = by_id[file_id]
        errors: list[tuple[bool, str]] = []
        for target in todo:
            tf = results.get(file_id, {}).get(target)
            if tf is None:
                errors.append((True, f"{target}: not in transfer job {op['transfer_job']}"))
            elif tf["file_state"] == "FINISHED":
                try:
                    _register(f, target, registered, ctx, put)
                except Exception as exc:  # noqa: BLE001
                    errors.append((recoverable(exc), f"{target}: registration failed: {_describe(exc)}"))
            else:
                reason = str(tf.get("reason") or tf["file_state"])
                final = tf["file_state"] == "CANCELED" or (
                    tf.get("recoverable") is False and any(s in reason.lower() for s in FINAL_TRANSFER_REASONS))
                errors.append((not final, f"{target}: transfer {tf['file_state']}: {reason}"))
        if not errors:
            out.files[file_id] = FileOutcome(F.DONE)
        elif all(retry for retry, _ in errors):
            # the attempt was counted when the round was submitted; the next round comes after a backoff
            out.files[file_id] = FileOutcome(F.WAITING, "; ".join(e for _, e in errors), attempted=False)
        else:
            out.files[file_id] = FileOutcome(F.FAILED, "; ".join(e for _, e in errors))
    return out


def _register(f: dict[str, Any], target: str, registered: dict[int, set[str] | None], ctx: Context,
              put: bool) -> None:
    """Register the verified copy at `target` (the file itself first for a PutAndRegister)."""
    ses = registered.get(f["file_id"])
    if ses is not None and target in ses:
        return
    if ses is None and put:
        entry = {"lfn": f["lfn"], "size": f["size"], "checksum": f["checksum"], "se": target}
        if f.get("guid"):
            entry["guid"] = f["guid"]
        answer = ctx.dm.catalog.register([entry])[0]
        if not answer.get("ok"):
            now = _replica_ses(ctx, f["lfn"])
            if now is None:
                raise DCSError(f"registration of {f['lfn']} refused: {answer.get('detail')}",
                               code=str(answer.get("code") or "registration-failed"))
            ses = now
        else:
            registered[f["file_id"]] = {target}
            return
        if target in ses:
            registered[f["file_id"]] = ses
            return
    answer = ctx.dm.catalog.add_replicas([{"lfn": f["lfn"], "se": target}])[0]
    if not answer.get("ok") and answer.get("code") != "replica-exists":
        raise DCSError(f"replica of {f['lfn']} at {target} refused: {answer.get('detail')}",
                       code=str(answer.get("code") or "registration-failed"))
    registered[f["file_id"]] = (registered.get(f["file_id"]) or set()) | {target}


# -- catalog and removal operations ------------------------------------------------------------------


def _each(files: list[dict[str, Any]], one: Any) -> OperationOutcome:
    out = OperationOutcome()
    for f in files:
        try:
            one(f)
            out.files[f["file_id"]] = FileOutcome(F.DONE, attempted=True)
        except Exception as exc:  # noqa: BLE001 - classified
            out.files[f["file_id"]] = failed(exc)
    return out


def remove_replica(op: dict[str, Any], files: list[dict[str, Any]], ctx: Context) -> OperationOutcome:
    """Remove the replicas at the target SEs (physical file, then catalog entry); a replica already gone is
    fine; the last replica of a file stays unless `arguments.force`."""
    force = bool(op["arguments"].get("force"))

    def one(f: dict[str, Any]) -> None:
        for se in op["target_se"]:
            ses = _replica_ses(ctx, f["lfn"])
            if ses is None or se not in ses:
                continue
            ctx.dm.remove(f["lfn"], se=se, force=force).raise_for()

    return _each(files, one)


def remove_file(op: dict[str, Any], files: list[dict[str, Any]], ctx: Context) -> OperationOutcome:
    def one(f: dict[str, Any]) -> None:
        if _replica_ses(ctx, f["lfn"]) is None:
            return
        ctx.dm.remove(f["lfn"]).raise_for()

    return _each(files, one)


def register_file(op: dict[str, Any], files: list[dict[str, Any]], ctx: Context) -> OperationOutcome:
    def one(f: dict[str, Any]) -> None:
        ses = _replica_ses(ctx, f["lfn"])
        if ses is not None:
            entry = ctx.dm.catalog.stat(f["lfn"])
            if entry.get("checksum") != f["checksum"]:
                raise DCSError(f"{f['lfn']} is registered with adler32 {entry.get('checksum')}, the request "
                               f"says {f['checksum']}", code="checksum-mismatch")
            for se in op["target_se"]:
                if se not in ses:
                    _register(f, se, {f["file_id"]: ses}, ctx, put=False)
            return
        registered: dict[int, set[str] | None] = {f["file_id"]: None}
        for se in op["target_se"]:
            _register(f, se, registered, ctx, put=True)

    return _each(files, one)


def register_replica(op: dict[str, Any], files: list[dict[str, Any]], ctx: Context) -> OperationOutcome:
    def one(f: dict[str, Any]) -> None:
        ses = _replica_ses(ctx, f["lfn"])
        if ses is None:
            raise DCSError(f"no such file in the catalog: {f['lfn']}", code="no-such-path")
        for se in op["target_se"]:
            _register(f, se, {f["file_id"]: ses}, ctx, put=False)

    return _each(files, one)


def set_file_status(op: dict[str, Any], files: list[dict[str, Any]], ctx: Context) -> OperationOutcome:
    """The catalog status of each file (`arguments.status`, e.g. Trash before a cleanup). DIRAC also uses this
    operation for transformation-system file states (`arguments.transformation`); there is no transformation
    system in this deployment yet, so those fail with a reason that says so (a reset replays them later)."""
    status = op["arguments"].get("status")
    if op["arguments"].get("transformation") is not None:
        reason = "SetFileStatus: no transformation system is deployed"
    elif not status:
        reason = "SetFileStatus needs arguments.status"
    else:
        return _each(files, lambda f: ctx.dm.catalog.set_file_status(f["lfn"], status))
    return OperationOutcome(files={f["file_id"]: FileOutcome(F.FAILED, reason, attempted=True) for f in files})


HANDLERS = {
    OperationType.REPLICATE_AND_REGISTER: copy_and_register,
    OperationType.PUT_AND_REGISTER: copy_and_register,
    OperationType.REMOVE_REPLICA: remove_replica,
    OperationType.REMOVE_FILE: remove_file,
    OperationType.REGISTER_FILE: register_file,
    OperationType.REGISTER_REPLICA: register_replica,
    OperationType.SET_FILE_STATUS: set_file_status,
}
