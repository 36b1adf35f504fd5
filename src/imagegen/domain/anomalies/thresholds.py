"""When a difference from the baseline is an anomaly: every number the detector uses, with why.

Rates are in percent and their changes in points; volumes and credits compare as ratios. A finding
needs a change that is unusual for this history (a robust z-score) and big enough to matter (a
practical minimum); the case study's own rules (3x, 10 points, 15 points) make it a warning.
docs/reports.md explains each choice; bench/anomalies.py and bench/weekly_review.py measure them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    # -- volume guards -------------------------------------------------------------------------
    min_requests: int = 50
    """Requests in the period (for a drop: the baseline level) before volume, credit, mix and
    success-rate rules apply, so that 1 -> 4 requests is not an alarm."""
    min_key_requests: int = 30
    """Finished requests of a model, style, size or color in the period before its failure rate is
    judged."""
    min_share: float = 2.0
    """A key below this share of its dimension (percent), now and in its baseline, is not judged on
    its share: a rare key's share moves by chance."""
    # -- history -------------------------------------------------------------------------------
    min_baseline_weeks: int = 3
    """Weeks of history needed before any rule applies; with fewer, `detect` only adds a note."""
    recent_weeks: int = 8
    """The one-week rules compare the period with the median of this many preceding weeks."""
    level_weeks: int = 3
    """Requests and credits follow the seasons: they are compared with the median of this many
    preceding weeks (their level), and their spread is how far a week usually strays from it."""
    monitor_weeks: int = 6
    """The sustained rules (drifts, level shifts) look at this many weeks, the period included,
    against the weeks before them (the reference), which a slow drift has not reached yet."""
    min_reference_weeks: int = 3
    """Reference weeks with data needed before a series is judged for a drift or a level shift."""
    # -- the case study's rules (a finding from them is at least a warning) ---------------------
    spike_ratio: float = 3.0
    """Requests or credits above this many times their level are a spike (the case study's >3x)."""
    drop_ratio: float = 0.5
    """Requests below this fraction of their level are a drop (the case study had no drop rule)."""
    success_rate_drop: float = 10.0
    """Points below the baseline success rate."""
    failure_rate_jump: float = 15.0
    """Points above the baseline failure rate of one model, style, size or color."""
    share_shift: float = 15.0
    """Points of a dimension's requests moving to or from one key (a warning; no case-study rule)."""
    credit_shift: float = 0.30
    """Relative change in credits per completed request (a warning; no case-study rule)."""
    # -- unusual for this history ---------------------------------------------------------------
    robust_z: float = 4.5
    """Robust z-score, (observed - median) / (1.4826 * MAD), from which a week is unusual."""
    sustained_z: float = 5.0
    """The z-score of a sustained change's recent level (two weeks pooled) against the reference."""
    rule_z: float = 3.0
    """Even a case-study rule needs the change to stand this many robust standard deviations out:
    15 points on a key with 30 requests is within its chance."""
    critical_z: float = 7.0
    """Robust z-score from which a case-study rule's finding is critical rather than a warning."""
    # -- big enough to matter -------------------------------------------------------------------
    min_volume_ratio: float = 2.0
    """Requests or credits at least this many times their level (or at most 1/x, for a drop) before
    a change is reported below the case study's rules."""
    min_failure_rise: float = 5.0
    """Points a key's failure rate must rise."""
    min_success_drop: float = 4.0
    """Points the overall success rate must fall."""
    min_share_shift: float = 7.0
    """Points of its dimension a key's share must move."""
    min_credit_shift: float = 0.10
    """Relative change in credits per completed request."""
    # -- spread floors --------------------------------------------------------------------------
    volume_floor: float = 0.10
    """Least spread assumed for requests and credits around their level, as a log ratio (about
    10 %), so that a perfectly regular history does not make every small change an anomaly."""
    rate_floor: float = 1.0
    """Least spread assumed for a rate, in points (the binomial spread of the period's requests is
    a floor too)."""
    share_floor: float = 1.5
    """Least spread assumed for a key's share, in points."""
    credit_floor: float = 0.02
    """Least spread assumed for credits per completed request, as a log ratio (about 2 %)."""
    # -- operators' marks -----------------------------------------------------------------------
    growth_margin: float = 0.25
    """A finding like one an operator marked expected is alarmed again only when its gap from the
    baseline is this much larger (relative) than the marked one's."""

    def __post_init__(self) -> None:
        if self.spike_ratio <= 1 or self.min_volume_ratio <= 1:
            raise ValueError("spike_ratio and min_volume_ratio must be above 1")
        if not 0 < self.drop_ratio < 1:
            raise ValueError("drop_ratio must be between 0 and 1")
        positive = (
            self.robust_z,
            self.sustained_z,
            self.rule_z,
            self.critical_z,
            self.volume_floor,
            self.rate_floor,
            self.share_floor,
            self.credit_floor,
            self.min_credit_shift,
            self.credit_shift,
        )
        if min(positive) <= 0:
            raise ValueError("z-scores, spread floors and credit shifts must be positive")
        if min(self.min_failure_rise, self.min_success_drop, self.min_share_shift, self.min_share) < 0:
            raise ValueError("practical minimums cannot be negative")
        weeks = (
            self.min_requests,
            self.min_baseline_weeks,
            self.min_key_requests,
            self.recent_weeks,
            self.level_weeks,
            self.min_reference_weeks,
        )
        if min(weeks) < 1 or self.monitor_weeks < 2:
            raise ValueError("volume guards and week counts must be >= 1 (monitor_weeks >= 2)")
        if self.growth_margin < 0:
            raise ValueError("growth_margin cannot be negative")


DEFAULT_THRESHOLDS = Thresholds()
