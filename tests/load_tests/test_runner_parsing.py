"""The load-test runner's summary: canned Locust CSV + status file + two /metrics scrapes → numbers and tables.

Also the py-spy report and the batching study's grid and table, on canned inputs. Fast, no server, no Locust.
"""

from __future__ import annotations

import pytest

from load_tests.profile_report import report
from load_tests.run_load import markdown, parse_locust_stats, summarise
from tests.load_tests.canned import AFTER, BEFORE

STATS_CSV = """Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
POST,/assess [dicom],8,1,2400,2704.3,676.0,4073.2,38491.3,0.4,0.05,2400,3500,4000,4000,4000,4100,4100,4100,4100,4100,4100
POST,/assess [png multipart],2,0,1400,1184.5,675.8,1617.1,38645.6,0.1,0.0,1400,1500,1500,1500,1600,1600,1600,1600,1600,1600,1600
POST,/assess [bad: text/plain],1,0,3,3.0,3.0,3.0,120.0,0.05,0.0,3,3,3,3,3,3,3,3,3,3,3
,Aggregated,11,1,1600,1893.4,3.0,4073.2,33784.8,0.55,0.05,1600,2100,2400,3400,4000,4000,4100,4100,4100,4100,4100
"""

STATUSES = {
    "counts": {
        "/assess [dicom]": {"200": 7, "503": 1},
        "/assess [png multipart]": {"200": 2},
        "/assess [bad: text/plain]": {"415": 1},
    },
    "samples": {
        "/assess [dicom]": [["200", float(ms)] for ms in (100, 200, 300, 400, 500, 600, 700)] + [["503", 5.0]],
        "/assess [png multipart]": [["200", 800.0], ["200", 900.0]],
        "/assess [bad: text/plain]": [["415", 3.0]],
    },
}


def test_parse_locust_stats_rows():
    rows = parse_locust_stats(STATS_CSV)
    assert [r["name"] for r in rows] == [
        "/assess [dicom]",
        "/assess [png multipart]",
        "/assess [bad: text/plain]",
        "Aggregated",
    ]
    dicom = rows[0]
    assert (dicom["count"], dicom["failures"], dicom["p50_ms"], dicom["p95_ms"], dicom["p99_ms"]) == (
        8,
        1,
        2400,
        4100,
        4100,
    )
    assert rows[-1]["rps"] == 0.55


def test_summary_valid_traffic_errors_and_batches():
    summary = summarise(STATS_CSV, STATUSES, BEFORE, AFTER, {"max_batch_size": 8}, {"name": "steady"})
    assert summary["duration_s"] == 20.0  # 11 requests at 0.55/s
    valid = summary["valid"]
    assert valid["ok"] == 9  # 7 DICOM + 2 PNG answered 200; the 415 is a correct answer but not valid traffic
    assert valid["throughput_rps"] == pytest.approx(0.45)
    assert valid["p50_ms"] == 500.0  # nearest rank over the nine 200 answers: 100…700, 800, 900
    assert valid["p99_ms"] == 900.0
    assert summary["statuses"] == {"200": 9, "415": 1, "503": 1}
    assert summary["unexpected_statuses"] == {"503": 1}  # the bad input's 415 is expected
    assert summary["server"]["mean_batch_size"] == 3.0
    table = markdown(summary)
    assert "| 0.45 | 500 | 900 | 900 | 11 |" in table
    assert "| /assess [dicom] | 8 | 1 | 2400 | 4100 | 4100 | 200: 7, 503: 1 |" in table


def test_profile_report_groups_threads_by_role():
    raw = "\n".join(
        [
            "thread (1): normgate-decode_0;_worker (concurrent/futures/thread.py:83);"
            "Assessor._decode_and_prepare (service/serving/assessment.py:70);_min_max (models/imaging/decode.py:790) 30",
            "thread (2): normgate-model-default;serve_forever (service/serving/batching.py:183);"
            "ModelRunner.run (service/serving/worker.py:141) 60",
            "thread (3): MainThread;BaseEventLoop.run_forever (asyncio/base_events.py:607) 10",
        ]
    )
    text = report(raw)
    assert text.startswith("100 samples")
    assert "## model worker: 60 samples (60.0 % of all)" in text
    assert "## decode pool: 30 samples (30.0 % of all)" in text
    assert "100.0 %  _min_max (models/imaging/decode.py)" in text
    assert "## event loop: 10 samples" in text


def test_batching_study_grid_and_table():
    from benchmarks.batching_study import cells
    from benchmarks.batching_study import markdown as study_markdown

    grid = cells([0, 2, 5], [1, 4, 8])
    assert grid[0] == (1, 0) and len(grid) == 1 + 2 * 3  # max batch 1 ignores the wait
    results = {
        "loads": [2.0],
        "image": "png 64x64",
        "seconds": 1,
        "cells": [
            {
                "load_rps": 2.0,
                "max_batch": 4,
                "wait_ms": 5.0,
                "throughput_rps": 1.9,
                "p50_ms": 10.0,
                "p99_ms": 20.0,
                "mean_batch": 1.5,
                "statuses": {"200": 19, "504": 1},
            }
        ],
    }
    assert "| 4 | 5 | 1.9 | 10.0 | 20.0 | 1.5 | {'504': 1} |" in study_markdown(results)


def test_floor_at_a_fractional_mean_batch_size():
    from benchmarks.diy_comparison import floor_at

    floor = {1: 100.0, 2: 180.0, 3: 260.0, 4: 350.0}
    assert floor_at(floor, 1.0) == 100.0
    assert floor_at(floor, 1.75) == pytest.approx(160.0)  # 100 + 0.75 × 80
    assert floor_at(floor, 3.5) == pytest.approx(305.0)
    assert floor_at(floor, 4.0) == pytest.approx(350.0)  # the last interval's end, not past the table
