"""Resolving pins and pulling packages: directory, file:// and http:// registries, sha256
verification, refusals that leave the cache alone, registries that are down."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.registry_support import FAKE_BASE, free_port, http_registry, publish_fake, write_project
from tinygpt.runtime.contracts.project import ProjectPins, SpecialistPin
from tinygpt.runtime.contracts.specialist import RegistryIndex
from tinygpt.runtime.project import load_project
from tinygpt.runtime.registry import state
from tinygpt.runtime.registry.errors import IntegrityError, NotFound, PackageError, RegistryUnavailable
from tinygpt.runtime.registry.fetch import DirSource, HttpSource, cached_dir, pull, source_for
from tinygpt.runtime.registry.index import read_index
from tinygpt.runtime.registry.pins import pull_pins, record_outcomes
from tinygpt.runtime.registry.resolve import open_registries, resolve_pin


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def registry(tmp_path):
    reg = tmp_path / "reg"
    for v, seed in (("1", 1), ("2", 2), ("10", 3)):
        publish_fake(reg, "mail", v, tmp_path / "adapters", seed=seed)
    publish_fake(reg, "sql", "1", tmp_path / "adapters", seed=4)
    return reg


def entry(reg, name, version):
    return next(e for e in read_index(reg).specialists if (e.name, e.version) == (name, version))


def tamper(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_pull_from_a_directory_verifies_and_reuses_the_cached_copy(registry, home):
    e = entry(registry, "mail", "2")
    got = pull(DirSource(registry), e)
    assert got.downloaded and got.path == str(home / "specialists" / "mail" / "2")
    assert got.lock.digest == e.digest
    assert sorted(p.name for p in cached_dir("mail", "2").iterdir()) == sorted(p.name for p in (registry / "mail" / "2").iterdir())
    assert not pull(DirSource(registry), e).downloaded
    # A damaged copy in the cache is never used: it is downloaded again.
    tamper(cached_dir("mail", "2") / "adapters.safetensors")
    again = pull(DirSource(registry), e)
    assert again.downloaded and again.lock == got.lock


def test_pull_over_http_and_file_urls(registry, tmp_path):
    with http_registry(registry) as url:
        source = source_for(url, tmp_path)
        assert isinstance(source, HttpSource)
        assert [e.version for e in source.index().specialists if e.name == "mail"] == ["1", "2", "10"]
        got = pull(source, entry(registry, "mail", "10"))
        assert got.downloaded and got.lock.version == "10"
    source = source_for(registry.as_uri(), tmp_path / "elsewhere")
    assert isinstance(source, DirSource) and source.index() == read_index(registry)
    relative = source_for("reg", tmp_path)
    assert relative.index() == read_index(registry)


def test_a_tampered_file_is_refused_and_nothing_reaches_the_cache(registry, tmp_path):
    pull(DirSource(registry), entry(registry, "mail", "1"))
    tamper(registry / "mail" / "2" / "adapters.safetensors")
    with http_registry(registry) as url:
        with pytest.raises(IntegrityError, match=r"mail@2 from http://127.0.0.1:\d+: adapters.safetensors has sha256 \w+, its lock says \w+: refused"):
            pull(HttpSource(url), entry(registry, "mail", "2"))
    with pytest.raises(IntegrityError, match="adapters.safetensors has sha256"):
        pull(DirSource(registry), entry(registry, "mail", "2"))
    assert not cached_dir("mail", "2").exists()
    assert [p.name for p in cached_dir("mail", "1").parent.iterdir()] == ["1"]  # no staging leftovers


def test_a_lock_or_index_that_disagrees_is_refused(registry):
    e = entry(registry, "mail", "1")
    lock_file = registry / "mail" / "1" / "lock.json"
    lock = json.loads(lock_file.read_text())
    lock["files"]["README.md"] = "0" * 64
    lock_file.write_text(json.dumps(lock))
    with pytest.raises(IntegrityError, match="does not match the files it lists"):
        pull(DirSource(registry), e)
    with pytest.raises(IntegrityError, match="not the pinned sha256"):
        pull(DirSource(registry), entry(registry, "mail", "2"), pin_sha256="1" * 64)
    bad = e.__class__(name="mail", version="1", digest=e.digest, path="../../etc")
    with pytest.raises(PackageError, match="unsafe path"):
        pull(DirSource(registry), bad)


def test_resolving_pins(registry, tmp_path):
    regs = open_registries(ProjectPins(name="p", registries=["reg"]), tmp_path)
    newest = resolve_pin(SpecialistPin(name="mail"), regs)
    assert newest.entry.version == "10"  # published last
    assert resolve_pin(SpecialistPin(name="mail", version="2"), regs).entry.version == "2"
    digest = entry(registry, "mail", "1").digest
    assert resolve_pin(SpecialistPin(name="mail", sha256=digest), regs).entry.version == "1"
    with pytest.raises(IntegrityError, match="no published package has that digest"):
        resolve_pin(SpecialistPin(name="mail", version="2", sha256=digest), regs)
    with pytest.raises(NotFound, match=r"mail@7 is in no registry \(searched: reg\); published versions: 1, 2, 10"):
        resolve_pin(SpecialistPin(name="mail", version="7"), regs)
    with pytest.raises(NotFound, match="weather .newest. is in no registry"):
        resolve_pin(SpecialistPin(name="weather"), regs)
    with pytest.raises(PackageError, match="trained on another base model"):
        resolve_pin(SpecialistPin(name="mail"), regs, base_digest="c" * 64)
    assert resolve_pin(SpecialistPin(name="mail"), regs, base_digest=FAKE_BASE).entry.version == "10"


def test_a_registry_that_is_down_is_named_and_the_next_one_is_used(registry, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryUnavailable, match=f"registry {down} is unreachable"):
        HttpSource(down, timeout=5).index()
    with pytest.raises(RegistryUnavailable, match="does not exist"):
        DirSource(tmp_path / "missing").index()
    regs = open_registries(ProjectPins(name="p", registries=[down, "missing", "reg", "ftp://x"]), tmp_path, timeout=5)
    assert [bool(r.index) for r in regs] == [False, False, True, False]
    assert "unsupported scheme 'ftp'" in regs[3].error
    assert resolve_pin(SpecialistPin(name="sql"), regs).entry.version == "1"
    with pytest.raises(NotFound, match=f"unavailable: registry {down} is unreachable"):
        resolve_pin(SpecialistPin(name="weather"), regs)


def test_pull_pins_records_state_and_falls_back_to_the_last_good_copy(registry, tmp_path):
    project = write_project(tmp_path, [{"name": "mail"}, {"name": "sql", "version": "1"}, {"name": "nope"}], ["reg"])
    pins = load_project(project)
    outcomes = pull_pins(pins, project)
    record_outcomes(project, outcomes, project=pins.name)
    assert [(o.name, o.version, o.downloaded, bool(o.error)) for o in outcomes] == [
        ("mail", "10", True, False), ("sql", "1", True, False), ("nope", "", False, True)]
    recorded = state.project_state(project)
    assert recorded.project == "demo" and recorded.specialist("mail").current.version == "10"
    assert "nope (newest) is in no registry" in recorded.specialist("nope").error

    # The registry goes away: the last good copies in the cache keep serving, with the reason.
    shutil.rmtree(registry)
    outcomes = pull_pins(pins, project)
    assert [(o.version, o.fallback) for o in outcomes[:2]] == [("10", True), ("1", True)]
    assert all("does not exist" in o.error for o in outcomes)
    # ... unless the pin no longer accepts them.
    pins2 = load_project(write_project(tmp_path, [{"name": "mail", "version": "2"}], ["reg"]))
    (o,) = pull_pins(pins2, project)
    assert not o.usable and "does not exist" in o.error


def test_an_index_that_is_not_an_index_is_a_clear_error(tmp_path):
    reg = tmp_path / "reg"
    reg.mkdir()
    (reg / "index.json").write_text('{"specialists": [{"name": 1}]}')
    with pytest.raises(RegistryUnavailable, match=r"unreadable index .*Expected `str`, got `int`"):
        DirSource(reg).index()
    (reg / "index.json").write_text(json.dumps({"schema_version": 1, "specialists": []}))
    assert DirSource(reg).index() == RegistryIndex()


def test_a_version_being_served_is_not_pulled_again(registry, tmp_path):
    project = write_project(tmp_path, [{"name": "mail"}], ["reg"])
    pins = load_project(project)
    (first,) = pull_pins(pins, project)
    (second,) = pull_pins(pins, project, serving={"mail": (first.version, first.digest)})
    assert (second.version, second.digest, second.path, second.downloaded) == (first.version, first.digest, first.path, False)
    # Nothing re-hashed it: a damaged cached copy goes unnoticed while it is only kept in memory...
    tamper(cached_dir("mail", "10") / "README.md")
    (kept,) = pull_pins(pins, project, serving={"mail": (first.version, first.digest)})
    assert not kept.error
    # ... and is replaced as soon as it has to be loaded again.
    (fresh,) = pull_pins(pins, project)
    assert fresh.downloaded and not fresh.error


def test_status_shows_what_was_resolved_and_the_problems(registry, tmp_path, capsys):
    import argparse

    from rich.console import Console

    from tinygpt.runtime.registry.status import section

    project = write_project(tmp_path, [{"name": "mail"}, {"name": "ghost"}], ["reg"])
    record_outcomes(project, pull_pins(load_project(project), project), project="demo")
    state.record_project_error(project, "tinygpt.project.json: not valid JSON")
    data = section(None, argparse.Namespace(limit=10))["specialists"]
    (p,) = data["projects"]
    assert p["error"] == "tinygpt.project.json: not valid JSON"
    assert [(s["name"], (s["current"] or {}).get("version"), bool(s["error"])) for s in p["specialists"]] == [
        ("ghost", None, True), ("mail", "10", False)]
    section(Console(width=300), argparse.Namespace(limit=10))
    out = capsys.readouterr().out
    assert "rejected, the last good pins stay in force" in out and "ghost (newest) is in no registry" in out


def test_status_names_a_project_without_specialists(tmp_path, capsys):
    """`up` records a project even when it pins nothing: its name, never "specialists of ?"."""
    import argparse

    from rich.console import Console

    from tinygpt.runtime.registry.status import section

    project = write_project(tmp_path, [], ["reg"])
    state.record_project_error(project, "")
    section(Console(width=300), argparse.Namespace(limit=10))
    out = capsys.readouterr().out
    assert "specialists of demo (" in out and "none pinned" in out and "?" not in out


def test_a_star_pin_takes_only_versions_gated_for_exactly_their_weights(tmp_path):
    from tests.registry_support import fake_adapter, passing_gate
    from tinygpt.runtime.registry.publish import publish

    reg = tmp_path / "gated"
    publish_fake(reg, "mail", "1", tmp_path / "a")  # gated: pass for these weights
    publish_fake(reg, "mail", "2", tmp_path / "a", seed=2, gated=False)  # `publish --no-gate`
    # A passing report, but for other weights than the package holds.
    tested, shipped = fake_adapter(tmp_path / "tested", seed=3), fake_adapter(tmp_path / "shipped", seed=4)
    publish(shipped, reg, name="mail", version="3", base_model="tiny", base_digest=FAKE_BASE, gate=passing_gate(tested, "mail"))
    regs = open_registries(ProjectPins(name="p", registries=[str(reg)]), tmp_path)
    assert resolve_pin(SpecialistPin(name="mail"), regs).entry.version == "1"
    # An exact pin still takes what it names: the operator's explicit choice.
    assert resolve_pin(SpecialistPin(name="mail", version="2"), regs).entry.version == "2"
    from tinygpt.runtime.contracts.io import write_json

    # Without the gated version, "*" refuses rather than serve what no gate passed.
    index = read_index(reg)
    write_json(reg / "index.json", RegistryIndex(specialists=[e for e in index.specialists if e.version != "1"]))
    regs = open_registries(ProjectPins(name="p", registries=[str(reg)]), tmp_path)
    with pytest.raises(NotFound) as e:
        resolve_pin(SpecialistPin(name="mail"), regs)
    assert "3: its gate result is for other weights" in str(e.value) and "2: published without an eval gate" in str(e.value)
