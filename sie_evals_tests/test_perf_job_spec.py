"""Settings -> LoadSpec -> aio.Job: every load field is copied by name, none by hand, so a field added to
the dataclasses (and its perf_<name> setting) reaches the generator without another edit."""

from dataclasses import fields

from sie_evals.lib.config.settings import EvalDefaults, load_spec
from sie_evals.lib.perf.aio import HttpTarget, Job
from sie_evals.lib.perf.load import LoadSpec

TARGET = HttpTarget("http://127.0.0.1:1/encode", {}, (b"{}",), 5.0)
# every setting off its default, so a field copied from the wrong place or not at all shows
CHANGED = {
    "perf_batch_size": 3,
    "perf_concurrency": 5,
    "perf_requests": 17,
    "perf_warmup_requests": 2,
    "perf_trials": 4,
    "perf_rate": 250.0,
    "perf_arrival": "gamma",
    "perf_burstiness": 0.5,
    "perf_max_concurrency": 7,
    "perf_on_cap": "drop",
    "perf_seed": 11,
}


def test_load_spec_takes_every_perf_setting():
    spec = load_spec(EvalDefaults(**CHANGED), tokens=64)
    assert {f"perf_{f.name}": getattr(spec, f.name) for f in fields(LoadSpec) if f"perf_{f.name}" in CHANGED} == CHANGED
    assert spec.tokens == 64 and spec.duration_s is None and spec.processes is None
    timed = load_spec(EvalDefaults(perf_duration_s=2.5))
    assert timed.duration_s == 2.5 and timed.requests is None
    # every LoadSpec field has its setting, or is one no setting gives (parsed, or not a load shape)
    unset = {f.name for f in fields(LoadSpec) if f"perf_{f.name}" not in EvalDefaults.model_fields}
    assert unset == {"processes"}


def test_job_from_spec_copies_the_shared_fields():
    spec = load_spec(EvalDefaults(**CHANGED))
    job = Job.from_spec(TARGET, spec)
    assert (job.target, job.mode, job.clients, job.warm) == (TARGET, "open", 7, 2)
    shared = [f.name for f in fields(Job) if hasattr(spec, f.name) and f.name != "processes"]
    assert shared == ["mode", "requests", "duration_s", "rate", "arrival", "burstiness", "seed", "on_cap"]
    assert all(getattr(job, name) == getattr(spec, name) for name in shared)
    assert (job.process, job.processes, job.start) == (0, 1, None)  # run_parts' to set
    closed = Job.from_spec(TARGET, load_spec(EvalDefaults(perf_concurrency=5, perf_duration_s=1.0)))
    assert (closed.mode, closed.clients, closed.requests, closed.duration_s) == ("closed", 5, None, 1.0)
