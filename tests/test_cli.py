"""The steerable command line, end to end on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steerable import SteeringVector
from steerable.cli import main
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer


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
    assert main([*args, "--multiplier", "50"]) == 0  # the old single-multiplier spelling still works
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "== w5 w6" and lines[1].startswith("x+50") and len(lines) >= 2
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"question": "w5 w6"}, {"question": "w9 w10 w11"}]))
    assert main([*args[:-4], "--prompts-file", str(prompts), "--max-new-tokens", "4", "--multipliers=0,50"]) == 0
    out = capsys.readouterr().out
    blocks = [b for b in out.split("== ") if b]
    assert [b.splitlines()[0] for b in blocks] == ["w5 w6", "w9 w10 w11"]
    header = blocks[0].splitlines()[1]
    assert header.startswith("x+0 (unsteered)") and "| x+50" in header
    assert main([*args, "--multipliers=50", "--layers", "7"]) == 2  # a layer the file does not hold
    assert "layers [7] are not in this vector" in capsys.readouterr().err


def test_generate_rows_equal_single_runs(tiny_dir, tmp_path, capsys) -> None:
    """One batched run with a multiplier per row prints what separate runs print."""
    vector = SteeringVector({0: torch.randn(32, generator=torch.Generator().manual_seed(0)), 1: torch.randn(32)})
    vector.save(tmp_path / "v.safetensors")
    base = ["generate", "--model", str(tiny_dir), "--vector", str(tmp_path / "v.safetensors"), "--max-new-tokens", "5"]
    base += ["--prompt", "w5 w6 w7", "--prompt", "w8"]
    assert main([*base, "--multipliers=-20,0,20", "--layers", "0"]) == 0
    together = capsys.readouterr().out
    for m in ("-20", "0", "20"):
        assert main([*base, f"--multipliers={m}", "--layers", "0"]) == 0
        alone = capsys.readouterr().out.split("== ")[1:]
        for block, whole in zip(alone, together.split("== ")[1:], strict=True):
            reply = " ".join(line.strip() for line in block.splitlines()[2:])
            column = {"-20": 0, "0": 1, "20": 2}[m]
            cells = [line.split(" | ")[column].strip() for line in whole.splitlines()[2:] if " | " in line]
            assert reply.strip() == " ".join(c for c in cells if c)


def test_train_from_a_caa_file_with_balance_and_diagnose(tiny_dir, tmp_path, capsys) -> None:
    items = [
        {
            "question": f"w{5 + k} w{30 + k}\n\nChoices:\n (A) w{50 + k}\n (B) w{60 + k}",
            "answer_matching_behavior": "(A)",
            "answer_not_matching_behavior": "(B)",
        }
        for k in range(10)
    ]
    data = tmp_path / "generate_dataset.json"
    data.write_text(json.dumps(items))
    common = ["--model", str(tiny_dir), "--data", str(data), "--layers", "0,1"]
    with pytest.warns(UserWarning, match="the matching answer letter is unbalanced"):
        assert main(["train", *common, "--max-pairs", "6", "--out", str(tmp_path / "plain.safetensors")]) == 0
    assert "6 A/B pairs; matching letters {'A': 6}" in capsys.readouterr().out
    assert main(["train", *common, "--balance", "swap", "--out", str(tmp_path / "swap.safetensors")]) == 0
    assert "20 A/B pairs; matching letters {'A': 10, 'B': 10}" in capsys.readouterr().out
    # the CLI's vector equals the library's on the same pairs
    from transformers import AutoTokenizer

    from steerable import SteerableModel, train_steering_vector
    from steerable.research.ab import ab_pairs, load_ab_dataset

    model, tok = SteerableModel.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    expected = train_steering_vector(model, tok, ab_pairs(tok, load_ab_dataset(data), balance="swap"), layers=[0, 1])
    got = SteeringVector.load(tmp_path / "swap.safetensors")
    for layer in (0, 1):
        torch.testing.assert_close(got[layer], expected[layer])
    assert (
        main(
            [
                "train",
                *common,
                "--balance",
                "swap",
                "--read-token-index",
                "-2",
                "--out",
                str(tmp_path / "r.safetensors"),
            ]
        )
        == 0
    )
    assert not torch.allclose(SteeringVector.load(tmp_path / "r.safetensors")[0], got[0])
    capsys.readouterr()
    code = main(["diagnose", str(tmp_path / "plain.safetensors"), *common[:4], "--out", str(tmp_path / "d")])
    assert code == 0  # held-out data is read in both answer orders: no imbalance warning
    out = capsys.readouterr().out
    assert "layer    norm  behaviour AUC  letter AUC  cos(letter)" in out and "answer-letter direction" in out
    rows = json.loads((tmp_path / "d" / "diagnosis.json").read_text())
    assert [r["layer"] for r in rows] == [0, 1] and rows[0]["letter_driven"] is True
    assert (tmp_path / "d" / "pca.png").exists() and (tmp_path / "d" / "auc_by_layer.png").exists()
    assert main(["train", *common, "--balance", "swap", "--read-token-index", "nowhere"]) == 2
    assert "--read-token-index takes a token index" in capsys.readouterr().err


def test_train_reads_jsonl_and_csv(tiny_dir, tmp_path) -> None:
    rows = [{"positive": "w5 w6 w40", "negative": "w5 w6 w41"}, {"positive": "w7 w40", "negative": "w7 w41"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "p.csv").write_text("positive,negative\n" + "\n".join(f"{r['positive']},{r['negative']}" for r in rows))
    (tmp_path / "p.json").write_text(json.dumps(rows))
    vectors = []
    for name in ("p.json", "p.jsonl", "p.csv"):
        out = tmp_path / f"{name}.safetensors"
        assert (
            main(
                ["train", "--model", str(tiny_dir), "--data", str(tmp_path / name), "--layers", "1", "--out", str(out)]
            )
            == 0
        )
        vectors.append(SteeringVector.load(out)[1])
    assert torch.equal(vectors[0], vectors[1]) and torch.equal(vectors[0], vectors[2])


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
    (tmp_path / "test_dataset_open_ended.json").write_text(json.dumps([{"question": "w7 w8"}, {"question": "w9"}]))
    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(tiny_dir), "--data", str(data), "--layers", "0,1", "--multipliers=-1,0,1"]
    args += ["--balance", "none", "--samples", "2"]
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
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples) == 2 * 3 and [s["prompt"] for s in samples[::3]] == ["w7 w8", "w9"]
    assert (out / "sweep_items.csv").exists() and (out / "steerability_curves.png").exists()
    assert "most steerable layer" in capsys.readouterr().out
    assert main(["sweep", "--model", str(tiny_dir), "--data", str(tmp_path / "missing.json")]) == 2
    assert "steerable sweep: error:" in capsys.readouterr().err


# -- files ----------------------------------------------------------------------------------------
def _write(tmp_path, tensors, **metadata):
    from safetensors.torch import save_file

    base = {"format": "steerable.steering_vector", "format_version": "1", "site": "block", "hidden_size": "4"}
    path = tmp_path / "v.safetensors"
    save_file(tensors, str(path), metadata={**base, **metadata})
    return path


def test_the_cli_reports_bad_files_in_one_line_with_exit_code_2(tmp_path, capsys) -> None:
    from steerable.cli import main

    path = _write(tmp_path, {"layer.1": torch.zeros(4, dtype=torch.float8_e4m3fn)}, layers="[1]", dtype="float8_e4m3fn")
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steerable info: error: v.safetensors:") and "\n" not in err
