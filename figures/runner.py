"""Running the figures' computations: every run a figure needs is a Job; the jobs missing
from the results store are spread over worker processes, one torch thread each, with a
progress bar (done, cached, running, estimated time left).

Small models gain nothing from several intra-op threads and lose a lot on a loaded machine,
so the policy is one thread per run and one process per core. Each job seeds itself
(Store.cached) and is keyed by its configuration, so the numbers do not depend on the number
of workers or the order in which the jobs finish.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

from .store import Store


@dataclass(frozen=True, eq=False)
class Job:
    """One cached computation: ``fn(config, store)`` -> result dict or (result, arrays).

    ``fn`` is a module-level function (workers import it by name). ``fields``: result keys a
    valid entry holds. ``needs``: jobs whose entries ``fn`` reads. ``cost``: estimated seconds
    on one idle core (for the time estimate only). ``exclusive``: run alone in the main process
    after every other job (timing measurements)."""

    kind: str
    config: dict
    fn: Callable
    label: str = ""
    cost: float = 1.0
    fields: tuple = ()
    needs: tuple = field(default=())
    exclusive: bool = False


def default_workers(threads: int = 1) -> int:
    """One worker process per available core, each with ``threads`` torch threads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // threads)


def _init_worker(threads: int, parent: int) -> None:
    """A worker: ``threads`` torch threads, and it dies with the process that started it."""
    import torch

    from .sweep import _worker_init

    _worker_init(parent)
    torch.set_num_threads(threads)


def _work(root: str, threads: int, code: str, job: Job) -> float:
    """In a worker: compute ``job`` into the store at ``root`` (keys with the main process's code
    version); returns the (wall, CPU) seconds it took."""
    t0, c0 = time.perf_counter(), time.process_time()
    Store(root, threads=threads, code=code).run(job)
    return time.perf_counter() - t0, time.process_time() - c0


def plan(jobs: list[Job], store: Store) -> tuple[dict, dict]:
    """(every distinct job by key, its dependencies first; the subset missing from the store)."""
    unique: dict[str, Job] = {}

    def add(job):
        for dep in job.needs:
            add(dep)
        unique.setdefault(store.key(job.kind, job.config), job)

    for job in jobs:
        add(job)
    todo = {key: job for key, job in unique.items() if store.get(key, job.fields) is None}
    return unique, todo


class _Progress:
    """Progress weighted by estimated cost: on a terminal a tqdm bar (runs done / cached / total,
    what runs now, time left); otherwise (a log file) one line per finished run with the same
    counts and the estimated time left."""

    def __init__(self, total_cost: float, n_jobs: int, cached: int, enabled: bool):
        self.done, self.n, self.cached, self.running, self.cpu = 0, n_jobs, cached, [], 0.0
        self.total_cost, self.done_cost, self.t0 = total_cost, 0.0, time.perf_counter()
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max(total_cost, 1e-9), file=sys.stdout, mininterval=0.5, leave=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar:20}| {elapsed}<{remaining} {postfix}",
                            desc="runs")
            self._show()

    def _show(self):
        if self.bar:
            now = ", ".join(self.running[:3]) + (" ..." if len(self.running) > 3 else "")
            self.bar.set_postfix_str(f"{self.done}/{self.n} computed, {self.cached} cached"
                                     + (f"; running: {now}" if now else ""), refresh=True)

    def start(self, job: Job):
        self.running.append(job.label or job.kind)
        self._show()

    def finish(self, job: Job, seconds: tuple[float, float]):
        self.running.remove(job.label or job.kind)
        self.done += 1
        self.cpu += seconds[1]
        self.done_cost += job.cost
        line = (f"  [{self.done}/{self.n}] {job.label or job.kind}: {seconds[0]:.1f} s "
                f"({seconds[1]:.1f} s CPU)")
        if not self.bar:
            elapsed = time.perf_counter() - self.t0
            left = elapsed * max(self.total_cost - self.done_cost, 0.0) / max(self.done_cost, 1e-9)
            line += f"; {self.cached} cached; about {int(left // 60)}:{int(left % 60):02d} left"
        self.write(line)
        if self.bar:
            self.bar.update(job.cost)
        self._show()

    def write(self, line: str):
        if self.bar:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def tick(self):
        if self.bar:
            self.bar.refresh()

    def close(self):
        if self.bar:
            self.bar.close()


def make_pool(workers: int, threads: int) -> ProcessPoolExecutor:
    """``workers`` fresh ('spawn') processes, each with ``threads`` torch threads."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads, os.getpid()))


def execute(jobs: list[Job], store: Store, workers: int | None = None, progress: bool = True,
            log: Callable[[str], None] = print, pool: ProcessPoolExecutor | None = None) -> dict:
    """Compute every job the store lacks: ``workers`` processes (default one per core; 1: in
    this process), each with ``store.threads`` torch threads, in ``pool`` if given; exclusive
    jobs last, alone, here. Returns counts: {"runs", "cached", "computed", "seconds"}."""
    t0 = time.perf_counter()
    workers = workers or default_workers(store.threads)
    unique, todo = plan(jobs, store)
    cached = len(unique) - len(todo)
    store.hits, store.misses = store.hits + cached, store.misses + len(todo)
    log(f"{len(unique)} runs needed: {cached} in the store, {len(todo)} to compute "
        f"({workers} worker process{'es' if workers > 1 else ''}, {store.threads} torch thread"
        f"{'s' if store.threads > 1 else ''} each)")
    bar = _Progress(sum(j.cost for j in todo.values()), len(todo), cached, progress and bool(todo))
    try:
        shared = {k: j for k, j in todo.items() if not j.exclusive}
        if workers > 1 and len(shared) > 1:
            own = pool is None
            pool = pool or make_pool(workers, store.threads)
            try:
                _pool(shared, unique, store, workers, bar, pool)
            finally:
                if own:
                    pool.shutdown(wait=True, cancel_futures=True)
        else:
            for key in _order(shared, store):
                _inline(shared[key], store, bar)
        for job in (j for j in todo.values() if j.exclusive):
            _inline(job, store, bar)
    finally:
        bar.close()
    return {"runs": len(unique), "cached": cached, "computed": len(todo), "seconds": time.perf_counter() - t0,
            "cpu_seconds": bar.cpu}


def _inline(job: Job, store: Store, bar: _Progress) -> None:
    bar.start(job)
    t, c = time.perf_counter(), time.process_time()
    hits, misses = store.hits, store.misses
    store.run(job)
    store.hits, store.misses = hits, misses  # counted in the plan
    bar.finish(job, (time.perf_counter() - t, time.process_time() - c))


def _needs(job: Job, store: Store) -> list[str]:
    return [store.key(d.kind, d.config) for d in job.needs]


def _order(todo: dict, store: Store) -> list[str]:
    """Keys of ``todo``, dependencies first, otherwise the longest jobs first (balances workers)."""
    order, seen = [], set()

    def visit(key):
        if key in seen:
            return
        seen.add(key)
        for dep in _needs(todo[key], store):
            if dep in todo:
                visit(dep)
        order.append(key)

    for key in sorted(todo, key=lambda k: -todo[k].cost):
        visit(key)
    return order


def _pool(todo: dict, unique: dict, store: Store, workers: int, bar: _Progress,
          pool: ProcessPoolExecutor) -> None:
    """Keep ``workers`` jobs in flight (so the bar knows what runs), dependencies respected."""
    needs = {key: _needs(job, store) for key, job in todo.items()}
    waiting = _order(todo, store)
    done: set[str] = set(unique) - set(todo)
    running = {}
    try:
        while waiting or running:
            ready = [k for k in waiting if all(d in done for d in needs[k])]
            for key in ready[:max(0, workers - len(running))]:
                waiting.remove(key)
                running[pool.submit(_work, str(store.root), store.threads, store.code, todo[key])] = key
                bar.start(todo[key])
            if not running:
                raise RuntimeError(f"jobs wait on missing dependencies: {waiting}")
            finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            bar.tick()
            for fut in finished:
                key = running.pop(fut)
                seconds = fut.result()  # a job's exception ends the whole run here
                done.add(key)
                bar.finish(todo[key], seconds)
    except BaseException:  # do not wait for the runs still going
        for fut in running:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
