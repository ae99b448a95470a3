"""The ladder (asynchronous successive halving, ASHA): which trial climbs to the next rung, decided at once.

Li et al., "A System for Massively Parallel Hyperparameter Tuning" (MLSys 2020), https://arxiv.org/abs/1810.05934.
Rungs sit at min_budget * eta^k training steps. Two promotion rules:
- strict (the paper's): a trial that finished rung k is promoted as soon as it ranks in the top 1/eta of all results
  recorded at rung k so far, which needs at least eta results there: nobody waits for stragglers, and no trial climbs
  on a handful of results.
- lenient (Ray Tune's `ASHAScheduler`): the decision is made once, when the result arrives: the trial goes on unless
  its score falls below the (1 - 1/eta) quantile of the results the rung had before it. Early trials climb at once,
  so the top rung is reached sooner, on less evidence.
Pure and deterministic (ties go to the lower trial key), so a workflow can call it and replay the same promotions;
the lenient rule depends on the order results arrive in, so a rebuild records them in that order. Each rung keeps
its results ranked and its promotable trials ranked, both as sorted lists kept by insertion, so a decision costs the
same at 100 results as at 100,000 (a sweep asks for one after every result).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Literal

# How the ladder knows a trial: the sweep passes its index (run ids, in sweeps started before, stopped sorting in trial
# order past t9999). Ties go to the lower key.
TrialKey = int | str


class Ladder:
    def __init__(
        self,
        min_budget: int,
        max_budget: int,
        eta: int = 3,
        mode: Literal["max", "min"] = "max",
        rule: Literal["strict", "lenient"] = "strict",
    ) -> None:
        if min_budget < 1:
            raise ValueError(f"min_budget must be >= 1 (got {min_budget})")
        if max_budget < min_budget:
            raise ValueError(f"max_budget {max_budget} must be >= min_budget {min_budget}")
        if eta < 2:
            raise ValueError(f"eta must be >= 2 (got {eta})")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min' (got {mode!r})")
        self.eta, self.mode, self.rule = eta, mode, rule
        budgets = []
        b = min_budget
        while b < max_budget:
            budgets.append(b)
            b *= eta
        self.budgets: list[int] = [*budgets, max_budget]
        self._scores: list[dict[TrialKey, float]] = [{} for _ in self.budgets]  # rung → trial → score
        self._ranked: list[list[tuple[float, TrialKey]]] = [[] for _ in self.budgets]  # rung → ranked, best first
        self._waiting: list[list[tuple[float, TrialKey]]] = [[] for _ in self.budgets]  # rung → promotable, ranked
        self._promoted: list[set[TrialKey]] = [set() for _ in self.budgets]  # rung → trials promoted out of it
        self._peeked: tuple[TrialKey, int] | bool | None = False  # cached `peek`; False: recompute (callers poll it)

    @property
    def top_rung(self) -> int:
        return len(self.budgets) - 1

    def record(self, trial: TrialKey, rung: int, score: float) -> bool:
        """Whether the rule lets the trial climb from this result (strict: always; lenient: if it clears the
        cutoff now). A saved sweep keeps that answer: `restore` cannot re-derive it without the arrival order."""
        if not 0 <= rung <= self.top_rung:
            raise ValueError(f"rung {rung} outside 0..{self.top_rung}")
        if trial in self._scores[rung]:
            raise ValueError(f"trial {trial!r} already has a result at rung {rung}")
        entry = self._entry(trial, score)
        climbs = self.rule == "strict" or self._clears_cutoff(rung, score)
        if climbs and rung < self.top_rung and trial not in self._promoted[rung]:
            bisect.insort(self._waiting[rung], entry)
        bisect.insort(self._ranked[rung], entry)
        self._scores[rung][trial] = score
        self._peeked = False
        return climbs

    def restore(
        self, results: Iterable[tuple[TrialKey, int, float, bool]], promoted: Iterable[tuple[TrialKey, int]]
    ) -> None:
        """Rebuild from a saved sweep in one sort per rung: (trial, rung, score, climbs) for every result, and
        (trial, rung) for every promotion. The same ladder as recording them one by one, at a fraction of the cost
        (a new execution must load 100,000 trials within a workflow task's 2 s)."""
        for trial, rung in promoted:
            self._promoted[rung].add(trial)
        top, sign = self.top_rung, -1.0 if self.mode == "max" else 1.0
        for trial, rung, score, climbs in results:
            scores = self._scores[rung]
            if trial in scores:
                raise ValueError(f"trial {trial!r} already has a result at rung {rung}")
            scores[trial] = score
            entry = (sign * score, trial)  # `_entry`, inlined: this loop runs once per result of the whole sweep
            self._ranked[rung].append(entry)
            if climbs and rung < top and trial not in self._promoted[rung]:
                self._waiting[rung].append(entry)
        for lists in (self._ranked, self._waiting):
            for ranked in lists:
                ranked.sort()
        self._peeked = False

    def _entry(self, trial: TrialKey, score: float) -> tuple[float, TrialKey]:
        """How a result ranks: best first, ties to the lower trial key."""
        return -score if self.mode == "max" else score, trial

    def _clears_cutoff(self, rung: int, score: float) -> bool:
        """At or above the (1 - 1/eta) quantile of the results the rung had before this one (`max`; mirrored for
        `min`); the first result at a rung always goes on. The quantile is numpy's default (linear) percentile, the
        one Ray Tune takes, computed as numpy does it, bit for bit, from the ranked list: numpy itself cannot run in
        the workflow sandbox (it imports submodules on first use) and would copy the whole rung every time."""
        ranked = self._ranked[rung]
        n = len(ranked)
        if n == 0:
            return True

        def ascending(i: int) -> float:  # the i-th smallest signed score (`ranked` is best first, by -signed score)
            return -ranked[n - 1 - i][0]

        at = (n - 1) * ((100 * (1 - 1 / self.eta)) / 100)
        below = math.floor(at)
        lo, hi = (n - 1, n - 1) if at >= n - 1 else (below, below + 1)
        a, b, t = ascending(lo), ascending(hi), at - below
        cutoff = b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t
        return (score if self.mode == "max" else -score) >= cutoff

    def mark_promoted(self, trial: TrialKey, rung: int) -> None:
        """Rebuilding from a saved state: `trial` already went up from `rung`."""
        self._promote(trial, rung)

    def _promote(self, trial: TrialKey, rung: int) -> None:
        self._promoted[rung].add(trial)
        if (score := self._scores[rung].get(trial)) is not None:
            waiting = self._waiting[rung]
            i = bisect.bisect_left(waiting, self._entry(trial, score))
            if i < len(waiting) and waiting[i][1] == trial:
                del waiting[i]
        self._peeked = False

    def peek(self) -> tuple[TrialKey, int] | None:
        """(trial, next rung) for the best not-yet-promoted trial that the rule lets climb, highest rung first."""
        if self._peeked is False:
            self._peeked = self._find()
        return self._peeked  # type: ignore[return-value]

    def _find(self) -> tuple[TrialKey, int] | None:
        """Strict: the best waiting trial, if it is within the rung's top 1/eta; lenient: the best that passed."""
        for rung in range(self.top_rung - 1, -1, -1):
            waiting = self._waiting[rung]
            if not waiting:
                continue
            if self.rule == "strict":
                top = len(self._ranked[rung]) // self.eta
                if top == 0 or waiting[0] > self._ranked[rung][top - 1]:
                    continue
            return waiting[0][1], rung + 1
        return None

    def promotion(self) -> tuple[TrialKey, int] | None:
        """Like `peek`, and the trial counts as promoted from then on."""
        found = self.peek()
        if found is not None:
            self._promote(found[0], found[1] - 1)
        return found

    def best(self) -> tuple[TrialKey, int, float] | None:
        """(trial, rung, score) at the highest rung reached by anyone."""
        for rung in range(self.top_rung, -1, -1):
            results = self._scores[rung]
            if results:
                pick = (max if self.mode == "max" else min)(sorted(results), key=results.__getitem__)
                return pick, rung, results[pick]
        return None
