"""Smoke runs of the benchmark paths added in v2 (tiny models, seconds): each results file has every
row, and cells a peer cannot fill say why."""

from __future__ import annotations

import importlib.util
import json

from matplotlib.figure import Figure

from benchmarks import compiled, gpu, peers


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
