"""The job wrapper: everything a pilot does for one matched (job, attempt), in DIRAC's order.

1. working directory `<pilot dir>/job_<id>.<attempt>`; status Running / "Job Initialization";
2. input sandbox (`SB:` archive straight from the sandbox SE with a token for that file, or from the WMS when
   the server keeps sandboxes itself; `LFN:` entries through the data manager);
3. input data: each LFN's best replica (same site first) through the data manager, checksum-verified;
4. the payload in its own session under the watchdog: heartbeats (CPU, RSS, wall time, stdout tail) every
   `heartbeat_period`, whose answer may carry a Kill; CPU time, wall clock and memory limits with a graceful
   SIGTERM first, SIGKILL after the grace time;
5. output sandbox (StdOutput, StdError and the `OutputSandbox` patterns) put on the sandbox SE and registered
   with the WMS;
6. output data: each file put on the first `OutputSE` that takes it (adler32 verified end to end and
   registered in the catalog by the data manager); when every requested SE fails, a failover SE (the
   site's disk SE first, then any other) takes it and an RMS request (PutAndRegister from the failover SE
   to the requested SEs, then RemoveReplica of the failover copy) is submitted as the owner, and recorded in
   the job parameter `FailoverRequest` and in `failover_request.json` (also in the output sandbox);
7. the final status with a clear minor status: Completing "Pending Requests: ..." while a failover request
   remains (the WMS makes the job Done, or Failed, when the request ends: `wms.completing`).

Data operations run with the job owner's storage token (the pilot asks the WMS for it, as DIRAC's pilot
fetches the payload proxy); the pilot's own token only ever talks to the WMS.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from junodcs.core.errors import DCSError
from junodcs.wms.pilot.watchdog import Limits, Verdict, Watchdog

log = logging.getLogger(__name__)

CPU_MARGIN = 0.2
"""DIRAC's JobCPULimitMargin: the payload may use 20 % more CPU than its CPUTime."""
STDOUT_TAIL = 4096


@dataclass
class WrapperOptions:
    site: str
    ce: str
    pilot_id: str
    workdir: Path
    poll: float = 0.2
    """Seconds between watchdog checks."""
    grace: float = 5.0
    """Seconds between SIGTERM and SIGKILL."""
    max_wall: float | None = None
    """Most wall-clock seconds one payload may run (the slot's time left bounds it too)."""
    keep_workdir: bool = False
    failover_ses: list[str] = field(default_factory=list)
    """SEs tried when every requested output SE fails (default: the site's disk SEs, then all others)."""


@dataclass
class Outcome:
    status: str
    minor: str
    application: str | None = None
    exit_code: int | None = None
    memory_exceeded_mb: float | None = None
    reschedule: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    reported: bool = True


class StopPayload(Exception):
    """The server said Kill (user kill, attempt over): stop without a final report."""


class JobWrapper:
    def __init__(self, wms: Any, job: dict[str, Any], options: WrapperOptions, *, dm_factory: Any = None,
                 time_left: float | None = None) -> None:
        self.wms = wms
        self.job = job
        self.description: dict[str, Any] = job.get("description") or {}
        self.job_id = int(job["job_id"])
        self.attempt = int(job["attempt"])
        self.options = options
        self.workdir = options.workdir / f"job_{self.job_id}.{self.attempt}"
        self.dm_factory = dm_factory
        self.time_left = time_left
        self._dm: Any = None
        self.heartbeat_period = float(job.get("heartbeat_period") or 300)
        self.parameters: dict[str, Any] = {}

    # -- reporting -------------------------------------------------------------------------------------

    def report(self, status: str | None = None, minor: str | None = None, application: str | None = None,
               **kwargs: Any) -> None:
        self.wms.report(self.job_id, self.attempt, status=status, minor_status=minor, application_status=application,
                        pilot_id=self.options.pilot_id, **kwargs)

    def minor(self, text: str) -> None:
        try:
            self.report(minor=text)
        except DCSError as exc:
            if exc.code == "stale-attempt":
                raise StopPayload(exc.detail) from None
            log.warning("job %s: minor status %r not sent: %s", self.job_id, text, exc)

    # -- data ------------------------------------------------------------------------------------------

    def dm(self) -> Any:
        if self._dm is None:
            token = self.wms.payload_token(self.job_id, self.attempt, self.options.pilot_id)["access_token"]
            if self.dm_factory is not None:
                self._dm = self.dm_factory(token)
            else:
                from junodcs.dm.manager import DataManager

                self._dm = DataManager(self.wms.server_url, token=token, site=self.options.site)
        return self._dm

    # -- the steps -------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Run the whole job; never raises for a job failure (the outcome says it)."""
        started = time.monotonic()
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            d = self.description
            needs_inputs = bool(self.job.get("input_sandbox") or d.get("InputData")
                                or any(e.upper().startswith("LFN:") for e in d.get("InputSandbox", [])))
            try:
                self.report("Running", "Job Initialization" if needs_inputs else "Application")
            except DCSError as exc:
                if exc.code in ("stale-attempt", "illegal-transition", "no-such-job"):
                    return Outcome("Killed", f"not started: {exc.detail}", reported=False)
                raise
            try:
                outcome = self._steps()
            except StopPayload as stop:
                return Outcome("Killed", str(stop), reported=False)
            except Exception as exc:  # an unexpected wrapper error fails the job clearly, never silently
                log.exception("job %s: wrapper error", self.job_id)
                outcome = Outcome("Failed", f"Job wrapper error: {type(exc).__name__}: {exc}"[:255], reschedule=True)
            outcome.parameters = {**self.parameters, **outcome.parameters,
                                  "WrapperWallTime": round(time.monotonic() - started, 3)}
            self._final(outcome)
            return outcome
        finally:
            if self._dm is not None:
                try:
                    self._dm.close()
                except Exception:  # noqa: BLE001
                    pass
            if not self.options.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _steps(self) -> Outcome:
        d = self.description
        self.parameters.update({"PilotReference": self.options.pilot_id, "Site": self.options.site,
                                "CE": self.options.ce, "HostName": os.uname().nodename})
        # 2. input sandbox
        if self.job.get("input_sandbox") or any(e.upper().startswith("LFN:") for e in d.get("InputSandbox", [])):
            self.minor("Downloading InputSandbox")
            try:
                self._input_sandbox()
            except DCSError as exc:
                if exc.code == "stale-attempt":
                    raise StopPayload(exc.detail) from None
                return Outcome("Failed", f"Input Sandbox Download Failed: {exc.detail}"[:255], reschedule=True)
        # 3. input data
        if d.get("InputData"):
            self.minor("Input Data Resolution")
            failed = self._input_data(d["InputData"])
            if failed:
                return Outcome("Failed", f"Input Data Not Available: {failed}"[:255], reschedule=True)
        # 4. payload
        if self.job.get("input_sandbox") or d.get("InputData") or any(
                e.upper().startswith("LFN:") for e in d.get("InputSandbox", [])):
            self.minor("Application")
        outcome = self._execute()
        if outcome.status == "Killed":
            raise StopPayload(outcome.minor)
        # 5. output sandbox
        try:
            self._output_sandbox()
        except StopPayload:
            raise
        except DCSError as exc:
            if outcome.status == "Done":
                outcome = Outcome("Failed", f"Output Sandbox Upload Failed: {exc.detail}"[:255],
                                  application=outcome.application, exit_code=outcome.exit_code)
        # 6. output data (only for a successful payload, as DIRAC does)
        if outcome.status == "Done" and d.get("OutputData"):
            self.minor("Uploading Output Data")
            outcome = self._output_data(outcome)
        return outcome

    def _input_sandbox(self) -> None:
        from junodcs.wms.sandbox import unpack

        if self.job.get("input_sandbox"):
            from junodcs.wms.pilot.sandbox_io import fetch_input_sandbox

            unpack(fetch_input_sandbox(self.wms, self.job_id, self.attempt, self.options.pilot_id), self.workdir)
        for entry in self.description.get("InputSandbox", []):
            if entry.upper().startswith("LFN:"):
                lfn = entry[4:]
                result = self.dm().get(lfn, self.workdir / Path(lfn).name, site=self.options.site)
                result.raise_for()

    def _input_data(self, lfns: list[str]) -> str | None:
        got = []
        for lfn in lfns:
            result = self.dm().get(lfn, self.workdir / Path(lfn).name, site=self.options.site, overwrite=True)
            if not result.ok:
                return f"{lfn}: {result.detail}"
            got.append({"lfn": lfn, "se": result.source_se or result.se})
        self.parameters["InputDataReplicas"] = got
        return None

    def _command(self) -> list[str]:
        d = self.description
        executable = d["Executable"]
        if not executable.startswith("/"):
            local = self.workdir / executable
            if local.is_file():  # shipped in the sandbox: make it executable, run it from the work dir
                local.chmod(local.stat().st_mode | 0o111)
                if "/" not in executable:
                    executable = f"./{executable}"
        return [executable, *shlex.split(d.get("Arguments") or "")]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in [k for k in env if k.startswith(("DCS_PILOT_", "BEARER_TOKEN"))]:
            env.pop(key)
        env.update({"DCS_JOB_ID": str(self.job_id), "JOBID": str(self.job_id), "DIRACJOBID": str(self.job_id),
                    "DCS_JOB_ATTEMPT": str(self.attempt), "DCS_SITE": self.options.site, "DIRACSITE": self.options.site,
                    "DCS_CE": self.options.ce})
        env.update({str(k): str(v) for k, v in (self.description.get("ExecutionEnvironment") or {}).items()})
        return env

    def limits(self) -> Limits:
        cpu = self.job.get("cpu_time") or self.description.get("CPUTime")
        walls = [w for w in (self.options.max_wall, self.time_left) if w]
        memory = self.job.get("memory_limit")
        return Limits(cpu=float(cpu) * (1 + CPU_MARGIN) if cpu else None, wall=min(walls) if walls else None,
                      memory_mb=float(memory) if memory else None)

    def _execute(self) -> Outcome:
        d = self.description
        stdout_path = self.workdir / (d.get("StdOutput") or "std.out")
        stderr_path = self.workdir / (d.get("StdError") or "std.err")
        command = self._command()
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            try:
                process = subprocess.Popen(command, cwd=self.workdir, stdout=out, stderr=err,
                                           stdin=subprocess.DEVNULL, env=self._environment(), process_group=0)
            except OSError as exc:
                err.write(f"cannot start {command[0]}: {exc}\n".encode())
                return Outcome("Failed", f"Payload could not start: {exc.strerror or exc}"[:255],
                               application="Application not found", exit_code=127)
        watchdog = Watchdog(process, self.limits(), grace=self.options.grace)
        verdict: Verdict | None = None
        next_beat = time.monotonic() + self.heartbeat_period
        code: int | None = None
        while True:
            try:
                code = process.wait(self.options.poll)
                break
            except subprocess.TimeoutExpired:
                pass
            verdict = watchdog.check()
            if verdict is None and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.heartbeat_period
                verdict = self._heartbeat(watchdog, stdout_path)
            if verdict is not None:
                code = watchdog.stop()
                break
        usage = watchdog.measure() if verdict is None else watchdog.usage
        tail = self._tail(stdout_path)
        if tail:  # `dcs job peek` shows the end of the output after the job too
            self.parameters["StandardOutput"] = tail
        self.parameters.update({"CPUConsumed": round(usage.cpu, 2), "PeakRSSMB": round(usage.peak_rss_mb, 1),
                                "WallClockTime": round(usage.wall, 2), "ExitCode": code})
        if verdict is not None:
            if verdict.kind == "command":
                return Outcome("Killed", verdict.minor)
            outcome = Outcome("Failed", verdict.minor[:255], application=f"Stopped by the watchdog ({verdict.kind})",
                              exit_code=code)
            if verdict.kind == "memory":
                outcome.memory_exceeded_mb = round(max(verdict.measured, usage.peak_rss_mb), 1)
            return outcome
        if code == 0:
            return Outcome("Done", "Execution Complete", application="Application Finished Successfully",
                           exit_code=0)
        what = f"exit code {code}" if code is not None and code >= 0 else f"signal {-(code or 0)}"
        return Outcome("Failed", f"Application Finished With Errors ({what})",
                       application=f"Application Finished With Errors ({what})", exit_code=code)

    @staticmethod
    def _tail(path: Path) -> str | None:
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - STDOUT_TAIL))
                return handle.read().decode(errors="replace")
        except OSError:
            return None

    def _heartbeat(self, watchdog: Watchdog, stdout_path: Path) -> Verdict | None:
        usage = watchdog.usage
        tail = self._tail(stdout_path)
        try:
            answer = self.wms.heartbeat(self.job_id, self.attempt, pilot_id=self.options.pilot_id, cpu=usage.cpu,
                                        rss_mb=usage.rss_mb, wall=usage.wall, stdout_tail=tail)
        except DCSError as exc:  # the server may be restarting: the payload goes on, the next beat retries
            log.warning("job %s: heartbeat not delivered: %s", self.job_id, exc)
            return None
        if answer.get("heartbeat_period"):
            self.heartbeat_period = float(answer["heartbeat_period"])
        for command in answer.get("commands", []):
            if command.get("command") == "Kill":
                if command.get("reason") == "memory":
                    limit = watchdog.limits.memory_mb or 0
                    return Verdict("memory", f"Memory limit exceeded ({usage.rss_mb:.0f} MB > {limit:.0f} MB)",
                                   usage.rss_mb, limit)
                return Verdict("command", f"Killed: {command.get('reason') or 'by the WMS'}")
        return None

    def _output_sandbox(self) -> None:
        from junodcs.wms.sandbox import MAX_SANDBOX_BYTES, pack

        d = self.description
        names: set[str] = set()
        for pattern in [d.get("StdOutput") or "std.out", d.get("StdError") or "std.err",
                        *d.get("OutputSandbox", []), "failover_request.json"]:
            if pattern.upper().startswith("LFN:"):
                continue
            for found in glob.glob(str(self.workdir / pattern)):
                path = Path(found)
                if path.is_file() and path.resolve().is_relative_to(self.workdir.resolve()):
                    names.add(path.name)
        if not names or (not d.get("OutputSandbox") and all((self.workdir / n).stat().st_size == 0 for n in names)):
            return  # nothing asked for and nothing written: no sandbox (saves a round trip per trivial job)
        self.minor("Uploading Output Sandbox")
        data = pack(sorted(names), base=self.workdir)
        if len(data) > MAX_SANDBOX_BYTES:
            raise DCSError(f"output sandbox of {len(data)} bytes exceeds {MAX_SANDBOX_BYTES}",
                           code="sandbox-too-large")
        try:
            from junodcs.wms.pilot.sandbox_io import store_output_sandbox

            store_output_sandbox(self.wms, self.job_id, self.attempt, self.options.pilot_id, data)
        except DCSError as exc:
            if exc.code == "stale-attempt":
                raise StopPayload(exc.detail) from None
            raise
        self.parameters["OutputSandboxFiles"] = sorted(names)

    # -- output data -----------------------------------------------------------------------------------

    def _lfn_for(self, entry: str, local: Path) -> str:
        if entry.upper().startswith("LFN:"):
            return entry[4:]
        owner = self.job.get("owner") or "unknown"
        base = f"/juno/user/{owner[0]}/{owner}"
        path = (self.description.get("OutputPath") or "").strip()
        if path.startswith("/juno/"):
            base = path.rstrip("/")
        elif path:
            base = f"{base}/{path.strip('/')}"
        return f"{base}/{local.name}"

    def _output_files(self) -> list[tuple[Path, str]]:
        files: list[tuple[Path, str]] = []
        for entry in self.description.get("OutputData", []):
            pattern = Path(entry[4:]).name if entry.upper().startswith("LFN:") else entry
            matches = sorted(glob.glob(str(self.workdir / pattern)))
            if not matches:
                files.append((self.workdir / pattern, self._lfn_for(entry, self.workdir / pattern)))
            for found in matches:
                files.append((Path(found), self._lfn_for(entry, Path(found))))
        return files

    def _failover_candidates(self, dm: Any, tried: list[str]) -> list[str]:
        if self.options.failover_ses:
            return [se for se in self.options.failover_ses if se not in tried]
        ses = dm.storage_elements()
        disk = [name for name, se in ses.items() if not se.is_tape and se.url and name not in tried]
        return sorted(disk, key=lambda name: (ses[name].site != self.options.site, name))

    def _output_data(self, outcome: Outcome) -> Outcome:
        dm = self.dm()
        requested = list(self.description.get("OutputSE") or [])
        if not requested:
            requested = [name for name, se in dm.storage_elements().items()
                         if se.site == self.options.site and not se.is_tape][:1]
        uploaded: list[dict[str, Any]] = []
        operations: list[dict[str, Any]] = []
        lost: list[str] = []
        for local, lfn in self._output_files():
            if not local.is_file():
                lost.append(f"{local.name}: not produced by the payload")
                continue
            attempts: list[dict[str, str]] = []
            placed = None
            exists = False
            for se in requested:
                result = dm.put(local, lfn, se)
                if result.ok:
                    placed = {"lfn": lfn, "se": se, "checksum": result.checksum, "size": result.size}
                    break
                attempts.append({"se": se, "error": result.detail or result.code or "failed"})
                if result.code == "already-exists":  # another attempt's file: never overwritten
                    exists = True
                    break
            if placed is None and not exists:
                for se in self._failover_candidates(dm, requested):
                    result = dm.put(local, lfn, se)
                    if result.ok:
                        placed = {"lfn": lfn, "se": se, "checksum": result.checksum, "size": result.size,
                                  "failover": True}
                        operations.append({"Type": "PutAndRegister", "LFN": lfn, "SourceSE": se,
                                           "TargetSE": requested, "Checksum": result.checksum,
                                           "ChecksumType": "ADLER32", "Size": result.size})
                        operations.append({"Type": "RemoveReplica", "LFN": lfn, "TargetSE": [se],
                                           "After": "PutAndRegister"})
                        break
                    attempts.append({"se": se, "error": result.detail or result.code or "failed"})
            if placed is None:
                lost.append(f"{lfn}: " + "; ".join(f"{a['se']}: {a['error']}" for a in attempts)[:300])
            else:
                if attempts:
                    placed["failed_attempts"] = attempts
                uploaded.append(placed)
        self.parameters["UploadedOutputData"] = [u["lfn"] for u in uploaded]
        if operations:
            request = {"RequestName": f"{self.description.get('JobName') or 'job'}_job_{self.job_id}",
                       "JobID": self.job_id, "Attempt": self.attempt, "Owner": self.job.get("owner"),
                       "OwnerGroup": self.job.get("group"), "SourceComponent": "JobWrapper",
                       "Operations": operations}
            self.parameters["FailoverRequest"] = request
            (self.workdir / "failover_request.json").write_text(json.dumps(request, indent=2) + "\n")
            self._submit_failover_request(request)
            try:  # the trace also travels in the output sandbox
                self._output_sandbox()
            except DCSError:
                pass
        if lost:
            return Outcome("Failed", f"Uploading Job OutputData failed: {lost[0]}"[:255],
                           application=outcome.application, exit_code=outcome.exit_code,
                           parameters={"OutputDataNotUploaded": lost})
        if operations:  # the job is finished only when the RMS has moved the files (then Done, or Failed)
            failover = sorted({op["SourceSE"] for op in operations if op["Type"] == "PutAndRegister"})
            count = sum(1 for op in operations if op["Type"] == "PutAndRegister")
            request_id = self.parameters.get("FailoverRequestID")
            where = f"request {request_id}" if request_id else "request NOT submitted: see failover_request.json"
            return Outcome("Completing", f"Pending Requests: {count} output file(s) on failover SE "
                           f"{', '.join(failover)} ({where})"[:255], application=outcome.application,
                           exit_code=outcome.exit_code)
        return outcome

    def _submit_failover_request(self, request: dict[str, Any]) -> None:
        """Hand the failover record to the request management system, as the job's owner; its executor
        replicates the file to the requested SE and removes the failover copy. The record stays in the
        parameters and in failover_request.json whatever happens here."""
        try:
            from junodcs.rms.client import RequestClient

            token = self.wms.payload_token(self.job_id, self.attempt, self.options.pilot_id)["access_token"]
            with RequestClient(self.wms.server_url, token=token) as rms:
                named = {**request, "RequestName": f"{request['RequestName']}.{self.attempt}"}
                self.parameters["FailoverRequestID"] = rms.submit(named)
        except Exception as exc:  # noqa: BLE001 - the record is kept; an operator can submit it later
            log.warning("job %s: failover request not submitted: %s", self.job_id, exc)
            self.parameters["FailoverRequestError"] = str(exc)[:255]

    # -- end -------------------------------------------------------------------------------------------

    def _final(self, outcome: Outcome) -> None:
        if not outcome.reported:
            return
        try:
            self.report(outcome.status, outcome.minor, outcome.application,
                        memory_exceeded_mb=outcome.memory_exceeded_mb, reschedule=outcome.reschedule,
                        parameters=outcome.parameters)
        except DCSError as exc:
            if exc.code in ("stale-attempt", "illegal-transition"):
                outcome.reported = False
                log.warning("job %s: final status not applied: %s", self.job_id, exc.detail)
                return
            raise
