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


def test_the_forward_hook_baseline_does_the_same_steering_as_steerable() -> None:
    import torch

    from benchmarks.hooks import hooks, live_hooks
    from steerable import SteerableModel, SteeringVector
    from steerable.testing.tiny_models import tiny_llama

    vanilla, steerable = tiny_llama(4), SteerableModel.wrap(tiny_llama(4))
    vector = SteeringVector({i: torch.randn(64, generator=torch.Generator().manual_seed(i)) for i in range(4)})
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = vanilla(input_ids=ids).logits
        with steerable.steer(vector, 2.0):
            ours = steerable(input_ids=ids).logits
        with hooks(vanilla, vector, 2.0):
            hooked = vanilla(input_ids=ids).logits
        state = {"m": 1.0}
        with live_hooks(vanilla, vector, lambda: state["m"]):
            state["m"] = 2.0  # read on every call: the new value steers without a new hook
            live = vanilla(input_ids=ids).logits
        after = vanilla(input_ids=ids).logits
    torch.testing.assert_close(hooked, ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(live, ours, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, ours, atol=1e-3)  # the steering changes the logits...
    torch.testing.assert_close(after, plain, rtol=0, atol=0)  # ...and the hooks are gone afterwards


def test_measure_ratios_pair_each_trial_with_its_baseline() -> None:
    from benchmarks.measure import peak_rss, ratios, spread

    values, base = [2.0, 6.0, 3.0], [1.0, 2.0, 3.0]
    assert spread(values) == {"median": 3.0, "min": 2.0, "max": 6.0}
    assert ratios(values, base) == {"ratio": 2.0, "ratio_min": 1.0, "ratio_max": 3.0}  # per-trial 2, 3, 1
    assert ratios(values, base, of="medians")["ratio"] == 1.5  # median 3 / median 2
    with peak_rss(interval_s=0.001) as memory:
        block = bytearray(64 * 2**20)  # touched: resident
        block[::4096] = b"x" * len(block[::4096])
    assert memory.growth_mb >= 32, memory


def test_data_location_is_an_argument_or_the_environment_variable(tmp_path, monkeypatch, capsys) -> None:
    import re
    from pathlib import Path

    import pytest

    from benchmarks import evaluation_report, learned_vectors, train_speed
    from benchmarks.data import caa_data

    monkeypatch.delenv("STEERABLE_CAA_DATA", raising=False)
    for script in (train_speed, evaluation_report, learned_vectors):
        with pytest.raises(SystemExit, match=r"pass --data DIR or set STEERABLE_CAA_DATA$"):
            script.main([])
        with pytest.raises(SystemExit, match=re.escape(f"{tmp_path}/generate/refusal/generate_dataset.json")):
            script.main(["--data", str(tmp_path)])
        with pytest.raises(SystemExit):
            script.main(["--help"])
        assert "STEERABLE_CAA_DATA" in capsys.readouterr().out
    (tmp_path / "generate").mkdir()
    (tmp_path / "generate" / "x.json").write_text("[]")
    monkeypatch.setenv("STEERABLE_CAA_DATA", str(tmp_path))
    import argparse

    from benchmarks.data import add_data_argument

    parser = argparse.ArgumentParser()
    add_data_argument(parser)
    assert caa_data(parser.parse_args([]).data, "generate/x.json") == tmp_path
    root = Path(__file__).resolve().parent.parent
    climbing = [
        str(p.relative_to(root))
        for folder in ("benchmarks", "examples")
        for p in (root / folder).glob("*.py")
        if re.search(r"parents\[|/ \"shared\"", p.read_text())
    ]
    assert climbing == []  # no script looks for data outside the checkout
