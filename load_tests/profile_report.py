"""Summarise a py-spy ``raw`` (collapsed stacks) profile of the server: where each thread spends its samples.

    .venv/bin/python load_tests/profile_report.py artifacts/load/profile/profile.raw [--top 25]

Threads are grouped by role (event loop, decode pool, model worker, other); for each role it prints the share
of samples and the functions with the most *inclusive* samples inside NormGate's own code and the libraries
it calls, so a hot spot reads as "decode pool: 60 % in models/imaging/decode.py _min_max".
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
# Frames of the server's own code carry this checkout's absolute path; the report shows them repository-relative.
REPO_ROOT = Path(__file__).resolve().parents[1]


def role_of(stack: list[str]) -> str:
    """The thread's job, from its name (py-spy --threads puts "thread (id): name" first) or its frames."""
    head = stack[0] if stack else ""
    text = ";".join(stack)
    if "normgate-model" in head or "serve_forever" in text:
        return "model worker"
    if "normgate-decode" in head or "_decode_and_prepare" in text:
        return "decode pool"
    if "MainThread" in head or "run_until_complete" in text or "run_forever" in text:
        return "event loop"
    return "other"


def parse(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        stacks.append((frames.split(";"), n))
    return stacks


def short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", f"{REPO_ROOT}/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('func')} ({file})"


def report(text: str, top: int = 20) -> str:
    stacks = parse(text)
    total = sum(n for _, n in stacks) or 1
    by_role: dict[str, Counter] = defaultdict(Counter)
    role_total: Counter = Counter()
    for frames, n in stacks:
        role = role_of(frames)
        role_total[role] += n
        seen = set()
        for frame in frames:
            name = short(frame)
            if name.startswith(("process ", "thread ")) or name in seen:
                continue
            seen.add(name)
            by_role[role][name] += n
    lines = [f"{total} samples (non-idle)"]
    for role, n in role_total.most_common():
        lines.append(f"\n## {role}: {n} samples ({100 * n / total:.1f} % of all)")
        for name, k in by_role[role].most_common(top):
            lines.append(f"  {100 * k / n:5.1f} %  {name}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw", type=Path)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    print(report(args.raw.read_text(), args.top))


if __name__ == "__main__":
    main()
