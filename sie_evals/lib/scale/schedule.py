"""A list scheduler with the semantics of Dagster's step executors, used to predict wall time.

Each step needs one slot of its pool (`gpu`, `cpu`: the Celery queue a step's tags name, or a
multiprocess executor's tag concurrency limit) and may start once the steps it depends on have ended.
Ready steps start in the order they became ready (ties: the order given), as the executor hands out
`get_steps_to_execute()`; an optional total limit is the executor's `max_concurrent`. Steps belong to
runs; at most `max_runs` runs are active at once (the run queue's `max_concurrent_runs`, or a pool
limit with `granularity: run`) and a run holds its slot from its first step until its last ends."""

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    key: str
    pool: str
    seconds: float
    after: tuple[str, ...] = ()
    run: str = "run"


@dataclass(frozen=True)
class Span:
    key: str
    pool: str
    start: float
    end: float


@dataclass(frozen=True)
class Schedule:
    spans: tuple[Span, ...]
    slots: Mapping[str, int]

    @property
    def wall_s(self) -> float:
        return max((s.end for s in self.spans), default=0.0)

    def busy_s(self, pool: str) -> float:
        return sum(s.end - s.start for s in self.spans if s.pool == pool)

    def utilisation(self, pool: str) -> float:
        """Share of the pool's slot-seconds in use over the whole wall time."""
        capacity = self.slots[pool] * self.wall_s
        return self.busy_s(pool) / capacity if capacity else 0.0

    def max_concurrent(self, pool: str) -> int:
        return max_overlap([(s.start, s.end) for s in self.spans if s.pool == pool])


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an interval ending at t does not overlap one starting at t)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    best = now = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def simulate(
    steps: Sequence[Step], slots: Mapping[str, int], *, max_concurrent: int | None = None, max_runs: int | None = None
) -> Schedule:
    """Event-driven simulation of `steps` on `slots` per pool; raises ValueError on an unknown pool,
    a missing dependency or a cycle."""
    by_key = {s.key: s for s in steps}
    for s in steps:
        if s.pool not in slots or slots[s.pool] < 1:
            raise ValueError(f"step {s.key!r}: pool {s.pool!r} has no slots")
        if missing := [d for d in s.after if d not in by_key]:
            raise ValueError(f"step {s.key!r} depends on unknown steps {missing}")
    order = {s.key: i for i, s in enumerate(steps)}
    waiting = {s.key: len(s.after) for s in steps}
    children: dict[str, list[str]] = {k: [] for k in by_key}
    left_in_run: dict[str, int] = {}
    roots: dict[str, list[str]] = {}
    for s in steps:
        for d in s.after:
            children[d].append(s.key)
        left_in_run[s.run] = left_in_run.get(s.run, 0) + 1
        if not s.after:
            roots.setdefault(s.run, []).append(s.key)
    queued_runs = list(reversed(dict.fromkeys(s.run for s in steps)))  # the run queue, first run last
    active_runs: set[str] = set()
    ready: dict[str, list[tuple[float, int, str]]] = {pool: [] for pool in slots}  # per pool, FIFO
    running: list[tuple[float, int, str]] = []  # (end, order, key)
    used = dict.fromkeys(slots, 0)
    spans: list[Span] = []
    now = 0.0
    while True:
        # the run queue dequeues in order while there is room; a run's root steps become ready
        while queued_runs and (max_runs is None or len(active_runs) < max_runs):
            run = queued_runs.pop()
            active_runs.add(run)
            for key in roots.get(run, []):
                heapq.heappush(ready[by_key[key].pool], (now, order[key], key))
        # start ready steps, earliest-ready first across pools, while slots (and the total) allow
        while max_concurrent is None or sum(used.values()) < max_concurrent:
            open_pools = [p for p in slots if ready[p] and used[p] < slots[p]]
            if not open_pools:
                break
            pool = min(open_pools, key=lambda p: ready[p][0])
            _, _, key = heapq.heappop(ready[pool])
            used[pool] += 1
            s = by_key[key]
            heapq.heappush(running, (now + s.seconds, order[key], key))
            spans.append(Span(key, pool, now, now + s.seconds))
        if not running:
            break
        now = running[0][0]
        while running and running[0][0] == now:
            s = by_key[heapq.heappop(running)[2]]
            used[s.pool] -= 1
            left_in_run[s.run] -= 1
            if not left_in_run[s.run]:
                active_runs.discard(s.run)
            for child in children[s.key]:
                waiting[child] -= 1
                if not waiting[child]:
                    heapq.heappush(ready[by_key[child].pool], (now, order[child], child))
    if len(spans) != len(steps):
        raise ValueError(f"{len(steps) - len(spans)} steps never became ready (a dependency cycle)")
    return Schedule(tuple(spans), dict(slots))
