"""The `htcondor` CE: pilots as jobs of a real HTCondor pool, through the `htcondor` bindings (`htcondor2`).

Pool access: `CONDOR_CONFIG` (default `/etc/junodcs/htcondor/condor_config`, written by
`.ci/setup-htcondor.sh`: collector 127.0.0.1:9618, IDTOKEN authentication) and the schedd found through the
collector. Each pilot is one job (`request_memory` = the slot's memory, `request_cpus` = its cores) tagged
with `+JunoDCSCE` and `+JunoDCSPilot`, so the director counts and polls only its own pilots.

Where pilots run: on the pool's worker nodes, which here are a Debian trixie chroot (the HTCondor pool of
`components.md`). A pilot there runs with the node's Python (`python`, default `/usr/bin/python3`) and
`PYTHONPATH` = `pythonpath` (default `/opt/junodcs/src`, the checkout's `src/` bind-mounted read-only by the
setup script): the pilot needs only junodcs' client side plus httpx, which the node has from Debian. Files the
pilot and the director share (work areas, logs, the pilot token) live under `shared` (default
`/srv/junodcs-htcondor`), mounted at the same path on the host and in the pool.

Options (grid.yaml `options:` of the CE or keyword arguments): `collector`, `condor_config`, `root` (the
chroot, for the submitting user's uid), `shared`, `python`, `pythonpath`, `owner` (default `tester`).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from junodcs.wms.ce.base import CEBackend, PilotLaunch, PilotState

ENV_FILE = Path("/etc/junodcs/htcondor/env")
#: HTCondor JobStatus -> pilot state
_STATES = {1: "Submitted", 2: "Running", 3: "Aborted", 4: "Done", 5: "Aborted", 6: "Running", 7: "Submitted"}


def pool_settings() -> dict[str, str]:
    """What `.ci/setup-htcondor.sh` recorded (HTCONDOR_ROOT, HTCONDOR_SHARED, CONDOR_CONFIG), env first."""
    found: dict[str, str] = {}
    if ENV_FILE.exists():
        for line in ENV_FILE.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                found[key.strip()] = value.strip()
    for key in ("HTCONDOR_ROOT", "HTCONDOR_SHARED", "CONDOR_CONFIG"):
        if os.environ.get(key):
            found[key] = os.environ[key]
    return found


def htcondor_module() -> Any:
    settings = pool_settings()
    if settings.get("CONDOR_CONFIG"):
        os.environ.setdefault("CONDOR_CONFIG", settings["CONDOR_CONFIG"])
    import htcondor2

    return htcondor2


class HTCondorCE(CEBackend):
    kind = "htcondor"

    def __init__(self, name: str, *, slots: int, memory_mb: int, workdir: Path | str,
                 options: dict[str, str] | None = None) -> None:
        settings = pool_settings()
        options = dict(options or {})
        self.shared = Path(options.get("shared") or settings.get("HTCONDOR_SHARED") or "/srv/junodcs-htcondor")
        self.root = Path(options.get("root") or settings.get("HTCONDOR_ROOT") or "/opt/junodcs-htcondor/trixie")
        if options.get("condor_config"):
            os.environ["CONDOR_CONFIG"] = options["condor_config"]
        self.collector = options.get("collector", "127.0.0.1:9618")
        self.python = options.get("python", "/usr/bin/python3")
        self.pythonpath = options.get("pythonpath", "/opt/junodcs/src")
        self.owner = options.get("owner", "tester")
        # the director's workdir may be anywhere; the pool sees only the shared area
        tag = hashlib.sha256(str(Path(workdir).resolve()).encode()).hexdigest()[:10]
        super().__init__(name, slots=slots, memory_mb=memory_mb, workdir=self.shared / f"{name}-{tag}")
        for sub in (self.workdir, self.workdir / "pilots", self.workdir / "work"):
            sub.mkdir(parents=True, exist_ok=True)
            sub.chmod(0o1777)
        self.htcondor = htcondor_module()
        self._schedd: Any = None

    # -- pool ------------------------------------------------------------------------------------------

    def schedd(self) -> Any:
        if self._schedd is None:
            h = self.htcondor
            ad = h.Collector(self.collector).locate(h.DaemonType.Schedd)
            self._schedd = h.Schedd(ad)
        return self._schedd

    def _uid(self) -> tuple[int, int] | None:
        try:
            for line in (self.root / "etc" / "passwd").read_text().splitlines():
                parts = line.split(":")
                if parts[0] == self.owner:
                    return int(parts[2]), int(parts[3])
        except OSError:
            pass
        return None

    def prepare_token_file(self, path: Path) -> None:
        """The pilot token must be readable by the pool user the pilots run as, and by nobody else."""
        ids = self._uid()
        if ids is not None and os.geteuid() == 0:
            os.chown(path, *ids)

    def pilot_path(self, path: Path) -> Path:
        """A host file the pilot needs, as the pilot sees it (copied into the shared area when outside)."""
        path = Path(path)
        if path.resolve().is_relative_to(self.shared):
            return path
        target = self.workdir / path.name
        shutil.copyfile(path, target)
        target.chmod(0o644)
        return target

    def pilot_workdir(self, pilot_id: str) -> Path:
        return self.workdir / "work" / pilot_id

    # -- CE interface ----------------------------------------------------------------------------------

    def submit(self, launches: list[PilotLaunch]) -> list[str]:
        if not launches:
            return []
        h = self.htcondor
        items = []
        for launch in launches:
            args = " ".join(shlex.quote(a).replace('"', '""') for a in ["-m", "junodcs.wms.pilot", *launch.args])
            env = {"PYTHONPATH": self.pythonpath, "HOME": str(self.workdir), **launch.env}
            items.append({
                "pilot": launch.pilot_id,
                "pargs": args,
                "penv": " ".join(f"{k}={v}" for k, v in env.items()),
            })
        submit = h.Submit({
            "executable": self.python,
            "arguments": '"$(pargs)"',
            "environment": '"$(penv)"',
            "output": str(self.workdir / "pilots" / "$(pilot).log"),
            "error": str(self.workdir / "pilots" / "$(pilot).err"),
            "log": str(self.workdir / "pilots" / "condor.log"),
            "initialdir": str(self.workdir),
            "should_transfer_files": "NO",
            "request_memory": str(self.memory_mb),
            "request_cpus": "1",
            "+JunoDCSCE": f'"{self.name}"',
            "+JunoDCSPilot": '"$(pilot)"',
            "batch_name": f"pilots-{self.name}",
        })
        result = self.schedd().submit(submit, itemdata=iter(items))
        cluster = result.cluster()
        return [f"htcondor://{self.collector}/{cluster}.{proc}" for proc in range(len(items))]

    @staticmethod
    def _job_id(reference: str) -> str:
        return reference.rsplit("/", 1)[-1]

    def _ads(self, references: list[str]) -> dict[str, Any]:
        ids = {self._job_id(r): r for r in references}
        clusters = sorted({i.split(".")[0] for i in ids})
        constraint = " || ".join(f"ClusterId == {c}" for c in clusters)
        projection = ["ClusterId", "ProcId", "JobStatus", "ExitCode", "ExitBySignal", "ExitSignal", "HoldReason",
                      "RemoveReason"]
        found: dict[str, Any] = {}
        for ad in self.schedd().query(constraint=constraint, projection=projection):
            found[f"{ad['ClusterId']}.{ad['ProcId']}"] = ad
        missing = [i for i in ids if i not in found]
        if missing:
            history_constraint = " || ".join(
                f"(ClusterId == {i.split('.')[0]} && ProcId == {i.split('.')[1]})" for i in missing)
            for ad in self.schedd().history(constraint=history_constraint, projection=projection,
                                            match=len(missing)):
                found[f"{ad['ClusterId']}.{ad['ProcId']}"] = ad
        return {ids[k]: v for k, v in found.items() if k in ids}

    def status(self, references: list[str]) -> dict[str, PilotState]:
        if not references:
            return {}
        ads = self._ads(references)
        out: dict[str, PilotState] = {}
        held = []
        for reference in references:
            ad = ads.get(reference)
            if ad is None:
                out[reference] = PilotState("Running", "not visible in the schedd yet")
                continue
            state = _STATES.get(int(ad.get("JobStatus", 0)), "Submitted")
            reason = ""
            if state == "Done":
                if ad.get("ExitBySignal"):
                    state, reason = "Aborted", f"killed by signal {ad.get('ExitSignal')}"
                elif int(ad.get("ExitCode", 0) or 0) != 0:
                    state, reason = "Failed", f"exit code {ad.get('ExitCode')}"
                else:
                    reason = "exit code 0"
            elif int(ad.get("JobStatus", 0)) == 5:
                reason = f"held: {ad.get('HoldReason', '')}"
                held.append(self._job_id(reference))
            elif state == "Aborted":
                reason = f"removed: {ad.get('RemoveReason', '')}"
            out[reference] = PilotState(state, reason)
        if held:
            self.schedd().act(self.htcondor.JobAction.Remove, held)
        return out

    def active(self) -> int:
        ads = self.schedd().query(constraint=f'JunoDCSCE == "{self.name}" && (JobStatus == 1 || JobStatus == 2 '
                                              '|| JobStatus == 6 || JobStatus == 7)', projection=["ClusterId"])
        return len(list(ads))

    def output(self, reference: str, pilot_id: str) -> str:
        text = super().output(reference, pilot_id)
        try:
            err = (self.workdir / "pilots" / f"{pilot_id}.err").read_text(errors="replace")
        except OSError:
            err = ""
        return text + (("\n--- stderr ---\n" + err) if err.strip() else "")

    def cancel(self, references: list[str]) -> None:
        if references:
            self.schedd().act(self.htcondor.JobAction.Remove, [self._job_id(r) for r in references])

    def close(self) -> None:
        pass
