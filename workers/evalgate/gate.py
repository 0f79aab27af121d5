"""The eval gate: a candidate specialist against its baseline, suite by suite, with statistics.

    evaluate_gate(project_file, candidate=DIR | specialist=NAME, ...) -> GateResult
    run(job: EvalJob, conn=None) -> GateResult         the pipeline's eval stage (same function)

For every suite of the project, the candidate and the baseline (targets.py) are run
through the runtime (runner.py) — or, when nothing they depend on changed, read from
the result cache (cache.py) without loading a model or importing MLX. Then per suite:

- regression when the candidate is worse than the baseline by more than `threshold`
  (with `gate.require_significance`, only when the difference is also statistically clear);
  a suite with `regression: "significant"` fails on any statistically clear loss instead
  (the no-forgetting rule: `gate.rules: ["no-forgetting"]` adds the shipped general
  tool-calling suite, evalgate/rules.py, judged this way);
- fail when the candidate misses the suite's absolute `minimum` (a ceiling for
  direction "lower"), with or without a baseline;
- no baseline and no minimum: reported, not gated (and the report says so).

Each verdict says whether the difference is statistically clear (95% interval of the
paired difference excludes 0; stats.py). The result is written atomically as
`gate-result.json`; bad configuration or input raises GateInputError (exit 2, never a pass).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from tinygpt.runtime.contracts.base import ContractError
from tinygpt.runtime.contracts.evals import EvalReport, EvalSuite, GateResult, SuiteReport, SuiteVerdict
from tinygpt.runtime.contracts.io import read_json, write_json
from tinygpt.runtime.contracts.jobs import EvalJob
from tinygpt.runtime.contracts.project import PROJECT_FILE, ProjectPins

from .cache import DigestMemo, ResultCache, scorer_digest, suite_key
from .rows import GateInputError
from .scorers import MetricSpec
from .stats import compare
from .suites import check_suite, data_files, declared_suites, load_items
from .targets import Context, Target, resolve_baseline, resolve_candidate, write_record

log = logging.getLogger("tinygpt.evalgate")

RESULT_FILE = "gate-result.json"
# Temperature of `--passes K` on a suite declared greedy: K identical greedy passes would be useless.
SAMPLING_TEMPERATURE = 0.7
# Float noise guard: a delta equal to the threshold is not "more than" it.
EPS = 1e-9

__all__ = ["GateInputError", "RESULT_FILE", "evaluate_gate", "error_result", "judge", "run", "summary_lines"]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def judge(
    suite: EvalSuite, spec: MetricSpec, cand: SuiteReport, base: SuiteReport | None, *,
    require_significance: bool = False, no_baseline: str = "",
) -> SuiteVerdict:
    """The verdict of one suite (see the module doc for the rules)."""
    c = cand.metric_value
    better = 1.0 if spec.direction == "higher" else -1.0
    passed, reasons = True, []
    b = delta = p = ci = None
    significant = False
    if base is not None:
        b = base.metric_value
        delta = c - b
        cmp = compare({i.id: i.score for i in cand.items}, {i.id: i.score for i in base.items}, spec.percentile)
        p, ci, significant = cmp.p_value, cmp.ci95, cmp.significant
        clear = f"statistically clear, p={p:.3g}" if significant else "not statistically clear" + (f", p={p:.3g}" if p is not None else "")
        worse_by = -better * delta
        # First, so a negative threshold (a required improvement) still fails an equal score.
        if suite.regression == "threshold" and worse_by > suite.threshold + EPS:
            if require_significance and not significant:
                reasons.append(f"worse by {_fmt(worse_by)} (threshold {_fmt(suite.threshold)}) but {clear}: tolerated (gate.require_significance)")
            else:
                passed = False
                reasons.append(f"worse than the baseline by {_fmt(worse_by)}, more than the threshold {_fmt(suite.threshold)} ({clear})")
        elif worse_by < -EPS:
            reasons.append(f"better than the baseline by {_fmt(-worse_by)} ({clear})")
        elif worse_by <= EPS:
            reasons.append("same as the baseline")
        elif suite.regression == "significant":
            if significant:
                passed = False
                reasons.append(f"worse than the baseline by {_fmt(worse_by)} and {clear}: a significant loss (no forgetting)")
            else:
                reasons.append(f"worse by {_fmt(worse_by)} but {clear}: tolerated (only a significant loss fails this suite)")
        else:
            reasons.append(f"worse by {_fmt(worse_by)}, within the threshold {_fmt(suite.threshold)} ({clear})")
    else:
        reasons.append("no baseline" + (f" ({no_baseline})" if no_baseline else ""))
    if suite.minimum is not None:
        if better * (c - suite.minimum) < -EPS:
            passed = False
            reasons.append(f"{_fmt(c)} misses the {'minimum' if better > 0 else 'ceiling'} {_fmt(suite.minimum)}")
        else:
            reasons.append(f"meets the {'minimum' if better > 0 else 'ceiling'} {_fmt(suite.minimum)}")
    elif base is None:
        reasons.append("no minimum either: reported, not gated")
    return SuiteVerdict(
        suite=suite.name, candidate=c, baseline=b, delta=delta, threshold=suite.threshold, passed=passed,
        significant=significant, reason="; ".join(reasons), metric=suite.metric, direction=spec.direction,
        minimum=suite.minimum, p_value=p, delta_ci95=ci,
    )


def _effective(suite: EvalSuite, passes: int | None, temperature: float | None) -> EvalSuite:
    """The suite with --passes / --temperature applied."""
    changes: dict = {}
    if passes is not None:
        changes["passes"] = passes
        if passes > 1 and suite.temperature == 0.0:
            changes["temperature"] = SAMPLING_TEMPERATURE
    if temperature is not None:
        changes["temperature"] = temperature
    return msgspec.structs.replace(suite, **changes)


def _context(project_file: Path | None) -> Context:
    if project_file is None:
        from tinygpt.runtime.project import find_project

        project_file = find_project()
        if project_file is None:
            raise GateInputError(f"{PROJECT_FILE} not found in {Path.cwd()} or any parent directory; pass --project")
    try:
        project = read_json(project_file, ProjectPins)
    except ContractError as e:
        raise GateInputError(str(e)) from None
    return Context(project, Path(project_file).resolve(), DigestMemo())


def _report(target: Target, suites: list[SuiteReport]) -> EvalReport:
    return EvalReport(model=target.model, model_digest=target.model_digest, adapter=target.adapter,
                      adapter_digest=target.adapter_digest, suites=suites, created_at=time.time())


def error_result(message: str) -> GateResult:
    """The result written when the gate could not decide (configuration or input error)."""
    return GateResult(verdict="error", candidate=EvalReport(model="", model_digest=""), message=message)


def evaluate_gate(
    project_file: Path | None = None,
    *,
    candidate: Path | None = None,
    specialist: str | None = None,
    baseline: str | None = None,
    passes: int | None = None,
    temperature: float | None = None,
    update_baseline: bool = False,
    use_cache: bool | None = None,
    rules: list[str] = (),
    concurrency: int | None = None,
    only_suites: list[str] | None = None,
    threshold: float | None = None,
    require_significance: bool | None = None,
    out: Path | None = None,
    say: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GateResult:
    """Run (or read from the cache) every suite for candidate and baseline and decide.

    Raises GateInputError for bad configuration or input. Writes `out` (atomically) when
    given; with `update_baseline`, records the candidate as its subject's baseline.
    `progress(done, total)` hears about every answered request of the suites that run.
    A build policy's promotion rule narrows the suites (`only_suites`) and overrides every
    suite's `threshold` and the project's `require_significance`.
    """
    say = say or log.info
    started = time.perf_counter()
    ctx = _context(project_file)
    if passes is not None and passes < 1:
        raise GateInputError(f"--passes must be at least 1, got {passes}")
    suites = [_effective(s, passes, temperature)
              for s in declared_suites(ctx.project, ctx.project_dir, rules, only=only_suites, threshold=threshold)]
    significance = ctx.project.gate.require_significance if require_significance is None else require_significance
    specs = {s.name: check_suite(s) for s in suites}
    files = {s.name: data_files(s, ctx.project_dir) for s in suites}
    digests = {name: [ctx.memo.sha256(f) for f in paths] for name, paths in files.items()}
    subject, cand = resolve_candidate(ctx, candidate, specialist)
    base, source, record = resolve_baseline(ctx, subject, cand, baseline)
    ctx.memo.save()

    cache = ResultCache(enabled=ctx.project.gate.cache if use_cache is None else use_cache)
    reports: dict[tuple[str, str], SuiteReport] = {}
    todo: list[tuple[str, EvalSuite, Target, str]] = []
    stale: list[str] = []
    for role, target in (("candidate", cand), ("baseline", base)):
        if target is None:
            continue
        for s in suites:
            key = suite_key(model_digest=target.model_digest, adapter_digest=target.adapter_digest, suite=s,
                            file_digests=digests[s.name], scorer=scorer_digest(s))
            rep = cache.get(key)
            if rep is None and role == "baseline" and record is not None:
                recorded = record.report.suite(s.name)
                rep = recorded if recorded is not None and recorded.key == key else None
            if rep is not None:
                reports[role, s.name] = rep
            elif target.runnable:
                todo.append((role, s, target, key))
            else:
                stale.append(s.name)
    if todo:
        from .runner import RunJob, run_jobs

        items = {s.name: load_items(s, ctx.project_dir) for s in {t[1].name: t[1] for t in todo}.values()}
        # Run each key once: a baseline identical to the candidate shares its runs.
        unique = list({key: (s, t) for _, s, t, key in todo}.items())
        jobs = [RunJob(t, s, specs[s.name], items[s.name], key, str(files[s.name][0])) for key, (s, t) in unique]
        done = {rep.key: rep for rep in run_jobs(jobs, concurrency=concurrency, say=say, progress=progress)}
        for rep in done.values():
            cache.put(rep)
        for role, s, _, key in todo:
            reports[role, s.name] = done[key]

    stale_note = "the recorded baseline's reports are for other suite data and its model or adapter is gone"
    verdicts = [
        judge(s, specs[s.name], reports["candidate", s.name], reports.get(("baseline", s.name)),
              require_significance=significance,
              no_baseline=stale_note if s.name in stale else source)
        for s in suites
    ]
    cand_report = _report(cand, [reports["candidate", s.name] for s in suites])
    base_report = _report(base, [reports[k] for s in suites if (k := ("baseline", s.name)) in reports]) if base else None
    failed = [v.suite for v in verdicts if not v.passed]
    verdict = "regression" if failed else "pass"
    message = (f"{len(failed)} of {len(verdicts)} suite(s) failed: {', '.join(failed)}" if failed
               else f"all {len(verdicts)} suite(s) passed")
    gate_key = hashlib.sha256(
        msgspec.json.encode([sorted(r.key for r in reports.values()), [msgspec.to_builtins(s) for s in suites],
                             significance, source])
    ).hexdigest()
    extra = {
        "subject": subject,
        "candidate": cand.describe,
        "cache": {"hits": cache.hits, "misses": cache.misses, "ran": [f"{r}:{s.name}" for r, s, _, _ in todo]},
        "seconds": round(time.perf_counter() - started, 3),
    }
    if update_baseline:
        path = write_record(ctx, subject, cand_report)
        extra["recorded_baseline"] = str(path)
        message += f"; recorded the candidate as the baseline of {subject} in {path.name}"
    result = GateResult(verdict=verdict, candidate=cand_report, baseline=base_report, suites=verdicts,
                        cache_key=gate_key, message=message, extra=extra, baseline_source=source)
    if out is not None:
        write_json(out, result)
    return result


def summary_lines(result: GateResult) -> list[str]:
    """A short plain-text summary (logs, the pipeline); the CLI prints a table instead."""
    lines = [f"eval gate: {result.verdict.upper()}: {result.message}", f"baseline: {result.baseline_source or '-'}"]
    for v in result.suites:
        mark = "ok  " if v.passed else "FAIL"
        lines.append(f"  {mark} {v.suite} {v.metric}={_fmt(v.candidate)} baseline={_fmt(v.baseline)} delta={_fmt(v.delta)}: {v.reason}")
    return lines


def run(job: EvalJob, conn=None, *, say: Callable[[str], None] | None = None,
        progress: Callable[[int, int], None] | None = None) -> GateResult:
    """The pipeline's eval stage: gate `job.candidate_dir` for `job.specialist`.

    Writes `<output_dir>/gate-result.json` whatever the verdict (an "error" result for
    bad input, then raises GateInputError, a PermanentError: retrying cannot fix input).
    `conn` (the worker's Redis connection) is not needed: the gate reads files only.
    """
    out = Path(job.output_dir) / RESULT_FILE
    try:
        result = evaluate_gate(Path(job.project_file), candidate=Path(job.candidate_dir), specialist=job.specialist,
                               only_suites=job.suites, threshold=job.threshold,
                               require_significance=job.require_significance, rules=job.rules, out=out, say=say,
                               progress=progress)
    except GateInputError as e:
        write_json(out, error_result(str(e)))
        raise
    for line in summary_lines(result):
        log.info("%s", line)
    return result
