"""The overhead benchmark's smoke mode: it runs end to end and writes the documented schema."""

from __future__ import annotations

import json

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
