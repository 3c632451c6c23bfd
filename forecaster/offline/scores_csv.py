"""scores.csv: one row per scored frame, written while a replay runs, and read back."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, TextIO

from forecaster.protocol import Score

CSV_COLUMNS = ("camera", "seq", "ts", "mse", "psnr", "score", "anomaly")


class ScoresWriter:
    """scores.csv, written row by row while the replay runs."""

    def __init__(self, path: Path, with_labels: bool) -> None:
        self.with_labels = with_labels
        self._file: TextIO = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow((*CSV_COLUMNS, "label") if with_labels else CSV_COLUMNS)

    def write(self, camera: str, score: Score, label: int | None) -> None:
        row: list[object] = [camera, score.seq, repr(score.ts), repr(score.mse), repr(score.psnr),
                             repr(score.score), int(score.anomaly)]
        if self.with_labels:
            row.append("" if label is None else int(label))
        self._csv.writerow(row)

    def close(self) -> None:
        self._file.close()


def read_scores_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a scores.csv with typed values (label None where absent)."""
    rows = []
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            label = row.get("label")
            rows.append({
                "camera": row["camera"],
                "seq": int(row["seq"]),
                "ts": float(row["ts"]),
                "mse": float(row["mse"]),
                "psnr": float(row["psnr"]),
                "score": float(row["score"]),
                "anomaly": row["anomaly"] == "1",
                "label": int(label) if label not in (None, "") else None,
            })
    return rows
