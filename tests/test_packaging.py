"""Layout guards: queue/ never shadows the stdlib, and tinygpt.* imports from wheels too."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"runtime": "tinygpt.runtime", "queue": "tinygpt.queue", "workers": "tinygpt.workers"}


def test_stdlib_queue_wins_with_repo_root_first_on_sys_path():
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        "import queue, concurrent.futures.thread; "
        "assert hasattr(queue, 'SimpleQueue'), queue.__file__; "
        "import tinygpt.queue, tinygpt.queue.embedded; print(queue.__file__); print(tinygpt.queue.embedded.__file__)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    stdlib_file, ours = r.stdout.split()
    assert "site-packages" not in stdlib_file and not stdlib_file.startswith(str(REPO))
    assert ours == os.path.join(str(REPO), "queue", "embedded.py")


def test_queue_folder_has_no_init_file():
    # A regular package named `queue` at the repo root would beat the stdlib module on
    # sys.path; as a namespace portion it loses to it, and setuptools still maps it.
    assert not (REPO / "queue" / "__init__.py").exists()


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set(FOLDERS.values())
    for folder, namespace in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([namespace, *rel.parts]))
    assert found == listed


@pytest.mark.slow
def test_built_wheel_installs_and_imports(tmp_path):
    """Build a wheel, install it into a fresh venv (no deps) and import tinygpt.* from it."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(REPO)],
        check=True,
    )
    (wheel,) = wheel_dir.glob("tinygpt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tinygpt/queue/embedded.py" in names
    assert "tinygpt/runtime/models/templates/chatml_tools.jinja" in names
    assert not any(n.startswith(("queue/", "runtime/", "tests/")) for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Reuse this environment's dependencies through a plain path entry: .pth files
    # inside it (such as the editable install's finder) are not processed, so the
    # only tinygpt the new venv can import is the wheel's.
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    Path(site, "deps.pth").write_text(deps + "\n")
    with zipfile.ZipFile(wheel) as zf:  # a wheel is a zip laid out for site-packages
        zf.extractall(site)
    code = (
        "import queue, tinygpt.queue.embedded, tinygpt.runtime.contracts as c; "
        "import concurrent.futures.thread; print(tinygpt.queue.embedded.__file__)"
    )
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert str(venv) in r.stdout


def test_ci_runs_the_readme_test_command_which_lints_first():
    # CI must be what a newcomer runs: the README's test command, verbatim, with ruff
    # (its rules in pyproject's [tool.ruff]) failing the run before pytest starts.
    readme = (REPO / "README.md").read_text()
    ci_last = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip()][-1]
    assert f"```bash\n{ci_last}\n```" in readme
    assert "&& .venv/bin/ruff check . && .venv/bin/python -m pytest" in ci_last
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert any(dep.startswith("ruff") for dep in config["project"]["optional-dependencies"]["test"])
    assert config["tool"]["ruff"]["lint"]["select"]
    pins = (REPO / ".ci" / "constraints.txt").read_text().split()
    assert any(p.startswith("ruff==") for p in pins)
