"""The `slurm` CE: pilots as Slurm batch jobs (`sbatch --parsable --wrap ...`), polled with `squeue`/`scontrol`.

Each pilot is one job named `dcs-<CE>` with `--mem` = the slot's memory and `--cpus-per-task` = its cores,
its output in `<workdir>/pilots/<pilot id>.log`. The worker nodes share this host's filesystem, so the pilot
runs with `python` (default: this interpreter) from the same installation. Options (grid.yaml `options:`):
`partition`, `python`, `account`, `extra` (more sbatch arguments, shell-split).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from junodcs.wms.ce.base import CEBackend, PilotLaunch, PilotState

#: Slurm job state -> pilot state
_STATES = {
    "PENDING": "Submitted", "CONFIGURING": "Submitted", "REQUEUED": "Submitted", "RESV_DEL_HOLD": "Submitted",
    "RUNNING": "Running", "COMPLETING": "Running", "SUSPENDED": "Running", "STAGE_OUT": "Running",
    "COMPLETED": "Done", "FAILED": "Failed", "CANCELLED": "Aborted", "TIMEOUT": "Aborted", "NODE_FAIL": "Aborted",
    "PREEMPTED": "Aborted", "BOOT_FAIL": "Aborted", "DEADLINE": "Aborted", "OUT_OF_MEMORY": "Aborted",
}


class SlurmCE(CEBackend):
    kind = "slurm"

    def __init__(self, name: str, *, slots: int, memory_mb: int, workdir: Path | str,
                 options: dict[str, str] | None = None) -> None:
        super().__init__(name, slots=slots, memory_mb=memory_mb, workdir=workdir)
        options = dict(options or {})
        self.partition = options.get("partition")
        self.python = options.get("python", sys.executable)
        self.account = options.get("account")
        self.extra = shlex.split(options.get("extra", ""))
        self.job_name = f"dcs-{name}"
        (self.workdir / "pilots").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _run(argv: list[str]) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def submit(self, launches: list[PilotLaunch]) -> list[str]:
        references = []
        for launch in launches:
            command = " ".join(shlex.quote(a) for a in [self.python, "-m", "junodcs.wms.pilot", *launch.args])
            if launch.env:
                command = " ".join(f"{k}={shlex.quote(v)}" for k, v in launch.env.items()) + " " + command
            argv = ["sbatch", "--parsable", "--job-name", self.job_name, "--output", str(self.log_path(launch.pilot_id)),
                    "--chdir", str(self.workdir), "--mem", f"{self.memory_mb}M", "--cpus-per-task", "1",
                    "--comment", launch.pilot_id]
            if self.partition:
                argv += ["--partition", self.partition]
            if self.account:
                argv += ["--account", self.account]
            argv += [*self.extra, "--wrap", command]
            job_id = self._run(argv).strip().split(";")[0]
            references.append(f"slurm://{job_id}")
        return references

    def _state(self, job_id: str) -> tuple[str, str]:
        """(Slurm state, exit code "n:signal") from scontrol (jobs stay visible for MinJobAge seconds)."""
        result = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                                timeout=30, check=False)
        if result.returncode != 0:
            return "UNKNOWN", ""
        fields = dict(part.split("=", 1) for part in result.stdout.split() if "=" in part)
        return fields.get("JobState", "UNKNOWN"), fields.get("ExitCode", "")

    def status(self, references: list[str]) -> dict[str, PilotState]:
        out = {}
        for reference in references:
            state, exit_code = self._state(reference.split("://", 1)[1])
            pilot = _STATES.get(state, "Aborted" if state == "UNKNOWN" else "Running")
            reason = f"slurm {state}" + (f", exit {exit_code}" if exit_code else "")
            if state == "UNKNOWN":
                reason = "unknown to slurm (purged or never started)"
            out[reference] = PilotState(pilot, reason)
        return out

    def active(self) -> int:
        listing = self._run(["squeue", "-h", "--name", self.job_name, "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING",
                             "-o", "%i"])
        return len([line for line in listing.splitlines() if line.strip()])

    def cancel(self, references: list[str]) -> None:
        if references:
            subprocess.run(["scancel", *[r.split("://", 1)[1] for r in references]], capture_output=True, timeout=30,
                           check=False)
