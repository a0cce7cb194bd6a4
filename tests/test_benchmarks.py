"""The benchmark scripts run in quick mode and write their results."""

from __future__ import annotations

import importlib.util
import json

from matplotlib.figure import Figure

from benchmarks import compiled, gpu, peers
from benchmarks.overhead import main
from steerable.cli import main as cli_main


def test_quick_benchmark_writes_markdown_and_json(tmp_path) -> None:
    assert main(["--quick", "--no-compile", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "overhead.json").read_text())
    assert set(report["machine"]) >= {"cpu", "threads", "torch", "transformers", "device", "dtype", "trials"}
    (suite,) = report["suites"]
    assert suite["model"] == "tiny"
    rows = suite["rows"]
    assert {
        "vanilla transformers",
        "steerable idle",
        "steerable, 1 layer",
        "steerable, all layers",
        "forward hooks, all layers",
    } <= set(rows)
    for per in rows.values():
        assert set(per) == {"decode_b1_ms_per_token", "decode_b8_ms_per_token", "prefill_32_ms_per_token"}
        for stats in per.values():
            assert stats["min"] <= stats["median"] <= stats["max"] and stats["ratio"] > 0
    assert rows["vanilla transformers"]["decode_b1_ms_per_token"]["ratio"] == 1.0
    assert (
        suite["memory"]["steering_buffer_bytes_all_layers"] == suite["memory"]["expected_layers_x_d_model_x_itemsize"]
    )
    assert suite["profile"]["steer_calls"] == 4  # one steering step per layer of the tiny model
    assert {k: v["speedup"] > 0 for k, v in suite["per_row_sweep"].items()} == {"forward": True, "generate": True}
    assert suite["verdicts"]
    markdown = (tmp_path / "overhead.md").read_text()
    assert "| steerable idle |" in markdown and "Per-row sweep" in markdown


def test_compile_section_counts_no_recompiles_for_value_updates(tmp_path) -> None:
    assert cli_main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    compiled = json.loads((tmp_path / "overhead.json").read_text())["suites"][0]["compile"]
    assert compiled["steerable: multiplier changes (handle.update)"]["recompiles_over_10_changes"] == 0
    assert compiled["steerable: vector value changes (handle.update)"]["recompiles_over_10_changes"] == 0


def test_peers_quick_writes_every_row_and_capability(tmp_path, monkeypatch) -> None:
    saved: list[Figure] = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    assert peers.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "peers.json").read_text())
    assert set(report["rows"]) == set(peers.IMPLEMENTATIONS)
    for name, row in report["rows"].items():
        installed = name in ("steerable", "forward hooks") or importlib.util.find_spec(
            {"nnsight": "nnsight", "TransformerLens": "transformer_lens"}[name]
        )
        for key in peers.MEASURES:
            cell = row[key]
            if installed:
                assert isinstance(cell, dict) and cell["median"] == cell["median"], (name, key)  # a number, not nan
            else:
                assert cell == "not installed"
    for capabilities in report["capabilities"].values():
        assert set(capabilities.values()) <= {"built in", "by hand", "not supported"}
    assert report["capabilities"]["forward hooks"]["steer only generated tokens"] == "not supported"
    markdown = (tmp_path / "peers.md").read_text()
    assert all(f"| {n}" in markdown for n in peers.IMPLEMENTATIONS) and "not supported" in markdown
    (figure,) = saved
    ax = figure.axes[0]
    assert ax.get_ylabel() == "per-token cost, steered / own vanilla" and (tmp_path / "peers_cost_ratio.png").exists()
    assert "own vanilla" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(peers.IMPLEMENTATIONS)[: len(ax.get_xticklabels())]


def test_compiled_quick_counts_graphs(tmp_path) -> None:
    assert compiled.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "compiled.json").read_text())
    assert report["backend"] == "eager" and set(report["decode"]) == {"vanilla", "steerable", "hooks"}
    graphs = report["graphs"]
    assert graphs["steerable: a new steering"] == 0
    assert graphs["steerable: handle.update (multiplier and vector)"] == 0
    assert graphs["steerable: 50 different steerings in a loop"] == 0
    assert set(graphs) >= {"forward hooks: a new hook", "forward hooks: off, then on"}
    assert "Target (steered compiled / vanilla compiled <= 1.02)" in (tmp_path / "compiled.md").read_text()


def test_gpu_script_dry_run_and_no_gpu(tmp_path, capsys) -> None:
    assert gpu.main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_dry_run.json").read_text())
    assert set(report["cells"]) == set(gpu.MODES)
    for rows in report["cells"].values():
        assert set(rows) == set(gpu.IMPLEMENTATIONS)
        for row in rows.values():
            assert set(row) == {"b1", "b2"} and all(c["ms_per_token"] > 0 for c in row.values())
    assert gpu.main(["--dry-run", "--budget-s", "0", "--out", str(tmp_path)]) == 0
    starved = json.loads((tmp_path / "gpu_dry_run.json").read_text())
    assert starved["cells"]["eager"]["vanilla"]["b1"] == "not run (time budget)"
    import torch

    if not torch.cuda.is_available():
        capsys.readouterr()
        assert gpu.main(["--out", str(tmp_path)]) == 0
        assert "no CUDA GPU here" in capsys.readouterr().out
