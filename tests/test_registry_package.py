"""Packages and the index: what a package holds, lock last, immutability, verification, publish."""

from __future__ import annotations

import json
import threading

import pytest

from tests.registry_support import FAKE_BASE, fake_adapter, publish_fake
from tinygpt.runtime.contracts.evals import EvalReport, GateResult, SuiteReport, SuiteVerdict
from tinygpt.runtime.contracts.io import read_json, write_json
from tinygpt.runtime.contracts.specialist import RegistryEntry, SpecialistLock, SpecialistManifest
from tinygpt.runtime.contracts.training import TRAINING_RECORD, TrainingConfig, TrainingRecord
from tinygpt.runtime.registry.errors import IntegrityError, PackageError
from tinygpt.runtime.registry.index import add_entry, read_index
from tinygpt.runtime.registry.package import build_package, lock_digest, verify_package
from tinygpt.runtime.registry.publish import check_gate, publish


def suite(name: str, value: float) -> SuiteReport:
    return SuiteReport(suite=name, metric="accuracy", direction="higher", n=20, passes=1, mean=value, std=0.1,
                       stderr=0.02, ci95=(value - 0.05, value + 0.05))


def gate_for(adapter, verdict="pass", digest=None) -> GateResult:
    from tinygpt.runtime.models.adapter_format import read_adapter

    digest = digest or read_adapter(adapter, "x", None, "").digest
    return GateResult(
        verdict=verdict,
        candidate=EvalReport(model="tiny", model_digest=FAKE_BASE, adapter=str(adapter), adapter_digest=digest,
                             suites=[suite("mail-tools", 0.85)]),
        baseline=EvalReport(model="tiny", model_digest=FAKE_BASE, suites=[suite("mail-tools", 0.6)]),
        suites=[SuiteVerdict(suite="mail-tools", candidate=0.85, baseline=0.6, delta=0.25, threshold=0.02, passed=True,
                             reason="better than the baseline by 0.25 | clear", metric="accuracy")],
        message="all 1 suite(s) passed",
        baseline_source="base model",
        extra={"subject": "mail"},
    )


def with_training_record(adapter, dataset_dir):
    """Give `adapter` the record a real training run leaves, and its dataset a manifest."""
    dataset_dir.mkdir()
    (dataset_dir / "manifest.json").write_text(json.dumps(
        {"name": "mail-sessions", "digest": "d" * 64, "base_model": "tiny", "trajectories": 40, "rows": 120,
         "tokens": 51234, "trained_tokens": 9876}))
    record = TrainingRecord(
        specialist="mail", method="lora", base_model="tiny", base_path="/m/tiny", base_digest=FAKE_BASE,
        trained_base_path="/m/tiny", trained_base_digest=FAKE_BASE, dataset_dir=str(dataset_dir),
        dataset_name="mail-sessions", dataset_digest="d" * 64, dataset_manifest_sha256="e" * 64,
        hyperparameters=TrainingConfig(steps=60, lora_rank=8), seed=7, run_key="k" * 64, adapter_sha256="f" * 64,
        steps_done=60, best_step=50, metrics={"trained_tokens": 9876.0, "val_loss": 1.25},
    )
    write_json(adapter / TRAINING_RECORD, record)
    return adapter


def test_a_package_holds_adapter_card_report_manifest_and_a_lock_of_every_file(tmp_path):
    adapter = with_training_record(fake_adapter(tmp_path / "run"), tmp_path / "dataset")
    gate = gate_for(adapter)
    built = build_package(adapter, tmp_path / "reg", name="mail", version="1", gate=gate, intended_use="Mail tools.")
    pkg = tmp_path / "reg" / "mail" / "1"
    assert built.created and built.path == str(pkg)
    names = sorted(p.name for p in pkg.iterdir())
    assert names == ["README.md", "adapter_config.json", "adapters.safetensors", "eval_report.json", "lock.json",
                     "manifest.json", "training_record.json"]
    lock = read_json(pkg / "lock.json", SpecialistLock)
    assert set(lock.files) == set(names) - {"lock.json"}
    assert lock.digest == lock_digest(lock.files, lock.sizes) == built.lock.digest
    assert lock.sizes == {n: (pkg / n).stat().st_size for n in lock.files}  # the caps downloads are held to
    # The lock is written last: no other file of the package is newer.
    assert all((pkg / n).stat().st_mtime_ns <= (pkg / "lock.json").stat().st_mtime_ns for n in names)
    manifest = read_json(pkg / "manifest.json", SpecialistManifest)
    assert (manifest.base_model, manifest.base_digest, manifest.method) == ("tiny", FAKE_BASE, "lora")
    assert (manifest.dataset, manifest.dataset_rows, manifest.dataset_tokens, manifest.trained_tokens) == ("mail-sessions", 120, 51234, 9876)
    assert manifest.metrics["mail-tools/accuracy"] == 0.85 and manifest.baseline_metrics["mail-tools/accuracy"] == 0.6
    assert read_json(pkg / "eval_report.json", GateResult).verdict == "pass"
    card = (pkg / "README.md").read_text()
    for expected in (FAKE_BASE, "mail-sessions", "120 rows, 51234 tokens", '"lora_rank": 8', "| mail-tools | accuracy | 0.85 | 0.6 | 0.25 | yes |",
                     "better than the baseline by 0.25 \\| clear", "Mail tools.", "base model"):
        assert expected in card, expected
    assert verify_package(pkg, name="mail", version="1", digest=lock.digest) == lock


def test_versions_are_immutable_and_republishing_the_same_weights_is_a_no_op(tmp_path):
    adapter = fake_adapter(tmp_path / "a", seed=1)
    first = build_package(adapter, tmp_path / "reg", name="mail", version="1", base_digest=FAKE_BASE)
    again = build_package(adapter, tmp_path / "reg", name="mail", version="1", base_digest=FAKE_BASE)
    assert not again.created and again.lock == first.lock
    with pytest.raises(PackageError, match="already published .* with other weights"):
        build_package(fake_adapter(tmp_path / "b", seed=2), tmp_path / "reg", name="mail", version="1", base_digest=FAKE_BASE)
    with pytest.raises(PackageError, match="invalid version"):
        build_package(adapter, tmp_path / "reg", name="mail", version="../2", base_digest=FAKE_BASE)
    with pytest.raises(PackageError, match="invalid specialist name"):
        build_package(adapter, tmp_path / "reg", name="Mail!", version="2", base_digest=FAKE_BASE)
    with pytest.raises(PackageError, match="records no base model digest"):
        build_package(adapter, tmp_path / "reg", name="mail", version="2")


def test_a_folder_without_a_lock_is_incomplete_and_replaced(tmp_path):
    leftover = tmp_path / "reg" / "mail" / "1"
    leftover.mkdir(parents=True)
    (leftover / "adapters.safetensors").write_bytes(b"half written")
    with pytest.raises(PackageError, match="no lock.json"):
        verify_package(leftover)
    built = build_package(fake_adapter(tmp_path / "a"), tmp_path / "reg", name="mail", version="1", base_digest=FAKE_BASE)
    assert built.created
    verify_package(leftover)


def test_verification_catches_changed_missing_and_extra_files(tmp_path):
    built = build_package(fake_adapter(tmp_path / "a"), tmp_path / "reg", name="mail", version="1", base_digest=FAKE_BASE)
    pkg = tmp_path / "reg" / "mail" / "1"
    weights = pkg / "adapters.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="adapters.safetensors has sha256 .* the lock says"):
        verify_package(pkg)
    weights.write_bytes(original)
    (pkg / "extra.py").write_text("print('hi')")
    with pytest.raises(IntegrityError, match="files not in the lock: extra.py"):
        verify_package(pkg)
    (pkg / "extra.py").unlink()
    with pytest.raises(IntegrityError, match="expected"):
        verify_package(pkg, digest="0" * 64)
    assert verify_package(pkg).digest == built.lock.digest


def test_the_index_takes_concurrent_publishers_without_losing_entries(tmp_path):
    reg = tmp_path / "reg"
    reg.mkdir()

    def add(i):
        add_entry(reg, RegistryEntry(name=f"s{i % 3}", version=str(i), digest=f"{i:064x}", path=f"s{i % 3}/{i}"))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = read_index(reg).specialists
    assert sorted(int(e.version) for e in entries) == list(range(12))
    assert add_entry(reg, entries[0]) is False
    with pytest.raises(PackageError, match="versions are immutable"):
        add_entry(reg, RegistryEntry(name=entries[0].name, version=entries[0].version, digest="9" * 64, path="x/y"))


def test_publish_indexes_takes_the_next_version_and_is_idempotent(tmp_path):
    reg = tmp_path / "reg"
    one = publish_fake(reg, "mail", "1", tmp_path, seed=1)
    adapter = fake_adapter(tmp_path / "next", seed=2)
    two = publish(adapter, reg, name="mail", base_digest=FAKE_BASE)
    assert two.version == "2" and two.created
    # A retried job with the same weights finds its version instead of making a third.
    again = publish(adapter, reg, name="mail", base_digest=FAKE_BASE)
    assert (again.version, again.created, again.digest) == ("2", False, two.digest)
    entries = read_index(reg).specialists
    assert [(e.version, e.digest, e.path, e.base_digest) for e in entries] == [
        ("1", one.digest, "mail/1", FAKE_BASE), ("2", two.digest, "mail/2", FAKE_BASE)]


def test_only_a_passing_gate_for_these_weights_publishes(tmp_path):
    adapter = fake_adapter(tmp_path / "a")
    check_gate(gate_for(adapter), adapter, "mail")
    with pytest.raises(PackageError, match="did not pass"):
        check_gate(gate_for(adapter, verdict="regression"), adapter, "mail")
    with pytest.raises(PackageError, match="for other weights"):
        check_gate(gate_for(adapter, digest="0" * 64), adapter, "mail")
    with pytest.raises(PackageError, match="is for specialist 'mail', not 'sql'"):
        check_gate(gate_for(adapter), adapter, "sql")
