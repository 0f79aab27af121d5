"""The adapter format's one home: its refusals are its own error, each layer answers them its way."""

from __future__ import annotations

import json

import pytest

from tinygpt.runtime.models.adapter_format import AdapterFormatError, read_adapter, recorded_base
from tinygpt.runtime.registry.errors import PackageError
from tinygpt.runtime.registry.package import recorded_base as package_recorded_base
from tinygpt.runtime.serving import adapters as served
from tinygpt.runtime.serving.protocol import ApiError


def write_adapter(path, config: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapters.safetensors").write_bytes(b"weights")


CONFIG = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": {"rank": 4, "scale": 10.0}}


def test_a_bad_adapter_is_an_adapter_format_error_not_an_http_one(tmp_path):
    with pytest.raises(AdapterFormatError, match="adapter_config.json not found") as e:
        read_adapter(tmp_path, "x", None, "")
    assert not isinstance(e.value, ApiError)
    write_adapter(tmp_path / "a", {**CONFIG, "fine_tune_type": "full"})
    with pytest.raises(AdapterFormatError, match="fine_tune_type 'full' is not one of"):
        read_adapter(tmp_path / "a", "x", None, "")


def test_serving_answers_the_same_refusal_with_400(tmp_path):
    with pytest.raises(ApiError) as e:
        served.read_adapter(tmp_path, "x", None, "")
    assert e.value.status == 400 and "adapter_config.json not found" in e.value.message
    assert isinstance(e.value, AdapterFormatError)  # what the registry's swapper catches


def test_a_good_adapter_is_described_with_its_digest(tmp_path):
    write_adapter(tmp_path / "a", CONFIG)
    info = read_adapter(tmp_path / "a", "x", None, "")
    assert (info.method, info.rank, info.version) == ("lora", 4, info.digest[:12]) and len(info.digest) == 64


def test_recorded_base_reads_the_config_and_each_layer_names_its_error(tmp_path):
    write_adapter(tmp_path / "a", {**CONFIG, "tinygpt": {"base_model": "m", "base_digest": "d" * 64}})
    assert recorded_base(tmp_path / "a") == ("m", "d" * 64)
    write_adapter(tmp_path / "b", CONFIG)
    assert recorded_base(tmp_path / "b") is None
    (tmp_path / "c").mkdir()
    with pytest.raises(AdapterFormatError, match="unreadable"):
        recorded_base(tmp_path / "c")
    with pytest.raises(PackageError, match="unreadable"):
        package_recorded_base(tmp_path / "c")
