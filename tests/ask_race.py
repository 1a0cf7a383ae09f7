"""Many workers asking one Optuna study for trials at the same moment (sweeps/ask_gate.py).

Each worker process loads the study, waits at a barrier with the others, then takes trials until the gate says
none is left; a trial is told a value after a short pause, so asks of different workers overlap.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from sweeps import search as S
from sweeps.ask_gate import NothingToAsk, gate_asks, lock_for

SPEC = S.build_search({"space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}, "race", "race.yaml")


def _worker(*args) -> None:
    out = args[-1]
    try:
        out.put(_take_trials(*args[:-1]))
    except BaseException as e:  # reported, so the test fails with the reason rather than a queue timeout
        out.put(f"{type(e).__name__}: {e}")


def _take_trials(url: str, study_name: str, n_trials: int, lock_file: str, barrier, gated: bool) -> int:
    import time

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=S.open_storage(url, SPEC))
    pending = lambda s: S.progress(s).pending(n_trials)  # noqa: E731
    if gated:
        gate_asks(study, lock_for(url, study_name, Path(lock_file)), pending)
    barrier.wait()
    taken = 0
    while True:
        if not gated and pending(study) <= 0:  # the old check-then-ask: racy
            break
        try:
            trial = study.ask()
        except NothingToAsk:
            break
        trial.suggest_float("optim.lr", 1e-3, 1e-2)
        time.sleep(0.05)
        study.tell(trial, 1.0)
        taken += 1
    return taken


def race_asks(url: str, study_name: str, n_trials: int, workers: int, lock_file: Path, gated: bool = True,
              enqueued: int = 0) -> tuple[list, list[int]]:
    """(the study's trials, trials taken per worker) after `workers` processes raced for `n_trials` trials."""
    import optuna

    storage = S.open_storage(url, SPEC, create=True)  # created once, here: concurrent creation crashes
    study = optuna.create_study(study_name=study_name, storage=storage)
    for i in range(enqueued):
        study.enqueue_trial({"optim.lr": 1e-3 * (i + 1)})
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, study_name, n_trials, str(lock_file), barrier, gated, out))
             for _ in range(workers)]
    for p in procs:
        p.start()
    taken = [out.get(timeout=120) for _ in procs]
    assert all(isinstance(n, int) for n in taken), taken
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, p.exitcode
    return optuna.load_study(study_name=study_name, storage=url if "://" in url else storage).get_trials(), taken
