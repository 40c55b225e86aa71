"""What the audit trail adds to POST /assess: p50/p99 with the audit on and off (a benchmark, not a test).

Each round starts two real servers (``python -m service``, load_tests/driver.py) on loopback with the same
checkpoint and settings except ``NORMGATE_AUDIT_ENABLED``, each with a fresh state folder (SQLite store, or
``--database-url``), and drives them one after the other with closed-loop clients, in alternating order (off, on,
then on, off, …), so slow phases of a shared machine and a slow process hit both modes alike; latencies are
pooled per mode. Each round checks that the audit-on server recorded every request it answered. It also times
the decision listener itself in-process (``AuditTrail.record``, the only audit work on the request's path; the
write happens in another thread).

    .venv/bin/python benchmarks/audit_overhead.py --rounds 6 --requests 100 --out benchmarks/results/audit_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from load_tests.driver import closed_loop, percentile, served


def radiograph_png(size: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    rows = np.linspace(-1, 1, size)[:, None]
    cols = np.linspace(-1, 1, size)[None, :]
    image = 40 + 150 * np.exp(-(rows**2 * 1.5 + cols**2 * 2.5)) + rng.normal(0, 6, (size, size))
    buffer = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def listener_cost_us(calls: int, state: Path) -> dict[str, float]:
    """Microseconds per ``AuditTrail.record`` call (the event loop's share), with the writer running on SQLite."""
    from service.db.audit import AuditTrail
    from service.db.store import Store
    from service.serving.decisions import DecisionRecord

    store = Store(f"sqlite:///{state / 'listener.sqlite3'}")
    store.ensure_schema()
    trail = AuditTrail(store, state / "listener-spool.jsonl", buffer_size=calls + 1)
    trail.start()
    timings = []
    for i in range(calls):
        record = DecisionRecord(
            time=datetime.now(UTC),
            assessment_id=f"bench-{i}",
            request_id=f"bench-{i}",
            source="assess",
            study_instance_uid=None,
            series_instance_uid=None,
            sop_instance_uid=None,
            model_name="default",
            model_version="1.0.0",
            weights_sha256="0" * 64,
            method=None,
            probability=0.5,
            threshold=0.5,
            calibration=None,
            decision="accept",
            reason=None,
            point_x=None,
            point_y=None,
            ood_score=None,
            latency_ms=1.0,
            key_id=None,
            client="127.0.0.1",
        )
        started = time.perf_counter()
        trail.record(record)
        timings.append((time.perf_counter() - started) * 1e6)
        if i % 50 == 0:
            time.sleep(0.005)  # a request rate, not one burst: the writer runs meanwhile, as it does in service
    trail.flush(60)
    trail.stop()
    store.dispose()
    return {
        "calls": calls,
        "p50_us": statistics.median(timings),
        "p99_us": float(np.percentile(timings, 99)),
        "mean_us": statistics.fmean(timings),
    }


async def count_audit_records(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        exported = await client.get("/audit", headers={"accept": "text/csv"})
        exported.raise_for_status()
        return max(0, len(exported.text.strip().splitlines()) - 1)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return path.name


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", default=str(REPO / "models" / "checkpoints"))
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds per mode")
    p.add_argument("--requests", type=int, default=100, help="requests per round and mode")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--image-size", type=int, default=512, help="side of the square 8-bit PNG sent")
    p.add_argument("--heatmap", default="none", choices=["png", "none"])
    p.add_argument("--database-url", default=None, help="store of the audit-on server (default: SQLite)")
    p.add_argument("--listener-calls", type=int, default=20000)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    body = radiograph_png(args.image_size)
    latencies: dict[str, list[float]] = {"off": [], "on": []}
    round_p50: dict[str, list[float]] = {"off": [], "on": []}
    answered = {"off": 0, "on": 0}
    recorded = 0
    with tempfile.TemporaryDirectory(prefix="normgate-audit-bench-") as tmp:
        state = Path(tmp)
        common = {"max_batch_size": 1, "torch_threads": 1, "decode_workers": 1}

        async def run(url: str, mode: str, requests: int) -> list[float]:
            result = await closed_loop(
                url, [body], "image/png", clients=args.clients, requests=requests, params={"heatmap": args.heatmap}
            )
            ok = [1000 * r.latency_s for r in result.records if r.status == 200]
            answered[mode] += len(ok)
            return ok

        for round_index in range(args.rounds):
            # Fresh processes every round, started and driven in alternating order: a server that happens to
            # run slower on this shared machine (core placement, neighbours) is not always the same mode.
            order = ("off", "on") if round_index % 2 == 0 else ("on", "off")
            folder = state / f"round{round_index}"
            with contextlib.ExitStack() as stack:
                servers = {}
                for mode in order:
                    servers[mode] = stack.enter_context(
                        served(
                            Path(args.models_dir),
                            folder / f"{mode}.log",
                            state_dir=folder / mode,
                            audit_enabled="true" if mode == "on" else "false",
                            database_url=args.database_url if mode == "on" else None,
                            **common,
                        )
                    )
                for mode in order:  # warm-up: first requests pay lazy initialisation
                    asyncio.run(run(servers[mode].url, mode, 10))
                for mode in order:
                    values = asyncio.run(run(servers[mode].url, mode, args.requests))
                    latencies[mode] += values
                    round_p50[mode].append(statistics.median(values))
                time.sleep(1.0)
                recorded += asyncio.run(count_audit_records(servers["on"].url))
            print(
                f"round {round_index + 1}/{args.rounds}: "
                + ", ".join(f"{m} p50 {round_p50[m][-1]:.1f} ms" for m in ("off", "on")),
                file=sys.stderr,
            )
        listener = listener_cost_us(args.listener_calls, state)

    summary = {
        mode: {
            "requests": len(values),
            "p50_ms": percentile(values, 0.5),
            "p95_ms": percentile(values, 0.95),
            "p99_ms": percentile(values, 0.99),
            "mean_ms": statistics.fmean(values),
        }
        for mode, values in latencies.items()
    }
    result = {
        "benchmark": "audit_overhead",
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "models_dir")},
            "models_dir": _relative(Path(args.models_dir)),
        },
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "results": summary,
        "p50_added_ms": summary["on"]["p50_ms"] - summary["off"]["p50_ms"],
        # Paired by round (same minutes of the machine): the spread of these is the noise a difference must beat.
        "round_p50_added_ms": [on - off for off, on in zip(round_p50["off"], round_p50["on"])],
        "round_p50_added_median_ms": statistics.median(on - off for off, on in zip(round_p50["off"], round_p50["on"])),
        "p99_added_ms": summary["on"]["p99_ms"] - summary["off"]["p99_ms"],
        "audit_records": {"answered_by_audit_on_server": answered["on"], "recorded": recorded},
        "listener": listener,
        "latencies_ms": latencies,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "latencies_ms"}, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
