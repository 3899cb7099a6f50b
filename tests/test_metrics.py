"""The accuracy matrix and its derived metrics (docs/design.md §2), checked against numbers worked out by hand."""

from __future__ import annotations

import csv
import json

import pytest

from moram.metrics import (
    CSV_NAME,
    HEATMAP_NAME,
    JSON_NAME,
    AccuracyMatrix,
    format_table,
    save_all,
    scalar_metrics,
    summary,
)

NAMES = ["aircraft", "caltech", "dtd"]
ZERO_SHOT = [50.0, 30.0, 20.0]
ROWS = [
    [80.0, 40.0, 25.0],  # after aircraft
    [70.0, 90.0, 35.0],  # after caltech
    [60.0, 85.0, 95.0],  # after dtd
]


def full() -> AccuracyMatrix:
    return AccuracyMatrix(NAMES, [list(r) for r in ROWS], list(ZERO_SHOT))


def test_full_matrix_every_metric():
    s = summary(full())
    # Transfer: aircraft has none; caltech R[1,2] = 40; dtd mean(R[1,3], R[2,3]) = (25 + 35) / 2 = 30
    assert s["transfer"]["per_task"] == {"aircraft": None, "caltech": 40.0, "dtd": 30.0}
    assert s["transfer"]["mean"] == pytest.approx(35.0)  # (40 + 30) / 2, the first task left out
    # Average: column means over the three rows: 210/3, 215/3, 155/3; mean 580/9
    assert s["average"]["per_task"] == pytest.approx({"aircraft": 70.0, "caltech": 215 / 3, "dtd": 155 / 3})
    assert s["average"]["mean"] == pytest.approx(580 / 9)
    # Last: the final row; mean 240/3
    assert s["last"]["per_task"] == {"aircraft": 60.0, "caltech": 85.0, "dtd": 95.0}
    assert s["last"]["mean"] == pytest.approx(80.0)
    assert s["acc"] == pytest.approx(80.0)
    assert s["op"] == pytest.approx(80.0)
    # BWT: ((60 - 80) + (85 - 90)) / 2, the last task excluded
    assert s["bwt"] == pytest.approx(-12.5)
    # FWT: ((R[1,2] - zs2) + (R[2,3] - zs3)) / 2 = ((40 - 30) + (35 - 20)) / 2
    assert s["fwt"] == pytest.approx(12.5)
    # forgetting: (max(80, 70) - 60 + max(40, 90) - 85) / 2 = (20 + 5) / 2
    assert s["forgetting"] == pytest.approx(12.5)
    # TRACE BWT, a magnitude over all three tasks: (20 + 5 + 0) / 3
    assert s["trace_bwt"] == pytest.approx(25 / 3)
    assert s["task_names"] == NAMES
    assert s["zero_shot"] == ZERO_SHOT
    assert s["matrix"] == ROWS
    assert (s["num_tasks"], s["num_trained"]) == (3, 3)


def test_gains_do_not_offset_losses_in_trace_bwt():
    rows = [list(r) for r in ROWS[:2]] + [[60.0, 95.0, 95.0]]  # aircraft lost 20, caltech gained 5
    s = summary(AccuracyMatrix(NAMES, rows, ZERO_SHOT))
    assert s["bwt"] == pytest.approx(-7.5)  # (-20 + 5) / 2
    assert s["trace_bwt"] == pytest.approx(20 / 3)  # (20 + 0 + 0) / 3
    assert s["forgetting"] == pytest.approx(7.5)  # ((80 - 60) + (90 - 95)) / 2


def test_no_forgetting_gives_zero_trace_bwt():
    rows = [list(r) for r in ROWS[:2]] + [[85.0, 95.0, 95.0]]
    s = summary(AccuracyMatrix(NAMES, rows, ZERO_SHOT))
    assert s["trace_bwt"] == 0.0
    assert s["bwt"] == pytest.approx(5.0)
    assert s["forgetting"] == pytest.approx(-5.0)  # (80 - 85 + 90 - 95) / 2


def test_zero_shot_row_is_not_part_of_transfer_average_or_last():
    with_zs = summary(full())
    other_zs = summary(AccuracyMatrix(NAMES, ROWS, [0.0, 100.0, 0.0]))
    without = summary(AccuracyMatrix(NAMES, ROWS))
    for key in ("transfer", "average", "last", "acc", "bwt", "forgetting", "op", "trace_bwt"):
        assert with_zs[key] == other_zs[key] == without[key], key
    assert without["fwt"] is None
    assert without["zero_shot"] is None


def test_partial_matrix_two_rows():
    s = summary(AccuracyMatrix(NAMES, ROWS[:2], ZERO_SHOT))
    assert s["num_trained"] == 2
    assert s["transfer"]["per_task"] == {"aircraft": None, "caltech": 40.0, "dtd": 30.0}
    assert s["average"]["per_task"] == pytest.approx({"aircraft": 75.0, "caltech": 65.0, "dtd": 30.0})
    assert s["average"]["mean"] == pytest.approx(170 / 3)
    assert s["last"]["mean"] == pytest.approx(65.0)  # (70 + 90 + 35) / 3: every task
    assert s["acc"] == s["op"] == pytest.approx(80.0)  # (70 + 90) / 2: the two trained tasks
    assert s["bwt"] == pytest.approx(-10.0)  # 70 - 80
    assert s["fwt"] == pytest.approx(12.5)  # R[2,3] exists already: ((40 - 30) + (35 - 20)) / 2
    assert s["forgetting"] == pytest.approx(10.0)  # 80 - 70
    assert s["trace_bwt"] == pytest.approx(5.0)  # (10 + 0) / 2


def test_partial_matrix_one_row():
    s = summary(AccuracyMatrix(NAMES, ROWS[:1], ZERO_SHOT))
    assert s["transfer"]["per_task"] == {"aircraft": None, "caltech": 40.0, "dtd": 25.0}
    assert s["transfer"]["mean"] == pytest.approx(32.5)
    assert s["last"]["mean"] == pytest.approx(145 / 3)
    assert s["acc"] == pytest.approx(80.0)
    assert s["bwt"] is None
    assert s["forgetting"] is None
    assert s["fwt"] == pytest.approx(10.0)  # only caltech: 40 - 30
    assert s["trace_bwt"] == 0.0


def test_only_zero_shot_row():
    s = summary(AccuracyMatrix(NAMES, [], ZERO_SHOT))
    assert s["matrix"] == []
    for key in ("transfer", "average", "last"):
        assert s[key]["mean"] is None
        assert set(s[key]["per_task"].values()) == {None}
    for key in ("acc", "bwt", "fwt", "forgetting", "op", "trace_bwt"):
        assert s[key] is None
    assert scalar_metrics(s) == {}
    json.dumps(s, allow_nan=False)


def test_scalar_metrics_are_the_means_and_scalars():
    scalars = scalar_metrics(summary(full()))
    assert scalars == pytest.approx(
        {
            "transfer": 35.0,
            "average": 580 / 9,
            "last": 80.0,
            "acc": 80.0,
            "bwt": -12.5,
            "fwt": 12.5,
            "forgetting": 12.5,
            "op": 80.0,
            "trace_bwt": 25 / 3,
        }
    )
    assert "fwt" not in scalar_metrics(summary(AccuracyMatrix(NAMES, ROWS)))


@pytest.mark.parametrize(
    ("rows", "zero_shot", "match"),
    [
        ([[1.0, 2.0]], None, r"rows\[0\] has 2 scores"),
        (ROWS + [ROWS[0]], None, "4 rows for 3 tasks"),
        (ROWS, [1.0], "zero_shot has 1 scores"),
    ],
)
def test_malformed_matrix_is_rejected(rows, zero_shot, match):
    with pytest.raises(ValueError, match=match):
        AccuracyMatrix(NAMES, rows, zero_shot)


def test_task_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        AccuracyMatrix(["a", "a"], [])


def test_files_round_trip(tmp_path):
    m = full()
    paths = save_all(tmp_path, m)
    assert paths == {"json": tmp_path / JSON_NAME, "csv": tmp_path / CSV_NAME, "heatmap": tmp_path / HEATMAP_NAME}
    loaded = json.loads(paths["json"].read_text())
    assert loaded == json.loads(json.dumps(summary(m)))
    assert AccuracyMatrix.from_dict(loaded) == m
    with paths["csv"].open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["row", *NAMES]
    assert [r[0] for r in table[1:]] == ["zero-shot", "after aircraft", "after caltech", "after dtd"]
    assert [float(v) for v in table[2][1:]] == ROWS[0]
    assert paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_heatmap_of_an_empty_matrix(tmp_path):
    paths = save_all(tmp_path, AccuracyMatrix(NAMES, []))
    assert paths["heatmap"].stat().st_size > 0


def test_format_table_shows_matrix_and_metrics():
    text = format_table(summary(full()))
    lines = text.splitlines()
    assert lines[0].split() == ["row", *NAMES, "mean"]
    assert lines[1].split() == ["zero-shot", "50.00", "30.00", "20.00", "33.33"]
    assert lines[4].split() == ["after", "dtd", "60.00", "85.00", "95.00", "80.00"]
    assert lines[6].split() == ["Transfer", "-", "40.00", "30.00", "35.00"]
    assert lines[-1] == "ACC 80.00 | BWT -12.50 | FWT 12.50 | forgetting 12.50 | OP 80.00 | TRACE BWT 8.33"


def test_docstring_examples_run():
    import doctest

    import moram.metrics

    assert doctest.testmod(moram.metrics).failed == 0
