"""The model card (`README.md` of a package): what a specialist is, how it was made, how it did.

Written from the manifest, the gate's result and the training record, so the card never
says anything the package's other files do not back up.
"""

from __future__ import annotations

import json
from datetime import datetime, UTC

from ..contracts.dataset import DatasetManifest
from ..contracts.evals import GateResult
from ..contracts.specialist import SpecialistManifest
from ..contracts.training import TrainingRecord


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _cell(text: str) -> str:
    # A "|" or a newline inside a cell would break the Markdown table.
    return text.replace("|", "\\|").replace("\n", " ")


def _data(m: SpecialistManifest, record: TrainingRecord | None, dataset: DatasetManifest | None) -> list[str]:
    if record is None:
        return ["Not recorded: this adapter was published without a training record."]
    lines = [f"- dataset: `{m.dataset or record.dataset_name}` (digest `{record.dataset_digest[:16]}`)"]
    if dataset is not None:
        lines.append(f"- {dataset.trajectories} trajectories, {dataset.rows} rows, {dataset.tokens} tokens "
                     f"({dataset.trained_tokens} of them trained on: the tokens the model itself sampled)")
        if dataset.dropped:
            lines.append("- left out: " + ", ".join(f"{k} {v}" for k, v in sorted(dataset.dropped.items())))
    if m.trained_tokens:
        lines.append(f"- tokens seen in training: {m.trained_tokens}")
    lines.append(f"- {record.steps_done} optimizer steps (kept step {record.best_step}), seed {record.seed}, "
                 f"{record.duration_s:.0f} s")
    if record.teacher_model:
        lines.append(f"- teacher: `{record.teacher_model}` (`{record.teacher_digest[:16]}`)")
    return lines


def _evals(m: SpecialistManifest, gate: GateResult | None) -> list[str]:
    if gate is None:
        return ["Not evaluated: published by hand without the eval gate (`--no-gate`)."]
    lines = [f"Eval gate verdict: **{gate.verdict}** ({gate.message or '-'}); baseline: {gate.baseline_source or '-'}.", ""]
    if gate.suites:
        lines += ["| suite | metric | this version | baseline | delta | passed | why |", "|---|---|---|---|---|---|---|"]
        for v in gate.suites:
            lines.append(f"| {_cell(v.suite)} | {_cell(v.metric)} | {_num(v.candidate)} | {_num(v.baseline)} | "
                         f"{_num(v.delta)} | {'yes' if v.passed else 'no'} | {_cell(v.reason)} |")
    else:
        lines.append("The project declares no eval suites.")
    lines += ["", "The full report is `eval_report.json` in this package."]
    return lines


def render_card(m: SpecialistManifest, *, gate: GateResult | None, record: TrainingRecord | None,
                dataset: DatasetManifest | None) -> str:
    """The Markdown model card of one package."""
    created = datetime.fromtimestamp(m.created_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    use = m.intended_use or (
        f"Serve it on `{m.base_model}` as model `{m.name}` (or `{m.name}@{m.version}`) for the task its eval suites "
        "describe. It is a small adapter trained on recorded sessions of one project: expect it to do that "
        "project's task better than the base model and anything else no better."
    )
    hyper = json.dumps(m.hyperparameters, indent=2, sort_keys=True)
    parts = [
        f"# {m.name} {m.version}",
        "",
        f"A `{m.method}` specialist for `{m.base_model}`, published {created}.",
        "",
        "## Base model",
        f"- `{m.base_model}`, digest `{m.base_digest}`",
        "- the adapter is refused on any other base weights",
        "",
        "## Training data",
        *_data(m, record, dataset),
        "",
        "## Method and hyperparameters",
        f"Method: `{m.method}`.",
        "",
        "```json",
        hyper,
        "```",
        "",
        "## Evaluation",
        *_evals(m, gate),
        "",
        "## Intended use",
        use,
        "",
        "## Use it",
        "Pin it in `tinygpt.project.json`:",
        "",
        "```json",
        json.dumps({"specialists": [{"name": m.name, "version": m.version}]}),
        "```",
        "",
        "`lock.json` holds the sha256 of every file in this package; `tinygpt pull` refuses a package whose "
        "files do not match it.",
        "",
    ]
    return "\n".join(parts)
