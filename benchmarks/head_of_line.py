"""Head-of-line isolation: do in-limit decode bombs slow ordinary requests or grow the server past 2 GiB?

One NormGate server (``python -m service``, default settings, CPU) and, per round:

* **idle**: a Poisson stream of ordinary 1024 × 1024 16-bit DICOM radiographs (``--rate`` per second, below
  capacity) for ``--seconds``; its 200 answers' p99 is the round's *idle p99*;
* **bombs**: the same stream again, plus four clients each sending decode bombs back to back (closed loop), the
  largest images the default limits still admit (``BOMBS``: a 7745² 8-bit gray PNG, 60 M pixels, and a
  7000² RGBA PNG, 49 M pixels; a few hundred KB each, ~610 and ~690 MiB estimated decode memory under
  NORMGATE_MAX_DECODE_MB = 768).

Throughout, the server's process group (the server, its fork server and decode processes) is sampled every
100 ms: the sum of RSS (what the issue's 2 GiB target counted) and of PSS (each shared page counted once, the
memory the group really holds). Reported per round and as the median over rounds: the ordinary requests'
statuses and p50/p99 in both phases, p99 under bombs ÷ idle p99 (target ≤ 2, all 200), the bombs' statuses,
and the peak RSS/PSS sums (target ≤ 2 GiB).

    .venv/bin/python benchmarks/head_of_line.py --rounds 3 --out benchmarks/results/head_of_line_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "load_tests")]

from images import dicom_bytes, radiograph

from load_tests.driver import closed_loop, open_loop, served, summarise

GIB = 2**30


def _png(width: int, height: int, colour_type: int, samples: int) -> bytes:
    """A PNG of zeros declaring width × height (8-bit, ``colour_type``): tiny to send, all of it to decode."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\0" * ((width * samples + 1) * height), 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


BOMBS = {"png-gray-7745x7745": (7745, 7745, 0, 1), "png-rgba-7000x7000": (7000, 7000, 6, 4)}


class GroupMemory:
    """Samples the RSS and PSS sums of every process in a process group, in a thread."""

    def __init__(self, pgid: int, period_s: float = 0.1) -> None:
        self.pgid = pgid
        self.period_s = period_s
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _members(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.pgid:
                pids.append(int(entry))
        return pids

    @staticmethod
    def _kib(path: str, key: str) -> int:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self) -> tuple[int, int, int]:
        pids = self._members()
        rss = sum(self._kib(f"/proc/{pid}/status", "VmRSS:") for pid in pids)
        pss = sum(self._kib(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids)
        return rss, pss, len(pids)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss, count = self.sample()
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, count)
            self._stop.wait(self.period_s)

    def __enter__(self) -> GroupMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=REPO / "models" / "checkpoints")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    p.add_argument("--rate", type=float, default=1.0, help="ordinary requests per second (Poisson)")
    p.add_argument("--bomb-clients", type=int, default=4)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "head_of_line.json")
    args = p.parse_args()

    ordinary = [dicom_bytes(radiograph(1024, 1024, seed=s), s) for s in range(4)]
    bombs = [_png(*spec) for spec in BOMBS.values()]
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "ordinary": "16-bit DICOM 1024x1024",
        "bombs": {name: len(body) for name, body in zip(BOMBS, bombs, strict=True)},
        "rounds": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with served(args.models_dir, args.out.with_suffix(".log"), torch_threads=1) as server:
        pgid = server.process.pid
        baseline_rss, baseline_pss, _ = GroupMemory(pgid).sample()
        results["idle_group_rss_mib"] = round(baseline_rss / 2**20)
        results["idle_group_pss_mib"] = round(baseline_pss / 2**20)
        asyncio.run(closed_loop(server.url, ordinary, "application/dicom", clients=1, requests=4))  # warm
        for r in range(args.rounds):
            with GroupMemory(pgid) as idle_memory:
                idle = asyncio.run(
                    open_loop(server.url, ordinary, "application/dicom", rate=args.rate, seconds=args.seconds, seed=r)
                )

            async def loaded(seed: int):
                return await asyncio.gather(
                    open_loop(
                        server.url, ordinary, "application/dicom", rate=args.rate, seconds=args.seconds, seed=seed
                    ),
                    closed_loop(
                        server.url, bombs, "image/png", clients=args.bomb_clients, seconds=args.seconds, timeout_s=60
                    ),
                )

            with GroupMemory(pgid) as bomb_memory:
                under_bombs, bomb_run = asyncio.run(loaded(100 + r))
            idle_s, loaded_s, bombs_s = summarise(idle), summarise(under_bombs), summarise(bomb_run)
            rnd = {
                "idle": idle_s,
                "under_bombs": loaded_s,
                "bombs": bombs_s,
                "p99_ratio": round(loaded_s["p99_ms"] / idle_s["p99_ms"], 3)
                if idle_s.get("p99_ms") and loaded_s.get("p99_ms")
                else None,
                "ordinary_all_200": set(loaded_s["statuses"]) == {"200"},
                "peak_group_rss_mib": round(bomb_memory.peak_rss / 2**20),
                "peak_group_pss_mib": round(bomb_memory.peak_pss / 2**20),
                "idle_peak_group_rss_mib": round(idle_memory.peak_rss / 2**20),
                "peak_processes": bomb_memory.peak_processes,
            }
            results["rounds"].append(rnd)
            print(
                f"round {r}: idle p99 {idle_s.get('p99_ms'):.0f} ms, under bombs p99 {loaded_s.get('p99_ms'):.0f} ms "
                f"(×{rnd['p99_ratio']}), ordinary {loaded_s['statuses']}, bombs {bombs_s['statuses']}, peak RSS "
                f"{rnd['peak_group_rss_mib']} MiB, PSS {rnd['peak_group_pss_mib']} MiB",
                flush=True,
            )
        results["metrics_after"] = server.scrape()
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    rounds = results["rounds"]
    results["median"] = {
        key: statistics.median(r[key] for r in rounds if r[key] is not None)
        for key in ("p99_ratio", "peak_group_rss_mib", "peak_group_pss_mib")
    }
    results["median"]["idle_p99_ms"] = statistics.median(r["idle"]["p99_ms"] for r in rounds)
    results["median"]["under_bombs_p99_ms"] = statistics.median(r["under_bombs"]["p99_ms"] for r in rounds)
    results["all_ordinary_200"] = all(r["ordinary_all_200"] for r in rounds)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results["median"], indent=2), "all ordinary 200:", results["all_ordinary_200"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
