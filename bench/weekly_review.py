"""What a weekly review must not miss: the anomaly detector scored on a second, independent generator.

    .venv/bin/python -m bench.weekly_review [--scenarios 72 --weeks 40 --seed 11 --requests 5000]

Written apart from bench/anomalies.py (which imports JSONL through SQLite): here each scenario's
weeks are drawn as the GROUP BY rows the storage hands to `reports.summarize`, so thousands of
weeks are scored in seconds, and every week is judged by `reports.detect` against the preceding
`service.BASELINE_WEEKS` weeks, as `service.run_report` does. Beside it, on the same weeks, the
case study's own rules: this week against the previous week only (`previous_week_rules`).

Normal traffic (a "world" per scenario, drawn from its seed):
- requests per week: a base volume, a slow trend, a seasonal wave (amplitude 10-35 %, period 9-17
  weeks, random phase) and week-to-week noise (lognormal, sigma 0.07), then Poisson-like draws;
- the mix: shares of every model, style, size and color wander slowly (a mean-reverting random
  walk), each request drawing its four keys independently; a rare style (~0.6 %) and a rare color
  (~1 %) always exist; one model always fails more than the others (1.5-2.5x);
- failures: a base probability (4-6 %) that wobbles weekly, times a fixed multiplier per key;
  a few requests are canceled; sizes cost their price in credits.

Positive classes, each injected at three strengths (see STRENGTHS), on keys with at least 8 % of
their dimension's traffic:
- request_spike / request_drop: one week at x3, x4.5, x7 / x0.3, x0.15, x0.03 of its normal volume;
- volume_level_shift: the volume steps to x2.5, x3.5, x5 and stays there for 5 weeks;
- spend_mix: one week where the size mix moves towards the dearest size so that credits per
  request rise 25, 40 or 60 %, the number of requests staying normal (a mix-driven spend spike);
- credit_per_request: 4 weeks where every request is charged +20 %, +35 % or -25 %, the mix
  unchanged (a price or billing change);
- share_shift: 2 weeks where one size, model or style gains 12, 20 or 30 points of its dimension;
- mix_to_failing_key: over 3 weeks the model that always fails more gains 25, 35 or 45 points, so
  the overall failure rate rises although no key fails more than usual;
- success_rate_drop: one week where every request fails 6, 10 or 20 points more;
- failure_rate_jump: one week where one model, style, size or color fails 10, 20 or 35 points more;
- failure_drift: one key's failure rate climbs 1.5, 2.5 or 4 points a week for 8, 6 or 5 weeks;
- failure_level_shift: one key fails 6, 9 or 13 points more for 5 weeks.

Hard negatives (weeks tagged, every false alarm is reported with the tags of its week, which also
name the events of that week):
- season: the wave itself, on every scenario, and an ordinary busy or quiet week (x1.45, x0.72);
- rebound: the week after a one-week event (after a drop, a catch-up week at x1.25);
- rare_key: the rare style and color are there every week, with the failure rates a few dozen
  requests show by chance; in some weeks one of them triples (to 2-3 % of its dimension);
- failing_mix: the mix_to_failing_key weeks (the total failure rate must not be the finding);
- secondary: the weeks of a failing key (no finding on the totals, the spend or other dimensions);
- new_key: a new style or a new, dearer size (6 credits) appears and ramps up to 12-18 % in 5 weeks.

Scoring. An alarm is a detector's finding reduced to its identity: (family, dimension, key) where
the family is volume up/down, spend up/down, share, success or failure; findings of one identity in
one week are one alarm. An event is detected when an alarm of its identity comes in one of its
weeks (true positive: the first one; later ones are repeats, neither true nor false); some alarms
are allowed because the event made them true by construction (the other keys of a moved
dimension, the spend of a size shift, an event's own identity or its reversal in the two weeks
after a sustained event): counted, neither true nor false. Every other alarm is false, and counts
against the class it claims. Recall = detected events / events; precision = true / (true + false).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from imagegen import service
from imagegen.domain import reports
from imagegen.domain.reports import GroupCount, Metrics

DIMENSIONS = ("model", "style", "size", "color")
FIRST_MONDAY = datetime(2024, 1, 1, tzinfo=UTC)  # 2024-W01

# ---------------------------------------------------------------------------------------------
# Classes, strengths and hard negatives
# ---------------------------------------------------------------------------------------------

REQUEST_SPIKE = "request_spike"
REQUEST_DROP = "request_drop"
VOLUME_LEVEL_SHIFT = "volume_level_shift"
SPEND_MIX = "spend_mix"
CREDIT_PER_REQUEST = "credit_per_request"
SHARE_SHIFT = "share_shift"
MIX_TO_FAILING_KEY = "mix_to_failing_key"
SUCCESS_RATE_DROP = "success_rate_drop"
FAILURE_RATE_JUMP = "failure_rate_jump"
FAILURE_DRIFT = "failure_drift"
FAILURE_LEVEL_SHIFT = "failure_level_shift"

# class -> its strengths; a strength is (label, value): a volume factor, a credit factor,
# points of share or failure (a drift: points a week and weeks).
STRENGTHS: dict[str, tuple[tuple[str, Any], ...]] = {
    REQUEST_SPIKE: (("x3", 3.0), ("x4.5", 4.5), ("x7", 7.0)),
    REQUEST_DROP: (("x0.3", 0.3), ("x0.15", 0.15), ("x0.03", 0.03)),
    VOLUME_LEVEL_SHIFT: (("x2.5", 2.5), ("x3.5", 3.5), ("x5", 5.0)),
    SPEND_MIX: (("+25%", 1.25), ("+40%", 1.40), ("+60%", 1.60)),
    CREDIT_PER_REQUEST: (("+20%", 1.20), ("+35%", 1.35), ("-25%", 0.75)),
    SHARE_SHIFT: (("+12 pts", 12.0), ("+20 pts", 20.0), ("+30 pts", 30.0)),
    MIX_TO_FAILING_KEY: (("+25 pts", 25.0), ("+35 pts", 35.0), ("+45 pts", 45.0)),
    SUCCESS_RATE_DROP: (("+6 pts", 6.0), ("+10 pts", 10.0), ("+20 pts", 20.0)),
    FAILURE_RATE_JUMP: (("+10 pts", 10.0), ("+20 pts", 20.0), ("+35 pts", 35.0)),
    FAILURE_DRIFT: (("1.5 pts/wk x8", (1.5, 8)), ("2.5 pts/wk x6", (2.5, 6)), ("4 pts/wk x5", (4.0, 5))),
    FAILURE_LEVEL_SHIFT: (("+6 pts", 6.0), ("+9 pts", 9.0), ("+13 pts", 13.0)),
}
CLASSES = tuple(STRENGTHS)
SHARE_DIMENSIONS = ("size", "model", "style")
TAIL_WEEKS = 2  # after a sustained event: its own identity and its reversal are allowed
GAP_WEEKS = 2  # normal weeks after every event before the next one

SEASON = "season"
REBOUND = "rebound"
RARE_KEY = "rare_key"
FAILING_MIX = "failing_mix"
SECONDARY = "secondary"
NEW_KEY = "new_key"
HARD_NEGATIVES = (SEASON, REBOUND, RARE_KEY, FAILING_MIX, SECONDARY, NEW_KEY)

# ---------------------------------------------------------------------------------------------
# A scenario's world: its keys, their shares and failure multipliers, its seasons
# ---------------------------------------------------------------------------------------------

PRICES = {"512x512": 1, "1024x1024": 3, "1024x1792": 4}
NEW_SIZE, NEW_SIZE_PRICE = "2048x2048", 6
NEW_STYLE = "ukiyo-e"
RARE_STYLE, RARE_COLOR = "pixel art", "sepia"
CATALOG = {
    "model": {"model-a": 0.55, "model-b": 0.30, "model-c": 0.15},
    "style": {
        "realistic": 0.24,
        "anime": 0.22,
        "oil painting": 0.13,
        "sketch": 0.12,
        "cyberpunk": 0.16,
        "watercolor": 0.13,
        RARE_STYLE: 0.006,
    },
    "size": {"512x512": 0.50, "1024x1024": 0.35, "1024x1792": 0.15},
    "color": {
        "vibrant": 0.28,
        "monochrome": 0.16,
        "pastel": 0.20,
        "neon": 0.20,
        "vintage": 0.15,
        RARE_COLOR: 0.01,
    },
}


@dataclass
class World:
    """A scenario's normal traffic. Shares are per dimension, in 0-1, before the events."""

    requests: float
    trend: float  # growth per week
    amplitude: float
    period: float
    phase: float
    base_failure: float
    shares: dict[str, dict[str, float]]
    multipliers: dict[tuple[str, str], float]  # (dimension, key) -> failure multiplier
    failing_model: str  # always fails more than the other models

    def season(self, week: int) -> float:
        wave = 1 + self.amplitude * math.sin(2 * math.pi * week / self.period + self.phase)
        return wave * (1 + self.trend) ** week


def draw_world(rng: random.Random, requests: int) -> World:
    shares: dict[str, dict[str, float]] = {}
    for dimension, keys in CATALOG.items():
        jittered = {key: share * rng.uniform(0.8, 1.25) for key, share in keys.items()}
        total = sum(jittered.values())
        shares[dimension] = {key: share / total for key, share in jittered.items()}
    multipliers = {
        (dimension, key): rng.uniform(0.75, 1.3) for dimension, keys in CATALOG.items() for key in keys
    }
    failing = rng.choice(["model-b", "model-c"])
    multipliers["model", failing] = rng.uniform(1.5, 2.5)
    return World(
        requests=requests * rng.uniform(0.8, 1.2),
        trend=rng.uniform(-0.008, 0.012),
        amplitude=rng.uniform(0.10, 0.35),
        period=rng.uniform(9, 17),
        phase=rng.uniform(0, 2 * math.pi),
        base_failure=rng.uniform(0.04, 0.06),
        shares=shares,
        multipliers=multipliers,
        failing_model=failing,
    )


# ---------------------------------------------------------------------------------------------
# What happens in a week: the normal plan, then each event changes it
# ---------------------------------------------------------------------------------------------


@dataclass
class WeekPlan:
    volume: float
    shares: dict[str, dict[str, float]]
    failure: float  # the week's base failure probability
    multipliers: dict[tuple[str, str], float]
    extra: dict[tuple[str, str] | None, float] = field(default_factory=dict)  # None: every request
    price_factor: float = 1.0
    prices: dict[str, float] = field(default_factory=lambda: dict(PRICES))
    tags: set[str] = field(default_factory=set)

    def failure_of(self, model: str, style: str, size: str, color: str) -> float:
        keys = (("model", model), ("style", style), ("size", size), ("color", color))
        p = self.failure
        for key in keys:
            p *= self.multipliers.get(key, 1.0)
        p += self.extra.get(None, 0.0) + sum(self.extra.get(key, 0.0) for key in keys)
        return min(max(p, 0.0), 0.97)


def move_share(shares: dict[str, float], key: str, target: float) -> dict[str, float]:
    """`key` gets `target` of the dimension; the other keys keep their proportions."""
    target = min(max(target, 0.0), 0.95)
    rest = 1 - shares[key]
    scale = (1 - target) / rest if rest > 0 else 0.0
    return {k: target if k == key else v * scale for k, v in shares.items()}


@dataclass(frozen=True)
class Identity:
    """What an alarm is about: family (volume_up, volume_down, spend_up, spend_down, share,
    success, failure), and the dimension and key for share and failure."""

    family: str
    dimension: str | None = None
    key: str | None = None

    def covers(self, other: Identity) -> bool:
        """A pattern with key "*" covers every key of its dimension."""
        if self.family != other.family or self.dimension != other.dimension:
            return False
        return self.key in ("*", other.key)

    def __str__(self) -> str:
        return self.family if self.dimension is None else f"{self.family} {self.dimension} '{self.key}'"


VOLUME_UP, VOLUME_DOWN = Identity("volume_up"), Identity("volume_down")
SPEND_UP, SPEND_DOWN = Identity("spend_up"), Identity("spend_down")
SUCCESS = Identity("success")


@dataclass(frozen=True)
class Event:
    """One injected anomaly: its class and strength, where it sits and what it touches."""

    cls: str
    strength: str
    value: Any
    start: int
    weeks: int
    dimension: str | None = None
    key: str | None = None

    @property
    def end(self) -> int:
        return self.start + self.weeks

    @property
    def sustained(self) -> bool:
        return self.weeks > 1

    @property
    def span(self) -> int:
        """Weeks it keeps from other events: its own, its tail (or rebound) and the gap."""
        return self.weeks + (TAIL_WEEKS if self.sustained else 1) + GAP_WEEKS

    @property
    def identity(self) -> Identity:
        if self.cls in (REQUEST_SPIKE, VOLUME_LEVEL_SHIFT):
            return VOLUME_UP
        if self.cls == REQUEST_DROP:
            return VOLUME_DOWN
        if self.cls == SPEND_MIX:
            return SPEND_UP
        if self.cls == CREDIT_PER_REQUEST:
            return SPEND_UP if self.value > 1 else SPEND_DOWN
        if self.cls == SUCCESS_RATE_DROP:
            return SUCCESS
        if self.cls in (SHARE_SHIFT, MIX_TO_FAILING_KEY):
            return Identity("share", self.dimension, self.key)
        return Identity("failure", self.dimension, self.key)

    def allowed(self, week: int) -> list[Identity]:
        """Alarms this event makes true by construction, in `week` (beyond its own identity)."""
        allowed = []
        if self.start <= week < self.end:
            if self.cls == SPEND_MIX or (self.cls == SHARE_SHIFT and self.dimension == "size"):
                allowed += [Identity("share", "size", "*"), SPEND_UP, SPEND_DOWN]
            if self.cls in (SHARE_SHIFT, MIX_TO_FAILING_KEY):
                allowed.append(Identity("share", self.dimension, "*"))
        if self.sustained and self.end <= week < self.end + TAIL_WEEKS:
            allowed += [self.identity, _reversed(self.identity)]
        return allowed

    def apply(self, plan: WeekPlan, week: int, world: World) -> None:
        if not self.start <= week < self.end:
            return
        step = week - self.start
        plan.tags.add(self.cls)
        if self.cls in (REQUEST_SPIKE, REQUEST_DROP, VOLUME_LEVEL_SHIFT):
            plan.volume *= self.value
        elif self.cls == SPEND_MIX:
            plan.shares["size"] = dearer_mix(plan.shares["size"], plan.prices, self.value)
        elif self.cls == CREDIT_PER_REQUEST:
            plan.price_factor *= self.value
        elif self.cls == SHARE_SHIFT:
            shares = plan.shares[str(self.dimension)]
            plan.shares[str(self.dimension)] = move_share(
                shares, str(self.key), shares[str(self.key)] + self.value / 100
            )
        elif self.cls == MIX_TO_FAILING_KEY:
            shares = plan.shares["model"]
            gained = self.value / 100 * min(1.0, (step + 1) / 2)  # over two weeks, then held
            plan.shares["model"] = move_share(shares, str(self.key), shares[str(self.key)] + gained)
            plan.tags.add(FAILING_MIX)
        elif self.cls == SUCCESS_RATE_DROP:
            plan.extra[None] = plan.extra.get(None, 0.0) + self.value / 100
        else:
            target = (str(self.dimension), str(self.key))
            if self.cls == FAILURE_DRIFT:
                per_week, _ = self.value
                added = per_week * (step + 1)
            else:
                added = self.value
            plan.extra[target] = plan.extra.get(target, 0.0) + added / 100
            plan.tags.add(SECONDARY)


def _reversed(identity: Identity) -> Identity:
    flips = {
        "volume_up": "volume_down",
        "volume_down": "volume_up",
        "spend_up": "spend_down",
        "spend_down": "spend_up",
    }
    return replace(identity, family=flips.get(identity.family, identity.family))


def dearer_mix(shares: dict[str, float], prices: Mapping[str, float], factor: float) -> dict[str, float]:
    """The size mix whose credits per request are `factor` times today's, moving requests from the
    cheaper sizes to the dearest one (what a client switching to large images does)."""
    known = {k: v for k, v in shares.items() if k in PRICES}
    dearest = max(known, key=lambda k: prices[k])
    now = sum(v * prices[k] for k, v in known.items())
    low, high = known[dearest], 0.95
    for _ in range(40):  # bisection: credits per request grow with the dearest size's share
        mid = (low + high) / 2
        moved = move_share(known, dearest, mid)
        if sum(v * prices[k] for k, v in moved.items()) < now * factor:
            low = mid
        else:
            high = mid
    return {**shares, **move_share(known, dearest, high)}


@dataclass(frozen=True)
class Negative:
    """A hard negative placed in some weeks: a busy or quiet week, a rare key's bad week, a new key."""

    tag: str
    start: int
    weeks: int
    kind: str  # "busy", "quiet", "rare style", "rare color", "new style", "new size"

    def apply(self, plan: WeekPlan, week: int) -> None:
        if not self.start <= week < self.start + self.weeks:
            return
        plan.tags.add(self.tag)
        if self.kind in ("busy", "quiet"):
            plan.volume *= 1.45 if self.kind == "busy" else 0.72
        elif self.kind in ("rare style", "rare color"):
            dimension, key = ("style", RARE_STYLE) if self.kind == "rare style" else ("color", RARE_COLOR)
            shares = plan.shares[dimension]
            plan.shares[dimension] = move_share(shares, key, shares[key] * 3)
        else:
            dimension, key = ("style", NEW_STYLE) if self.kind == "new style" else ("size", NEW_SIZE)
            ramp = (week - self.start + 1) / self.weeks
            shares = {**plan.shares[dimension], key: 0.0}
            plan.shares[dimension] = move_share(shares, key, self.target * ramp)

    @property
    def target(self) -> float:
        return 0.12 + 0.06 * (self.start % 2)


# ---------------------------------------------------------------------------------------------
# A scenario: its world, its events and negatives, and its weeks drawn as GROUP BY rows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    scenarios: int = 72
    weeks: int = 40
    seed: int = 11
    requests: int = 5000  # a week's requests, before the season and the noise
    warmup: int = service.BASELINE_WEEKS  # weeks not scored (the detector's full history)

    def __post_init__(self) -> None:
        if self.scenarios < 1 or self.requests < 100:
            raise ValueError("need at least one scenario and 100 requests a week")
        if self.warmup < 1 or self.weeks < self.warmup + 8:
            raise ValueError("need at least 8 scored weeks after the warm-up")


@dataclass
class Scenario:
    index: int
    seed: str
    weeks: int
    warmup: int
    world: World
    events: list[Event]
    negatives: list[Negative]
    new_key_after: str | None = None  # the key a new-key negative adds (once it exists, it stays)

    def period(self, week: int) -> reports.Period:
        return reports.week_of(FIRST_MONDAY + timedelta(weeks=week))


def plan_scenarios(config: Config) -> list[Scenario]:
    """Every (class, strength) in turn, spread over the scenarios; each scenario's weeks after its
    warm-up hold as many events as fit, in a random order, with the hard negatives between them."""
    combos = [(cls, label, value) for cls in CLASSES for label, value in STRENGTHS[cls]]
    order = random.Random(f"{config.seed}-order")
    queue: list[tuple[str, str, Any]] = []
    scenarios = []
    for index in range(config.scenarios):
        rng = random.Random(f"{config.seed}-{index}-plan")
        world = draw_world(rng, config.requests)
        negatives: list[Negative] = []
        events: list[Event] = []
        week = config.warmup + rng.randrange(2)
        if index % 2 == 0:  # half the scenarios see a new key appear (it blocks its weeks)
            kind = "new style" if index % 4 == 0 else "new size"
            negatives.append(Negative(NEW_KEY, week, 5, kind))
            week += 5 + GAP_WEEKS
        while True:
            if not queue:
                queue = combos[:]
                order.shuffle(queue)
            cls, label, value = queue[0]
            event = _place(rng, world, cls, label, value, week)
            if event.start + event.span > config.weeks:
                break
            queue.pop(0)
            events.append(event)
            week = event.start + event.span
            if rng.random() < 0.35 and week + 2 <= config.weeks:
                kind = rng.choice(["busy", "quiet", "rare style", "rare color"])
                negatives.append(Negative(SEASON if kind in ("busy", "quiet") else RARE_KEY, week, 1, kind))
                week += 2
        scenarios.append(
            Scenario(index, f"{config.seed}-{index}", config.weeks, config.warmup, world, events, negatives)
        )
    return scenarios


def _place(rng: random.Random, world: World, cls: str, label: str, value: Any, week: int) -> Event:
    weeks = {VOLUME_LEVEL_SHIFT: 5, CREDIT_PER_REQUEST: 4, SHARE_SHIFT: 2, MIX_TO_FAILING_KEY: 3}.get(cls, 1)
    if cls == FAILURE_DRIFT:
        weeks = value[1]
    if cls == FAILURE_LEVEL_SHIFT:
        weeks = 5
    dimension = key = None
    if cls == SHARE_SHIFT:
        dimension = rng.choice(SHARE_DIMENSIONS)
        key = _pick_key(rng, world, dimension, most=0.7 - value / 100)
    elif cls == MIX_TO_FAILING_KEY:
        dimension, key = "model", world.failing_model
    elif cls in (FAILURE_RATE_JUMP, FAILURE_DRIFT, FAILURE_LEVEL_SHIFT):
        dimension = rng.choice(DIMENSIONS)
        key = _pick_key(rng, world, dimension)
    return Event(cls, label, value, week + rng.randrange(2), weeks, dimension, key)


def _pick_key(rng: random.Random, world: World, dimension: str, most: float = 1.0) -> str:
    keys = [k for k, share in world.shares[dimension].items() if 0.08 <= share <= most]
    return rng.choice(sorted(keys))


def week_plan(
    scenario: Scenario, week: int, noise: float, wander: Mapping[str, Mapping[str, float]]
) -> WeekPlan:
    world = scenario.world
    shares = {
        d: _normalised({k: world.shares[d][k] * wander[d][k] for k in world.shares[d]}) for d in DIMENSIONS
    }
    plan = WeekPlan(
        volume=world.requests * world.season(week) * noise,
        shares=shares,
        failure=world.base_failure,
        multipliers=dict(world.multipliers),
    )
    plan.prices[NEW_SIZE] = NEW_SIZE_PRICE
    for negative in scenario.negatives:
        if negative.tag == NEW_KEY and week >= negative.start + negative.weeks:
            # once ramped up the new key stays, at its target share
            dimension, key = ("style", NEW_STYLE) if negative.kind == "new style" else ("size", NEW_SIZE)
            plan.shares[dimension] = move_share({**plan.shares[dimension], key: 0.0}, key, negative.target)
        negative.apply(plan, week)
    for event in scenario.events:
        event.apply(plan, week, world)
        if not event.sustained and week == event.end:
            plan.tags.add(REBOUND)
            if event.cls == REQUEST_DROP:
                plan.volume *= 1.25  # the catch-up after an outage
    return plan


def _normalised(shares: Mapping[str, float]) -> dict[str, float]:
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items()}


def scenario_weeks(scenario: Scenario) -> Iterator[tuple[WeekPlan, Metrics]]:
    """Each week's plan and its metrics, drawn from the scenario's traffic seed."""
    rng = random.Random(f"{scenario.seed}-traffic")
    wander = {d: {k: 1.0 for k in scenario.world.shares[d]} for d in DIMENSIONS}
    for week in range(scenario.weeks):
        for d in DIMENSIONS:  # mean-reverting: a share strays a few percent and comes back
            for k, w in wander[d].items():
                wander[d][k] = math.exp(0.8 * math.log(w) + rng.gauss(0, 0.03))
        noise = math.exp(rng.gauss(0, 0.07))
        plan = week_plan(scenario, week, noise, wander)
        plan.failure *= math.exp(rng.gauss(0, 0.08))
        yield plan, draw_week(rng, plan)


def draw_week(rng: random.Random, plan: WeekPlan) -> Metrics:
    """The week's requests, each drawing its model, style, size and color from the plan's shares,
    counted by (model, style, color, size, status) as `Storage.group_counts` returns them."""
    n = _poisson(rng, plan.volume)
    picks = []
    for dimension in DIMENSIONS:
        keys = [k for k, share in plan.shares[dimension].items() if share > 0]
        weights = [plan.shares[dimension][k] for k in keys]
        picks.append(rng.choices(keys, weights=weights, k=n))
    combos = Counter(zip(*picks, strict=True))
    rows = []
    for (model, style, size, color), count in combos.items():
        p = plan.failure_of(model, style, size, color)
        failed = sum(1 for _ in range(count) if rng.random() < p)
        canceled = sum(1 for _ in range(count - failed) if rng.random() < 0.003)
        price = plan.prices[size] * plan.price_factor
        for status, k in (
            ("completed", count - failed - canceled),
            ("failed", failed),
            ("canceled", canceled),
        ):
            if k:
                rows.append(GroupCount(model, style, color, size, status, k, _credits(rng, price * k)))
    return reports.summarize(rows, unique_users=max(1, n // 5))


def _credits(rng: random.Random, amount: float) -> int:
    whole = math.floor(amount)
    return whole + (1 if rng.random() < amount - whole else 0)


def _poisson(rng: random.Random, mean: float) -> int:
    # Large means only: the normal approximation is exact enough and fast.
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


# ---------------------------------------------------------------------------------------------
# The detectors: imagegen's, and the case study's previous-week rules
# ---------------------------------------------------------------------------------------------

IMAGEGEN = "imagegen"
PREVIOUS_WEEK = "previous week"
DETECTORS = (IMAGEGEN, PREVIOUS_WEEK)

# The case study names its rules (seed README) and one number, ">3x the previous week". The other
# two margins are this benchmark's reading of "a significant drop" and "a sudden increase".
CASE_SPIKE = 3.0
CASE_SUCCESS_DROP = 10.0  # points
CASE_FAILURE_RISE = 15.0  # points, for "a specific model, style, or size"


@dataclass(frozen=True)
class Alarm:
    week: int
    identity: Identity
    kind: str
    message: str = field(default="", compare=False)
    severity: str = field(default="", compare=False)


def previous_week_rules(now: Metrics, before: Metrics | None) -> list[tuple[str, Identity, str]]:
    """(kind, identity, message) for each of the case study's rules that fires; no volume guard."""
    if before is None:
        return []
    found = []
    if before.total_requests and now.total_requests > CASE_SPIKE * before.total_requests:
        found.append(("spike", VOLUME_UP, f"requests {now.total_requests} vs {before.total_requests}"))
    if before.total_credits_spent and now.total_credits_spent > CASE_SPIKE * before.total_credits_spent:
        found.append(
            ("spike", SPEND_UP, f"credits {now.total_credits_spent} vs {before.total_credits_spent}")
        )
    rate, old_rate = now.success_rate, before.success_rate
    if rate is not None and old_rate is not None and old_rate - rate > CASE_SUCCESS_DROP:
        found.append(("success_rate_drop", SUCCESS, f"success {rate} vs {old_rate}"))
    for dimension in ("model", "style", "size"):
        earlier = before.breakdown(dimension)
        for key, counts in now.breakdown(dimension).items():
            old = earlier.get(key)
            rate, old_rate = counts.failure_rate, None if old is None else old.failure_rate
            if rate is not None and old_rate is not None and rate - old_rate > CASE_FAILURE_RISE:
                identity = Identity("failure", dimension, key)
                found.append(("failure_rate_jump", identity, f"{key} {rate} vs {old_rate}"))
    return found


def identity_of(finding: Mapping[str, Any]) -> Identity:
    """An imagegen finding (its document form) reduced to what it is about."""
    metric, kind = finding.get("metric"), finding.get("kind")
    up = _number(finding.get("observed")) >= _number(finding.get("expected"))
    if metric == "totalRequests":
        return VOLUME_UP if up else VOLUME_DOWN
    if metric in ("totalCreditsSpent", "creditsPerRequest"):
        return SPEND_UP if up else SPEND_DOWN
    if metric == "successRate":
        return SUCCESS
    if metric == "share":
        return Identity("share", finding.get("dimension"), finding.get("key"))
    if metric == "failureRate":
        return Identity("failure", finding.get("dimension"), finding.get("key"))
    return Identity(f"{kind}:{metric}", finding.get("dimension"), finding.get("key"))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def claimed_class(alarm: Alarm) -> str:
    """The class a false alarm counts against."""
    family = alarm.identity.family
    sustained = alarm.kind in ("level_shift", "drift")
    if family == "volume_up":
        return VOLUME_LEVEL_SHIFT if sustained else REQUEST_SPIKE
    if family == "volume_down":
        return REQUEST_DROP
    if family in ("spend_up", "spend_down"):
        return CREDIT_PER_REQUEST if sustained else SPEND_MIX
    if family == "share":
        return SHARE_SHIFT
    if family == "success":
        return SUCCESS_RATE_DROP
    if family == "failure":
        return {"drift": FAILURE_DRIFT, "level_shift": FAILURE_LEVEL_SHIFT}.get(alarm.kind, FAILURE_RATE_JUMP)
    return "other"


# ---------------------------------------------------------------------------------------------
# Running and scoring
# ---------------------------------------------------------------------------------------------

Detect = Callable[[Metrics, Sequence[Metrics]], Iterable[Mapping[str, Any]]]


def imagegen_detect(current: Metrics, history: Sequence[Metrics]) -> list[dict[str, Any]]:
    return [anomaly.to_dict() for anomaly in reports.detect(current, history).anomalies]


@dataclass
class ScenarioRun:
    scenario: Scenario
    tags: list[set[str]]  # per week
    alarms: dict[str, list[Alarm]]
    requests: int


def run_scenario(scenario: Scenario, detect: Detect = imagegen_detect) -> ScenarioRun:
    history: list[Metrics] = []
    alarms: dict[str, dict[Alarm, None]] = {d: {} for d in DETECTORS}
    tags, requests = [], 0
    for week, (plan, metrics) in enumerate(scenario_weeks(scenario)):
        tags.append(plan.tags)
        requests += metrics.total_requests
        if week >= scenario.warmup:
            for finding in detect(metrics, history[-service.BASELINE_WEEKS :]):
                alarm = Alarm(
                    week,
                    identity_of(finding),
                    str(finding.get("kind")),
                    str(finding.get("message")),
                    str(finding.get("severity")),
                )
                alarms[IMAGEGEN].setdefault(alarm, None)
            for kind, identity, message in previous_week_rules(metrics, history[-1] if history else None):
                alarms[PREVIOUS_WEEK].setdefault(Alarm(week, identity, kind, message), None)
        history.append(metrics)
    return ScenarioRun(scenario, tags, {d: list(found) for d, found in alarms.items()}, requests)


@dataclass
class Tally:
    events: int = 0
    detected: int = 0
    tp: int = 0
    fp: int = 0

    @property
    def recall(self) -> float | None:
        return None if self.events == 0 else self.detected / self.events

    @property
    def precision(self) -> float | None:
        return None if self.tp + self.fp == 0 else self.tp / (self.tp + self.fp)


@dataclass
class Score:
    by_class: dict[str, Tally] = field(default_factory=lambda: {c: Tally() for c in CLASSES})
    by_strength: Counter[tuple[str, str, bool]] = field(default_factory=Counter)  # (class, strength, hit)
    repeats: int = 0
    allowed: int = 0
    false_by_tag: Counter[str] = field(default_factory=Counter)
    misses: list[str] = field(default_factory=list)
    false_alarms: list[str] = field(default_factory=list)
    delays: dict[str, list[int]] = field(default_factory=dict)  # class -> weeks from start to detection

    @property
    def overall(self) -> Tally:
        total = Tally()
        for tally in self.by_class.values():
            total.events += tally.events
            total.detected += tally.detected
            total.tp += tally.tp
            total.fp += tally.fp
        return total


def score(runs: Iterable[ScenarioRun], detector: str) -> Score:
    result = Score()
    for run in runs:
        _score_run(run, detector, result)
    return result


def _score_run(run: ScenarioRun, detector: str, result: Score) -> None:
    scenario, found = run.scenario, set()
    for alarm in sorted(run.alarms[detector], key=lambda a: a.week):
        owner = next(
            (e for e in scenario.events if e.start <= alarm.week < e.end and e.identity == alarm.identity),
            None,
        )
        if owner is not None:
            if owner in found:
                result.repeats += 1
            else:
                found.add(owner)
                result.by_class[owner.cls].tp += 1
                result.delays.setdefault(owner.cls, []).append(alarm.week - owner.start)
            continue
        if any(
            any(pattern.covers(alarm.identity) for pattern in e.allowed(alarm.week))
            for e in scenario.events
            if e.start <= alarm.week < e.end + TAIL_WEEKS
        ):
            result.allowed += 1
            continue
        claimed = claimed_class(alarm)
        result.by_class.setdefault(claimed, Tally()).fp += 1
        week_tags = run.tags[alarm.week] or {"ordinary"}
        for tag in week_tags:
            result.false_by_tag[tag] += 1
        result.false_alarms.append(
            f"{scenario.seed} {scenario.period(alarm.week).id} [{','.join(sorted(week_tags))}] "
            f"{alarm.kind} {alarm.identity}: {alarm.message}"
        )
    for event in scenario.events:
        result.by_class[event.cls].events += 1
        hit = event in found
        result.by_class[event.cls].detected += hit
        result.by_strength[event.cls, event.strength, hit] += 1
        if not hit:
            where = "" if event.key is None else f" {event.dimension} '{event.key}'"
            result.misses.append(
                f"{scenario.seed} {scenario.period(event.start).id} {event.cls} {event.strength}{where}"
            )


@dataclass
class Evaluation:
    config: Config
    runs: list[ScenarioRun]
    seconds: float

    def score(self, detector: str) -> Score:
        return score(self.runs, detector)

    @property
    def requests(self) -> int:
        return sum(run.requests for run in self.runs)


def evaluate(config: Config, detect: Detect = imagegen_detect) -> Evaluation:
    started = time.perf_counter()
    runs = [run_scenario(scenario, detect) for scenario in plan_scenarios(config)]
    return Evaluation(config, runs, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# The printout
# ---------------------------------------------------------------------------------------------


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(evaluation: Evaluation) -> Table:
    scores = {d: evaluation.score(d) for d in DETECTORS}
    grid = Table(title="What a weekly review must not miss: precision and recall per class")
    grid.add_column("class")
    grid.add_column("events", justify="right")
    for detector in DETECTORS:
        for name in ("P", "R", "TP/FP"):
            grid.add_column(f"{detector}\n{name}", justify="right")
    grid.add_column("imagegen recall by strength")
    for cls in CLASSES:
        cells = []
        for detector in DETECTORS:
            tally = scores[detector].by_class[cls]
            cells += [_figure(tally.precision), _figure(tally.recall), f"{tally.tp}/{tally.fp}"]
        grid.add_row(
            cls, str(scores[IMAGEGEN].by_class[cls].events), *cells, _by_strength(scores[IMAGEGEN], cls)
        )
    other = [scores[d].by_class.get("other", Tally()).fp for d in DETECTORS]
    if any(other):
        grid.add_row("other (false only)", "", "", "", f"0/{other[0]}", "", "", f"0/{other[1]}", "")
    grid.add_section()
    cells = []
    for detector in DETECTORS:
        total = scores[detector].overall
        cells += [_figure(total.precision), _figure(total.recall), f"{total.tp}/{total.fp}"]
    grid.add_row("overall", str(scores[IMAGEGEN].overall.events), *cells, "")
    return grid


def _by_strength(result: Score, cls: str) -> str:
    parts = []
    for label, _ in STRENGTHS[cls]:
        hit, miss = result.by_strength[cls, label, True], result.by_strength[cls, label, False]
        parts.append(f"{label} {hit}/{hit + miss}")
    return ", ".join(parts)


def targets(evaluation: Evaluation, target: float = 0.95) -> list[tuple[str, bool, str]]:
    total = evaluation.score(IMAGEGEN).overall
    return [
        (f"precision >= {target}", (total.precision or 0.0) >= target, _figure(total.precision)),
        (f"recall >= {target}", (total.recall or 0.0) >= target, _figure(total.recall)),
    ]


def print_report(evaluation: Evaluation, console: Console, show: int = 15) -> None:
    c = evaluation.config
    console.print(
        f"{c.scenarios} scenarios x {c.weeks} weeks ({c.warmup} warm-up weeks not scored), ~{c.requests} "
        f"requests a week, seed {c.seed}: {evaluation.requests:,} requests"
    )
    console.print(table(evaluation))
    ours, theirs = evaluation.score(IMAGEGEN), evaluation.score(PREVIOUS_WEEK)
    console.print(f"imagegen: {ours.repeats} repeats, {ours.allowed} allowed alarms (neither true nor false)")
    tagged = Counter(
        tag
        for run in evaluation.runs
        for week, tags in enumerate(run.tags)
        if week >= run.scenario.warmup
        for tag in tags
        if tag in HARD_NEGATIVES
    )
    console.print(f"scored weeks with each hard negative: {dict(sorted(tagged.items()))}")
    console.print(f"imagegen false alarms by week tag: {dict(ours.false_by_tag) or 'none'}")
    console.print(f"previous week false alarms by week tag: {dict(theirs.false_by_tag) or 'none'}")
    delays = {cls: f"{statistics.mean(d):.1f}" for cls, d in ours.delays.items() if any(d)}
    console.print(f"imagegen mean weeks from an event's start to its detection (when not 0): {delays}")
    for name, ok, value in targets(evaluation):
        console.print(f"target {name}: {'met' if ok else 'MISSED'} ({value})")
    for title, lines in (("imagegen misses", ours.misses), ("imagegen false alarms", ours.false_alarms)):
        console.print(f"{title}: {len(lines)}")
        for line in lines[:show]:
            console.print(f"  {line}", markup=False, highlight=False)
        if len(lines) > show:
            console.print(f"  ... and {len(lines) - show} more")
    console.print(f"run time: {evaluation.seconds:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.weekly_review", description=__doc__.split("\n")[0])
    defaults = Config()
    parser.add_argument("--scenarios", type=int, default=defaults.scenarios)
    parser.add_argument("--weeks", type=int, default=defaults.weeks)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--requests", type=int, default=defaults.requests, help="requests a week")
    parser.add_argument("--show", type=int, default=15, help="misses and false alarms to list")
    args = parser.parse_args(argv)
    try:
        config = Config(args.scenarios, args.weeks, args.seed, args.requests)
    except ValueError as exc:
        parser.error(str(exc))
    console = Console() if sys.stdout.isatty() else Console(width=180)
    evaluation = evaluate(config)
    print_report(evaluation, console, args.show)
    return 0 if all(ok for _, ok, _ in targets(evaluation)) else 1


if __name__ == "__main__":
    sys.exit(main())
