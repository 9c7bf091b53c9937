"""Per-image results written as they are computed, and read back to resume a run.

Two formats, by the file's suffix: ``.jsonl`` (JSON Lines, one ``Result.to_dict()`` per line:
every field) or CSV (anything else: the predictions table, :data:`COLUMNS` then ``p_<class>``
probabilities and ``spikes_<class>`` output counts). Each chunk of results is appended with one
write, flushed and synced, so an interrupted run (Ctrl-C, a killed process, a full disk) keeps
every chunk written before; a last line cut short is dropped when the file is read back. Numbers
are written with Python's shortest round-trip form, so a resumed run's metrics equal an
uninterrupted run's exactly.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from lava_allnet.errors import AllnetError, DataError
from lava_allnet.result import Result

COLUMNS = ("path", "label", "prediction", "correct", "confidence", "abstain", "out_of_distribution", "ood_score")


def header(class_names: Sequence[str]) -> list[str]:
    return [*COLUMNS, *[f"p_{c}" for c in class_names], *[f"spikes_{c}" for c in class_names]]


def _cell(v):
    return "" if v is None else int(v) if isinstance(v, bool) else v


def csv_row(r: Result, class_names: Sequence[str]) -> list:
    probs = r.probabilities or {}
    return [r.path, r.label or "", r.prediction, _cell(r.correct), _cell(r.confidence), _cell(r.abstain),
            _cell(r.out_of_distribution), _cell(r.ood_score), *[_cell(probs.get(c)) for c in class_names],
            *[r.class_counts[c] for c in class_names]]


def write_csv(results: Iterable[Result], class_names: Sequence[str], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header(class_names))
        w.writerows(csv_row(r, class_names) for r in results)
    return path


def _from_csv(row: dict[str, str], class_names: Sequence[str]) -> Result:
    def opt(key: str, kind):
        v = row.get(key, "")
        return None if v == "" else kind(v)

    flag = lambda v: bool(int(v))  # noqa: E731
    probs = None if row.get(f"p_{class_names[0]}", "") == "" else {c: float(row[f"p_{c}"]) for c in class_names}
    return Result(path=row["path"], prediction=row["prediction"], predicted_index=list(class_names).index(row["prediction"]),
                  class_counts={c: int(row[f"spikes_{c}"]) for c in class_names}, layer_counts={},
                  label=row["label"] or None, probabilities=probs, confidence=opt("confidence", float),
                  abstain=opt("abstain", flag), out_of_distribution=opt("out_of_distribution", flag),
                  ood_score=opt("ood_score", float))


def _from_json(d: dict) -> Result:
    d = dict(d)
    d.pop("correct", None)
    return Result(**d)


class ResultsFile:
    """Append-only results of one run. ``resume=True`` reads what an earlier run of the same
    command wrote (its ``done`` results) and appends after it; otherwise the file starts anew."""

    def __init__(self, path: str | os.PathLike, class_names: Sequence[str], resume: bool = False) -> None:
        self.path = Path(path)
        self.class_names = list(class_names)
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.done: list[Result] = []
        if not self.path.parent.is_dir():
            raise AllnetError(f"{self.path.parent}: no such folder for the results file")
        if resume and self.path.exists():
            self.done = self._read()
        else:
            self._write("" if self.jsonl else self._csv_text([header(self.class_names)]), mode="w")

    @property
    def done_paths(self) -> set[str]:
        return {r.path for r in self.done}

    def _csv_text(self, rows: list[list]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue()

    def _read(self) -> list[Result]:
        text = self.path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]  # a last line cut short (killed mid-write) is dropped
        if complete != text:
            with open(self.path, "r+", encoding="utf-8") as fh:
                fh.truncate(len(complete.encode("utf-8")))
        try:
            if self.jsonl:
                return [_from_json(json.loads(line)) for line in complete.splitlines() if line.strip()]
            first = next(csv.reader(io.StringIO(complete)), None)
            if first is None:  # created, nothing written yet
                self._write(self._csv_text([header(self.class_names)]), mode="w")
                return []
            if first != header(self.class_names):
                raise ValueError("its columns are not this model's")
            return [_from_csv(r, self.class_names) for r in csv.DictReader(io.StringIO(complete))]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{self.path}: cannot resume from it ({type(exc).__name__}: {exc}); "
                            "is it the results file of this command and model?") from exc

    def append(self, results: Sequence[Result]) -> None:
        if not results:
            return
        if self.jsonl:
            text = "".join(json.dumps(r.to_dict()) + "\n" for r in results)
        else:
            text = self._csv_text([csv_row(r, self.class_names) for r in results])
        self._write(text, mode="a")

    def _write(self, text: str, mode: str) -> None:
        try:
            with open(self.path, mode, encoding="utf-8", newline="") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise AllnetError(f"{self.path}: cannot write results ({exc.strerror or exc}); the results written "
                              "before are kept: free space and run again with --resume") from exc
