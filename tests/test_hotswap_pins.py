"""The runtime follows its pins: start-up load, pin file changes, "published" notices, bad
input that must not take a working specialist away, rollback."""

from __future__ import annotations

import argparse
import json

import openai
import pytest

from tests.hotswap_support import ask, following, make_adapters, publish_version, serving, wait_until
from tests.registry_support import http_registry, write_project
from tinygpt.runtime.commands import rollback
from tinygpt.runtime.registry import state
from tinygpt.runtime.registry.notify import channel
from tinygpt.runtime.serving.adapters import BASE


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    return make_adapters(tmp_path_factory.mktemp("adapters"), tiny_model_dir, 3)


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_model_dir, adapters):
    """A project pinning mail "*" on a registry that holds mail 1."""
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    publish_version(tmp_path / "reg", "1", adapters[0], tiny_model_dir)
    return write_project(tmp_path, [{"name": "mail", "version": "*"}], ["reg"])


def test_pins_load_on_start_and_a_pin_file_change_swaps_without_restart(tiny_model_dir, tmp_path, project, adapters):
    with following(tiny_model_dir, tmp_path, project) as (rt, swapper):
        assert serving(swapper) == "1" and ask(rt)[1] == "mail@1"
        base_model, started = rt.engine._models[BASE], rt.started
        publish_version(tmp_path / "reg", "2", adapters[1], tiny_model_dir)
        text_v1 = ask(rt)[0]

        write_project(tmp_path, [{"name": "mail", "version": "2"}], ["reg"])
        wait_until(lambda: serving(swapper) == "2", "the pin change swapped mail@2 in")
        text, served = ask(rt)
        assert served == "mail@2" and text != text_v1
        # No restart, no base reload: the same base module tree and the same process start.
        assert rt.engine._models[BASE] is base_model and rt.started == started
        assert state.project_state(project).specialist("mail").current.version == "2"
        assert any("swapped mail 1 -> 2" in m for m in swapper.messages)

        write_project(tmp_path, [], ["reg"])
        wait_until(lambda: serving(swapper) is None, "mail was unloaded when unpinned")
        with pytest.raises(openai.NotFoundError):
            ask(rt)


def test_an_invalid_pin_file_is_rejected_and_the_last_good_state_serves(tiny_model_dir, tmp_path, project, adapters):
    publish_version(tmp_path / "reg", "2", adapters[1], tiny_model_dir)
    with following(tiny_model_dir, tmp_path, project) as (rt, swapper):
        assert serving(swapper) == "2"
        for broken, reason in (
            ('{"name": "demo", "specialists": [', "not valid JSON"),
            (json.dumps({"name": "demo", "specialists": [{"name": "mail", "version": 1}]}), "at `$.specialists[0].version`"),
            (json.dumps({"name": "demo", "specialists": [{"name": "mail"}, {"name": "mail"}]}), "duplicate names"),
        ):
            (tmp_path / "tinygpt.project.json").write_text(broken)
            wait_until(lambda reason=reason: swapper.last.rejected and reason in swapper.last.rejected, f"the rejection ({reason})")
            assert serving(swapper) == "2" and ask(rt)[1] == "mail@2"
            assert reason in state.project_state(project).error
            assert any("rejected the pin file" in m and "still serving mail@2" in m for m in swapper.messages)
        write_project(tmp_path, [{"name": "mail", "version": "1"}], ["reg"])
        wait_until(lambda: serving(swapper) == "1", "the fixed pin file took effect")
        assert state.project_state(project).error == ""


def test_a_tampered_package_is_refused_and_the_previous_version_keeps_serving(tiny_model_dir, tmp_path, project, adapters):
    reg = tmp_path / "reg"
    with http_registry(reg) as url:
        write_project(tmp_path, [{"name": "mail"}], [url])
        with following(tiny_model_dir, tmp_path, project, watch=False) as (rt, swapper):
            assert serving(swapper) == "1"
            publish_version(reg, "2", adapters[1], tiny_model_dir)
            weights = reg / "mail" / "2" / "adapters.safetensors"
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0x01
            weights.write_bytes(bytes(data))
            report = swapper.sync("test")
            assert "adapters.safetensors has sha256" in report.errors["mail"] and "refused" in report.errors["mail"]
            assert serving(swapper) == "1" and ask(rt)[1] == "mail@1"
            assert "refused" in state.project_state(project).specialist("mail").error
            assert not (tmp_path / "home" / "specialists" / "mail" / "2").exists()


def test_a_published_notice_the_pins_accept_is_pulled_and_swapped(tiny_model_dir, tmp_path, project, adapters, redis_url, redis_client):
    reg = tmp_path / "reg"
    with following(tiny_model_dir, tmp_path, project, redis_url=redis_url) as (rt, swapper):
        assert serving(swapper) == "1"
        # Garbage on the channel is logged and skipped; the listener keeps listening.
        redis_client.publish(channel(), b"not a notice")
        result = publish_version(reg, "2", adapters[1], tiny_model_dir, conn=redis_client)
        assert result.notified == 1
        wait_until(lambda: serving(swapper) == "2", "the notice swapped mail@2 in")
        assert ask(rt)[1] == "mail@2"

        # Not pinned: ignored. Pinned exactly to another version: not swapped.
        publish_version(reg, "1", adapters[2], tiny_model_dir, name="sql", conn=redis_client)
        write_project(tmp_path, [{"name": "mail", "version": "2"}], ["reg"])
        wait_until(lambda: swapper.pins.pin("mail").version == "2", "the exact pin took effect")
        publish_version(reg, "3", adapters[2], tiny_model_dir, conn=redis_client)
        write_project(tmp_path, [{"name": "mail", "version": "2"}, {"name": "sql", "version": "9"}], ["reg"])
        wait_until(lambda: "sql" in (swapper.last.errors or {}), "the next sync ran")
        assert serving(swapper) == "2" and serving(swapper, "sql") is None


def test_rollback_goes_back_one_version_at_a_time(tiny_model_dir, tmp_path, project, adapters, capsys):
    reg = tmp_path / "reg"
    args = argparse.Namespace(name="mail", to=None, project=str(project), timeout=5.0)
    with following(tiny_model_dir, tmp_path, project) as (rt, swapper):
        for v in ("2", "3"):
            publish_version(reg, v, adapters[int(v) - 1], tiny_model_dir)
            swapper.sync("test")
            assert serving(swapper) == v
        assert rollback.run(args) == 0
        assert "rolled back mail 3 -> 2" in capsys.readouterr().out
        pin = json.loads(project.read_text())["specialists"][0]
        assert pin["version"] == "2" and pin["sha256"] == state.project_state(project).specialist("mail").current.digest
        wait_until(lambda: serving(swapper) == "2", "the watcher swapped the rollback in")
        assert ask(rt)[1] == "mail@2"
        assert rollback.run(args) == 0
        wait_until(lambda: serving(swapper) == "1", "the second rollback went further back")
        assert rollback.run(args) == 1
        assert "no version of mail before 1 is recorded" in capsys.readouterr().err
        assert rollback.run(argparse.Namespace(name="mail", to="3", project=str(project), timeout=5.0)) == 0
        wait_until(lambda: serving(swapper) == "3", "--to 3 swapped 3 back in")
        assert rollback.run(argparse.Namespace(name="sql", to=None, project=str(project), timeout=5.0)) == 2


def test_after_redis_comes_back_the_listener_catches_up_on_what_it_missed(tiny_model_dir, tmp_path, project, adapters):
    from tinygpt.queue.embedded import EmbeddedRedis
    from tinygpt.runtime.registry.watch import NoticeListener

    server = EmbeddedRedis(tmp_path / "redis").start()
    with following(tiny_model_dir, tmp_path, project, watch=False) as (rt, swapper):
        listener = NoticeListener(swapper, server.url, retry_s=0.2)
        listener.start()
        try:
            assert listener.ready.wait(60)
            server.stop()
            # Published while Redis is down: no notice can reach the runtime.
            publish_version(tmp_path / "reg", "2", adapters[1], tiny_model_dir)
            server = EmbeddedRedis(tmp_path / "redis").start()
            wait_until(lambda: serving(swapper) == "2", "the resubscribed listener synced and swapped mail@2 in")
            assert listener.subscriptions >= 2
        finally:
            listener.stop()
            listener.join(30)
            server.stop()


def test_a_registry_that_goes_down_leaves_the_last_good_version_serving_even_after_a_restart(
    tiny_model_dir, tmp_path, project, adapters
):
    with http_registry(tmp_path / "reg") as url:
        write_project(tmp_path, [{"name": "mail"}], [url])
        with following(tiny_model_dir, tmp_path, project, watch=False) as (rt, swapper):
            assert serving(swapper) == "1"
    # The registry is gone now (its server stopped), and the runtime starts again.
    with following(tiny_model_dir, tmp_path, project, watch=False) as (rt, swapper):
        assert serving(swapper) == "1" and ask(rt)[1] == "mail@1"
        error = swapper.last.errors["mail"]
        assert f"registry {url} is unreachable" in error
        assert any("serving the last good mail@1" in m for m in swapper.messages)
        assert "unreachable" in state.project_state(project).specialist("mail").error
