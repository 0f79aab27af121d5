"""The `tinygpt` dispatcher: lazy imports, real subcommands, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinygpt.runtime import cli

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tinygpt.runtime.cli", *args], capture_output=True, text=True, cwd=cwd, env=full_env
    )


def test_help_lists_every_command_and_imports_no_mlx():
    code = (
        "import sys; from tinygpt.runtime import cli; cli.main(['--help']); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'llguidance', 'transformers')]; "
        "print('HEAVY', bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for name in cli.COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "tinygpt " + name in out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_command_modules_import_without_mlx(name):
    module = cli.COMMANDS[name][0]
    code = (
        f"import sys, tinygpt.runtime.commands.{module} as m; import argparse; m.configure(argparse.ArgumentParser()); "
        "print([x for x in sys.modules if x.split('.')[0] in ('mlx', 'mlx_lm')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_command_exits_2():
    r = run_cli("frobnicate")
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr


def test_schema_project_prints_a_json_schema():
    r = run_cli("schema", "project")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    props = schema["$defs"]["ProjectPins"]["properties"]
    assert {"base_model", "specialists", "registries", "eval_suites", "gate"} <= set(props)


def test_validate_good_and_bad_files(tmp_path):
    assert run_cli("validate", str(REPO / "tinygpt.project.json")).returncode == 0
    bad = tmp_path / "tinygpt.project.json"
    bad.write_text('{"name": "demo", "base_model": 7}')
    r = run_cli("validate", str(bad))
    assert r.returncode == 2
    assert str(bad) in r.stderr and "$.base_model" in r.stderr and "Expected `str`" in r.stderr


def test_validate_unknown_kind_exits_2(tmp_path):
    f = tmp_path / "mystery.json"
    f.write_text("{}")
    r = run_cli("validate", str(f))
    assert r.returncode == 2 and "--kind" in r.stderr


def test_status_json_shows_home_blas_models_and_project_without_mlx(tmp_path):
    code = (
        "import sys; from tinygpt.runtime import cli; cli.main(['status', '--json']); "
        "print('MLX', [m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')])"
    )
    env = {**os.environ, "TINYGPT_HOME": str(tmp_path / "home")}
    env.pop("REDIS_URL", None)
    (tmp_path / "tinygpt.project.json").write_text('{"name": "demo", "specialists": [{"name": "fs", "version": "2"}]}')
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    payload, _, tail = r.stdout.rpartition("\n" + "MLX")
    data = json.loads(payload)
    assert data["home"] == str(tmp_path / "home")
    assert "active" in data["blas"] and data["models"] == []
    assert data["project"]["name"] == "demo" and data["project"]["specialists"] == ["fs@2"]
    assert data["pipeline"]["redis"]["reachable"] is False  # status never starts a server
    assert tail.strip() == "[]"
