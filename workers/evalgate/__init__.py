"""The eval gate stage: a candidate specialist against its baseline, suite by suite.

    evaluate_gate(project_file, candidate=DIR | specialist=NAME, ...) -> GateResult
    run(job: EvalJob, conn=None) -> GateResult         the pipeline's eval stage

One module a step, in the order the gate uses them:

    suites.py       the suites to run (declared, plus the promotion rules' from rules.py)
    rows.py         the row, item and output contracts; GateInputError
    bfcl.py         BFCL-format suites (the shipped general_tools/ data)
    environment.py  environment suites (an environment's held-out tasks)
    targets.py      candidate and baseline: model, adapter, digests, baseline records
    cache.py        suite reports by content hash (the cache-hit path never imports MLX)
    runner.py       answers through the runtime (runtime/stack.py builds it)
    scorers.py      per-item scores, custom scorers
    stats.py        pure-Python statistics (intervals, paired tests)
    gate.py         verdicts, the result file, the stage's `run`
"""

from .gate import RESULT_FILE, error_result, evaluate_gate, judge, run, summary_lines
from .rows import GateInputError

__all__ = ["RESULT_FILE", "GateInputError", "error_result", "evaluate_gate", "judge", "run", "summary_lines"]
