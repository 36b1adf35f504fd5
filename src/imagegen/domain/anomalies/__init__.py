"""Anomaly detection for the weekly report: a period against the weeks before it. Pure rules.

`detect` runs every rule (volume.py, spend.py, mix.py, failures.py) over series of the weeks'
metrics (series.py, with the statistics of stats.py) and returns one finding per cause, with the
operators' marks applied (marks.py). docs/reports.md describes the method.
"""

from imagegen.domain.anomalies.detector import Detection, detect
from imagegen.domain.anomalies.findings import SEVERITY_RANK, Anomaly, Mark, Severity
from imagegen.domain.anomalies.marks import mark, marks_in, withhold
from imagegen.domain.anomalies.stats import MAD_SCALE
from imagegen.domain.anomalies.thresholds import DEFAULT_THRESHOLDS, Thresholds

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MAD_SCALE",
    "SEVERITY_RANK",
    "Anomaly",
    "Detection",
    "Mark",
    "Severity",
    "Thresholds",
    "detect",
    "mark",
    "marks_in",
    "withhold",
]
