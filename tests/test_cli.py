"""The steerable command line, end to end on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from steerable import SteeringVector
from steerable.cli import main


@pytest.fixture
def tiny_dir(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_info_shows_both_formats(tmp_path, capsys) -> None:
    vec = SteeringVector({1: torch.ones(4) * 2, 3: torch.zeros(4)}, model_type="llama", method="mean")
    vec.save(tmp_path / "v.safetensors")
    vec.to_gguf(tmp_path / "v.gguf")
    assert main(["info", str(tmp_path / "v.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "layers:      [1, 3]" in out and "hidden size: 4" in out and "method:      mean" in out
    assert "layer   1: norm 4.0000" in out
    assert main(["info", str(tmp_path / "v.gguf")]) == 0
    out = capsys.readouterr().out
    assert "GGUF control vector" in out and "model_type:  llama" in out


def test_train_then_generate(tiny_dir, tmp_path, capsys) -> None:
    data = tmp_path / "pairs.json"
    data.write_text(
        json.dumps([{"positive": "w5 w6 w40", "negative": "w5 w6 w41"}, {"positive": "w7 w40", "negative": "w7 w41"}])
    )
    out_file = tmp_path / "v.safetensors"
    assert (
        main(["train", "--model", str(tiny_dir), "--data", str(data), "--layers", "0,1", "--out", str(out_file)]) == 0
    )
    vec = SteeringVector.load(out_file)
    assert vec.layers == [0, 1] and vec.method == "mean" and vec.hidden_size == 32
    capsys.readouterr()
    args = [
        "generate",
        "--model",
        str(tiny_dir),
        "--vector",
        str(out_file),
        "--prompt",
        "w5 w6",
        "--max-new-tokens",
        "4",
    ]
    assert main([*args, "--multiplier", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("unsteered:") and lines[1].startswith("steered x+50:")
    assert lines[0].split(":", 1)[1] != lines[1].split(":", 1)[1]


def test_bad_arguments_and_files_fail_with_one_line(tmp_path, capsys) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    assert main(["info", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steerable info: error:") and "\n" not in err
    assert main(["info", str(tmp_path / "missing.gguf")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--method", "median"])
    assert exit_info.value.code == 2


def test_entry_point_is_installed() -> None:
    exe = Path(sys.executable).parent / "steerable"  # the environment's scripts, activated or not
    assert exe.exists()
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "info" in result.stdout and "train" in result.stdout


def test_sweep_end_to_end(tiny_dir, tmp_path, capsys) -> None:
    items = [
        {
            "question": f"w{5 + k} w{30 + k} ( A ) w{50 + k} ( B ) w{60 + k}",
            "answer_matching_behavior": "(A)" if k % 2 else "(B)",
            "answer_not_matching_behavior": "(B)" if k % 2 else "(A)",
        }
        for k in range(6)
    ]
    data = tmp_path / "ab.json"
    data.write_text(json.dumps(items))
    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(tiny_dir), "--data", str(data), "--layers", "0,1", "--multipliers=-1,0,1"]
    assert main([*args, "--out", str(out), "--max-new-tokens", "3"]) == 0
    rows = json.loads((out / "sweep.json").read_text())
    assert [(r["layer"], r["multiplier"]) for r in rows] == [
        (0, -1.0),
        (0, 0.0),
        (0, 1.0),
        (1, -1.0),
        (1, 0.0),
        (1, 1.0),
    ]
    assert all(0.0 <= r["p_matching"] <= 1.0 for r in rows)
    assert (out / "sweep_curves.png").stat().st_size > 1000 and (out / "sweep_heatmap.png").stat().st_size > 1000
    assert len(json.loads((out / "samples.json").read_text())) == 2 * 3
    assert "most steerable layer" in capsys.readouterr().out
    assert main(["sweep", "--model", str(tiny_dir), "--data", str(tmp_path / "missing.json")]) == 2
    assert "steerable sweep: error:" in capsys.readouterr().err
