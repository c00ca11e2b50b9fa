"""Ingest rate of the DICOM receiver against durable peers (Orthanc, a bare SCP + fsync), and
end-to-end latency from the last instance sent to the last result object in the PACS.

Usage: ``python benchmarks/ingest.py [--matrix 512 --slices 16 --frames 40] [--senders 1,4]
[--receiver-processes 1,2,4] [--repeat N] [--no-e2e] [--study DIR] [--keep DIR]
[--compare OTHER/service]``

A CT perfusion study is simulated once (default 640 files, ~320 MiB) and sent by DCMTK
``storescu`` processes, each with its share of the files on its own association, 1 and 4
at once. Receivers, measured in the same run, each on a free loopback port and started
afresh (empty output folder) for every run:

- ``storescp --fork +B -pdu 131072``: DCMTK writing the bytes as received, one process per
  association, largest PDU it accepts (it cannot be bound to loopback only: it listens on
  every interface of this machine for the few seconds of its run);
- a bare pynetdicom SCP (threaded, every storage class and transfer syntax, unlimited
  PDU) whose handler writes ``event.encoded_dataset()`` to a file: no checks, no fsync, no
  database (the baseline of the targets);
- the same bare SCP writing durably (temp file, fsync, rename, directory fsync) and
  nothing else: what durability alone costs on this disk (a yardstick of the targets);
- Orthanc (when installed) with ``"SyncStorageArea": true``, which fsyncs each file before
  answering, its SQLite index in the same temporary folder: the durable peer (the other
  yardstick);
- ``strokeflow listener``: checks, the file written and fsynced before answering, its
  SQL rows written in batches afterwards; with ``STROKEFLOW_RECEIVER_PROCESSES`` = each
  value of ``--receiver-processes``; with ``--compare``, also another tree's (e.g. the
  previous landing's), taking turns with the others.

The timed interval is from starting the senders to the last one exiting (its last C-STORE
answered); every received instance is then counted (files, or SQL rows). DCMTK runs with
``TCP_NODELAY=1``: as packaged it leaves Nagle's algorithm on and every instance then waits
~40 ms for a delayed ACK, which would measure the kernel's timer rather than the receivers;
one extra run shows what a sender with those defaults gets from each Python receiver.

End to end (``benchmarks/e2e.py``, run after the table unless ``--no-e2e``): ``strokeflow
serve`` (quiet period ``--quiet-period-s``) with an Orthanc (else a DCMTK storescp) as the
PACS destination; the latency is from storescu's exit to the last result object stored in
the PACS, with the stage times (receive, completion, analysis, objects, dispatch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy import func, select

from harness import Server, free_port, listening, strokeflow_env, wait_until
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.models import Instance

#: Ingest targets (issue 16), as ratios to durable peers measured in the same run:
#: senders -> minimum ratio to Orthanc with SyncStorageArea, and to the bare SCP + fsync.
ORTHANC_RATIO_TARGETS = {1: 1.0, 4: 1.2}
BARE_FSYNC_RATIO_TARGETS = {1: 0.9}
ORTHANC_SYNC = "Orthanc, SyncStorageArea"
BARE_FSYNC = "bare pynetdicom SCP + fsync"
STROKEFLOW = str(Path(sys.executable).parent / "strokeflow")
AE_TITLE = "STROKEFLOW"
PACS_AE = "PACS"

#: The bare pynetdicom storage SCP (argv: port, output folder), run as its own process.
BARE_SCP = """
import os
import sys
from pathlib import Path
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

out = Path(sys.argv[2])
durable = len(sys.argv) > 3 and sys.argv[3] == "fsync"

def on_store(event):
    name = str(event.request.AffectedSOPInstanceUID)
    if not durable:
        (out / f"{name}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000
    part = out.parent / f"{name}.part"
    with open(part, "wb") as handle:
        handle.write(event.encoded_dataset())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, out / f"{name}.dcm")
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return 0x0000

ae = AE("BARE")
ae.maximum_pdu_size = 0
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, on_store)])
"""


def dcmtk_env() -> dict[str, str]:
    """The environment for DCMTK tools: Nagle's algorithm off (see the module docstring)."""
    return dict(os.environ, TCP_NODELAY="1")


@dataclass(frozen=True)
class Receiver:
    """How to start one receiver on ``port`` writing under ``folder``, and count its instances."""

    name: str
    start: Callable[[int, Path], Server]
    received: Callable[[Path], int]
    #: Count before the receiver is stopped (it answers over HTTP).
    count_while_running: bool = False


def _count_files(folder: Path) -> int:
    return sum(1 for p in (folder / "out").iterdir() if p.is_file())


def storescp_receiver() -> Receiver:
    exe = shutil.which("storescp")
    if exe is None:
        raise SystemExit("storescp is not installed (apt: dcmtk)")

    def start(port: int, folder: Path) -> Server:
        (folder / "out").mkdir(parents=True)
        argv = [exe, "--fork", "+B", "-pdu", "131072", "-od", str(folder / "out"), str(port)]
        server = Server("storescp", argv, folder / "server.log", dcmtk_env())
        wait_until(lambda: server.check_alive() and listening(port), 30, "storescp to listen")
        return server

    return Receiver("DCMTK storescp --fork", start, _count_files)


def bare_receiver(*, fsync: bool = False) -> Receiver:
    """The bare SCP; with ``fsync`` it writes as StrokeFlow does (temp file, fsync, rename,
    directory fsync) and nothing else: the price of durability alone, for reference."""

    def start(port: int, folder: Path) -> Server:
        (folder / "out").mkdir(parents=True)
        argv = [sys.executable, "-c", BARE_SCP, str(port), str(folder / "out")]
        argv += ["fsync"] if fsync else []
        server = Server("bare pynetdicom SCP", argv, folder / "server.log", dict(os.environ))
        wait_until(lambda: server.check_alive() and listening(port), 30, "the bare SCP to listen")
        return server

    name = BARE_FSYNC if fsync else "bare pynetdicom SCP"
    return Receiver(name, start, _count_files)


def orthanc_executable() -> str | None:
    """Orthanc's server binary, if installed."""
    found = shutil.which("Orthanc")
    return found or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


def orthanc_sync_receiver(exe: str) -> Receiver:
    """Orthanc storing each instance durably (``SyncStorageArea``) before answering."""
    http_ports: dict[Path, int] = {}

    def start(port: int, folder: Path) -> Server:
        http_ports[folder] = http_port = free_port()
        config = {
            "Name": "strokeflow-benchmark-receiver",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "SyncStorageArea": True,
            "DicomAet": AE_TITLE,
            "DicomPort": port,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        # Orthanc's DICOM layer is DCMTK's: Nagle's algorithm off as for storescp.
        server = Server(
            "Orthanc", [exe, str(folder / "orthanc.json")], folder / "server.log", dcmtk_env()
        )
        wait_until(
            lambda: server.check_alive() and listening(port) and listening(http_port),
            60,
            "Orthanc to listen",
        )
        return server

    def received(folder: Path) -> int:
        url = f"http://127.0.0.1:{http_ports[folder]}/statistics"
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(json.loads(response.read())["CountInstances"])

    return Receiver(ORTHANC_SYNC, start, received, count_while_running=True)


def _instance_rows(folder: Path) -> int:
    engine = make_engine(f"sqlite:///{folder / 'data' / 'strokeflow.sqlite'}")
    try:
        with make_session_factory(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)
    finally:
        engine.dispose()


def _listening_processes(log: Path) -> int:
    return log.read_text(errors="replace").count("listening for DICOM") if log.exists() else 0


def strokeflow_receiver(processes: int, service_dir: Path | None = None) -> Receiver:
    """``strokeflow listener`` with ``processes`` receiving processes; with ``service_dir``
    another tree's (``--compare``), named "compared" in the table."""

    def start(port: int, folder: Path) -> Server:
        env = strokeflow_env(folder / "data", port, receiver_processes=processes)
        if service_dir is not None:
            env["PYTHONPATH"] = str(service_dir)
        server = Server("strokeflow listener", [STROKEFLOW, "listener"], folder / "server.log", env)
        # Every receiving process logs once it listens; the port alone answers after the first.
        wait_until(
            lambda: server.check_alive() and _listening_processes(server.log) >= processes,
            60,
            f"{processes} strokeflow receiving process(es) to listen",
        )
        return server

    name = "strokeflow" if service_dir is None else "compared strokeflow"
    return Receiver(f"{name}, {processes} proc", start, _instance_rows)


def send(port: int, shares: Sequence[Sequence[Path]], env: dict[str, str], called: str) -> float:
    """One storescu per share, all at once; wall seconds until the last one exits."""
    exe = shutil.which("storescu")
    if exe is None:
        raise SystemExit("storescu is not installed (apt: dcmtk)")
    t0 = time.perf_counter()
    senders = [
        subprocess.Popen(
            [exe, "-aet", "CT01", "-aec", called, "127.0.0.1", str(port), *map(str, share)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for share in shares
    ]
    failures = []
    for i, sender in enumerate(senders):
        try:
            _, err = sender.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            sender.kill()
            _, err = sender.communicate()
            failures.append(f"sender {i + 1} ran over 300 s")
            continue
        if sender.returncode != 0:
            failures.append(f"sender {i + 1} exit {sender.returncode}: {err.decode()[-500:]}")
    wall_s = time.perf_counter() - t0
    if failures:
        raise SystemExit("storescu failed:\n" + "\n".join(failures))
    return wall_s


def shares_of(files: Sequence[Path], senders: int) -> list[list[Path]]:
    """Deal the files round-robin into ``senders`` shares."""
    return [list(files[i::senders]) for i in range(senders)]


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of the processes of group ``pgid``, with the children
    they have reaped (storescp's forked receivers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            total += sum(int(v) for v in fields[11:15])
    return total / tick


def measure(
    receiver: Receiver,
    study: Study,
    senders: int,
    work: Path,
    run: int,
    env: dict[str, str],
) -> tuple[float, float]:
    """One fresh receiver, one timed send; seconds, and the receiver's CPU seconds during
    it (to its last answer; its rows may still be written). Exits when an instance is
    missing."""
    folder = work / f"recv-{run}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.sync()  # the previous run's dirty pages must not be written back during this one
    port = free_port()
    server = receiver.start(port, folder)
    try:
        cpu_before_s = group_cpu_s(server.process.pid)
        wall_s = send(port, shares_of(study.files, senders), env, AE_TITLE)
        cpu_s = group_cpu_s(server.process.pid) - cpu_before_s
        got = receiver.received(folder) if receiver.count_while_running else -1
    finally:
        server.stop()
    if not receiver.count_while_running:
        got = receiver.received(folder)
    if got != study.instances:
        raise SystemExit(
            f"{receiver.name}, {senders} sender(s): {got} of {study.instances} instances received "
            f"(log: {server.log})"
        )
    shutil.rmtree(folder, ignore_errors=True)
    return wall_s, cpu_s


@dataclass(frozen=True)
class Rate:
    """Measured seconds for one receiver and sender count."""

    receiver: str
    senders: int
    walls_s: list[float]
    cpus_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.walls_s)

    @property
    def median_cpu_s(self) -> float:
        """The receiver's CPU seconds during a send, median of the runs."""
        return statistics.median(self.cpus_s)


@dataclass(frozen=True)
class Study:
    """The files sent, the distinct SOP instances they hold, their size."""

    files: list[Path]
    instances: int

    @property
    def mib(self) -> float:
        return sum(p.stat().st_size for p in self.files) / 2**20


def make_study(args: argparse.Namespace, work: Path) -> Study:
    """The DICOM files to send and how many distinct SOP instances they hold.

    Every instance must be distinct, or a receiver keeps one of each and the rates lie.
    """
    if args.study is not None:
        files = sorted(args.study.glob("*.dcm"))
        if not files:
            raise SystemExit(f"--study {args.study}: no *.dcm files")
        unique = len({_sop_uid(p) for p in files})
        print(f"== study: {len(files)} files ({unique} distinct instances) from {args.study}")
        return Study(files, unique)
    t0 = time.perf_counter()
    phantom = simulate_ctp(
        CtpPhantomOptions(matrix=args.matrix, slices=args.slices, frames=args.frames)
    )
    files = sorted(write_ctp_study(phantom, work / "study", extra_series=False))
    print(
        f"== study: CT perfusion phantom {args.matrix}x{args.matrix}x{args.slices} slices x "
        f"{args.frames} frames: {len(files)} files written in {time.perf_counter() - t0:.1f} s"
    )
    unique = len({_sop_uid(p) for p in files})
    if unique != len(files):
        raise SystemExit(f"the phantom repeated SOP Instance UIDs: {unique} of {len(files)}")
    return Study(files, len(files))


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def ingest(args: argparse.Namespace, study: Study, work: Path) -> None:
    """Every receiver with every sender count, ``--repeat`` times; the table and targets.

    The receivers take turns within each repeat (not all repeats of one, then the next),
    so that a change in the shared machine's load falls on all of them alike.
    """
    receivers = [storescp_receiver(), bare_receiver(), bare_receiver(fsync=True)]
    orthanc = orthanc_executable()
    if orthanc is not None:
        receivers.append(orthanc_sync_receiver(orthanc))
    else:
        print("Orthanc is not installed: no Orthanc rows, no Orthanc targets")
    receivers += [strokeflow_receiver(n) for n in args.receiver_processes]
    if args.compare is not None:
        receivers += [strokeflow_receiver(n, args.compare) for n in args.receiver_processes]
    total_mib, count = study.mib, study.instances
    walls: dict[tuple[str, int], list[float]] = {}
    cpus: dict[tuple[str, int], list[float]] = {}
    run = 0
    for senders in args.senders:
        for _ in range(args.repeat):
            for receiver in receivers:
                wall_s, cpu_s = measure(receiver, study, senders, work, run, dcmtk_env())
                walls.setdefault((receiver.name, senders), []).append(wall_s)
                cpus.setdefault((receiver.name, senders), []).append(cpu_s)
                run += 1
        for receiver in receivers:
            times = ", ".join(f"{w:.2f}" for w in walls[receiver.name, senders])
            print(f"   {receiver.name}, {senders} sender(s): {times} s")
    rates = [Rate(name, senders, w, cpus[name, senders]) for (name, senders), w in walls.items()]
    print(f"cores: {os.cpu_count()}; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        f"ingest of {count} instances ({total_mib:.0f} MiB), median of {args.repeat} "
        f"(TCP_NODELAY=1 for DCMTK); ratios are instances/s over the reference's; CPU is "
        f"the receiver's (all its processes) per instance, median of the runs:"
    )
    median = {(r.receiver, r.senders): r.median_s for r in rates}
    print(
        f"  {'receiver':<34}{'senders':>8}{'s':>8}{'inst/s':>9}{'MiB/s':>8}"
        f"{'/Orthanc':>10}{'/bare+fsync':>12}{'CPU ms':>8}"
    )
    for r in rates:
        ratios = ""
        for reference, width in ((ORTHANC_SYNC, 10), (BARE_FSYNC, 12)):
            ref_s = median.get((reference, r.senders))
            ratios += f"{ref_s / r.median_s:>{width}.2f}" if ref_s else f"{'-':>{width}}"
        print(
            f"  {r.receiver:<34}{r.senders:>8}{r.median_s:>8.2f}{count / r.median_s:>9.0f}"
            f"{total_mib / r.median_s:>8.1f}{ratios}{1000 * r.median_cpu_s / count:>8.2f}"
        )
    ours = [r for r in rates if r.receiver.startswith("strokeflow")]
    compared = [r for r in rates if r.receiver.startswith("compared")]
    if compared:
        print(f"this tree against {args.compare} (instances/s ratio, same run):")
        for r in ours:
            other = next(
                (
                    c
                    for c in compared
                    if c.receiver.endswith(r.receiver.split(",")[-1]) and c.senders == r.senders
                ),
                None,
            )
            if other is not None:
                print(f"  {r.receiver}, {r.senders} sender(s): {other.median_s / r.median_s:.2f}x")
    for reference, targets in (
        (ORTHANC_SYNC, ORTHANC_RATIO_TARGETS),
        (BARE_FSYNC, BARE_FSYNC_RATIO_TARGETS),
    ):
        for n, target in targets.items():
            ref_s = median.get((reference, n))
            candidates = [r for r in ours if r.senders == n]
            if ref_s is None or not candidates:
                continue
            best = min(candidates, key=lambda r: r.median_s)
            ratio = ref_s / best.median_s
            verdict = "PASS" if ratio >= target else "FAIL"
            print(
                f"{verdict}: {n} sender(s), {best.receiver} at {ratio:.2f}x {reference} "
                f"(target >= {target:.1f}x)"
            )
    if args.nagle_run:
        print("1 sender with DCMTK's default socket options (Nagle on), median of 1:")
        plain = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        for receiver in (bare_receiver(), strokeflow_receiver(1)):
            wall_s, _ = measure(receiver, study, 1, work, run, plain)
            run += 1
            print(f"  {receiver.name:<34}{wall_s:8.2f} s {count / wall_s:7.0f} inst/s")


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated positive integers")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--study", type=Path, help="send these *.dcm files instead of a phantom")
    parser.add_argument("--senders", type=_int_list, default=[1, 4], help="e.g. 1,4")
    parser.add_argument(
        "--receiver-processes", type=_int_list, default=[1, 2, 4], help="strokeflow, e.g. 1,2"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs per receiver (median)")
    parser.add_argument("--no-nagle-run", dest="nagle_run", action="store_false")
    parser.add_argument("--no-e2e", dest="e2e", action="store_false")
    parser.add_argument("--e2e-senders", type=int, default=1)
    parser.add_argument("--quiet-period-s", type=float, default=2.0)
    parser.add_argument("--e2e-timeout-s", type=float, default=300.0)
    parser.add_argument("--keep", type=Path, help="work (study, logs) here and keep it")
    parser.add_argument(
        "--compare",
        type=Path,
        help="also run the strokeflow of this service folder (e.g. another checkout's "
        "service/) in the same run, taking turns with the others",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    work = args.keep or Path(tempfile.mkdtemp(prefix="strokeflow-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        study = make_study(args, work)
        ingest(args, study, work)
        if args.e2e:
            from e2e import end_to_end  # benchmarks/e2e.py

            end_to_end(
                study.files,
                work,
                senders=args.e2e_senders,
                quiet_period_s=args.quiet_period_s,
                timeout_s=args.e2e_timeout_s,
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
