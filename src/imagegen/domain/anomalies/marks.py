"""Operators' marks: a finding marked expected is kept on its report, and the same pattern (the
same metric, key and direction) is withheld in the following weeks while it does not grow."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from imagegen.domain.anomalies.findings import Anomaly, Mark
from imagegen.domain.anomalies.thresholds import Thresholds


def mark(finding: Anomaly, report_id: str, marked_at: str, note: str) -> Anomaly:
    """The finding with an operator's mark; marking it again replaces the note."""
    kept = finding.mark if finding.mark is not None and finding.mark.report_id != report_id else None
    made = Mark(
        report_id=report_id,
        marked_at=marked_at,
        note=note,
        kind=finding.kind,
        metric=finding.metric,
        dimension=finding.dimension,
        key=finding.key,
        direction=finding.direction,
        gap=kept.gap if kept is not None else round(finding.gap, 4),
    )
    return replace(finding, mark=made)


def marks_in(document: Mapping[str, Any]) -> list[Mark]:
    """The marks a stored report holds: on its findings, and on those it withheld."""
    found = []
    for field in ("anomalies", "expectedAnomalies"):
        for finding in document.get(field) or ():
            if isinstance(finding, Mapping) and isinstance(finding.get("mark"), Mapping):
                found.append(Mark.from_dict(finding["mark"]))
    return found


def _matching(finding: Anomaly, marks: Iterable[Mark]) -> Mark | None:
    for candidate in marks:
        same = (candidate.metric, candidate.dimension, candidate.key) == finding.identity
        if same and candidate.direction == finding.direction:
            return candidate
    return None


def withhold(
    findings: Sequence[Anomaly], marks: Sequence[Mark], report_id: str | None, t: Thresholds
) -> tuple[list[Anomaly], list[Anomaly]]:
    """(alarms, expected): a finding matching a mark made on an earlier report is withheld unless its
    gap grew by more than `growth_margin`; a mark made on this report (a re-run) stays on its
    finding, which stays an alarm."""
    own = [m for m in marks if m.report_id == report_id]
    earlier = [m for m in marks if m.report_id != report_id]
    alarms, expected = [], []
    for finding in findings:
        mine = _matching(finding, own)
        if mine is not None:
            alarms.append(replace(finding, mark=mine))
            continue
        carried = _matching(finding, earlier)
        if carried is None:
            alarms.append(finding)
        elif finding.gap <= carried.gap * (1 + t.growth_margin):
            expected.append(replace(finding, mark=carried))
        else:
            grown = f"; it has grown beyond the pattern marked expected in {carried.report_id}"
            alarms.append(replace(finding, message=finding.message + grown))
    return alarms, expected
