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


# -- one module per command -----------------------------------------------------------------------
def test_one_module_per_command_and_short_functions() -> None:
    import ast
    import importlib

    import steerable.cli as cli

    names = {"info", "train", "generate", "sweep", "diagnose", "bench"}
    for name in names:
        module = importlib.import_module(f"steerable.cli.{name}")
        assert callable(module.add_parser) and callable(module.run) and module in cli.COMMANDS
    choices = next(a for a in cli.parser()._actions if a.dest == "command").choices
    assert set(choices) == names
    root = Path(cli.__file__).parents[1]
    long = [
        (str(path.relative_to(root)), node.name, node.end_lineno - node.lineno + 1)
        for path in [*root.joinpath("cli").glob("*.py"), *root.joinpath("research").glob("*.py")]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []  # parser was 71 lines and run 63


# -- hardening: user errors are one line on stderr, checked before the work ----------------------
def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err  # after any progress bars of the model's loading (they end in \r)
    line = err.split("\n")[-2].split("\r")[-1]
    assert err.endswith("\n") and "Traceback" not in err and err.count("steerable ") == 1
    assert line.startswith(f"steerable {command}: error: ") and line.split(": error: ")[1]
    return line


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a command loads a model: its checks must come first."""
    from steerable.cli import common

    def refuse(name):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(common, "load_model", refuse)


def test_files_that_break_parsers_are_one_line_errors(tiny_dir, tmp_path, capsys) -> None:
    long_csv = tmp_path / "long.csv"
    long_csv.write_text('positive,negative\n"' + "w" * 131_073 + '",w7\n')
    assert main(["train", "--model", str(tiny_dir), "--data", str(long_csv), "--out", str(tmp_path / "v")]) == 2
    assert "long.csv line 2: not readable as CSV (field larger than field limit" in _one_line_error(capsys, "train")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["train", "--model", str(tiny_dir), "--data", str(deep), "--out", str(tmp_path / "v")]) == 2
    assert "deep.json: JSON nested too deeply to read" in _one_line_error(capsys, "train")
    assert not (tmp_path / "v").exists()


def test_prompts_files_nested_too_deeply_and_negative_counts_fail_before_the_model(tmp_path, capsys, no_model) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    base = ["generate", "--vector", str(tmp_path / "v.safetensors")]
    assert main([*base, "--prompts-file", str(deep)]) == 2  # was a RecursionError traceback
    assert "deep.json: JSON nested too deeply to read" in _one_line_error(capsys, "generate")
    assert main([*base, "--prompt", "w5", "--prompt", "w6", "--max-prompts", "-1"]) == 2  # dropped the last prompt
    assert "--max-prompts must be at least 1, got -1" in _one_line_error(capsys, "generate")
    assert main(["train", "--max-pairs", "-1"]) == 2  # sliced the shipped pairs from the end
    assert "--max-pairs must be at least 1, got -1" in _one_line_error(capsys, "train")
    assert main(["sweep", "--data", "x.json", "--samples", "-2"]) == 2
    assert "--samples must be at least 0, got -2" in _one_line_error(capsys, "sweep")


def test_outputs_are_checked_before_any_work(tmp_path, capsys, no_model) -> None:
    missing = tmp_path / "no" / "such" / "v.safetensors"
    assert main(["train", "--out", str(missing)]) == 2  # was a SafetensorError after the whole training
    assert f"the directory {missing.parent} does not exist" in _one_line_error(capsys, "train")
    assert main(["train", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a directory: give a file path such as" in _one_line_error(capsys, "train")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    ab = tmp_path / "ab.json"
    ab.write_text(
        json.dumps([{"question": "q", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}])
    )
    assert main(["sweep", "--data", str(ab), "--out", str(a_file)]) == 2
    assert f"--out {a_file} is a file: give a directory" in _one_line_error(capsys, "sweep")
    assert main(["sweep", "--data", str(ab), "--out", str(a_file / "below")]) == 2
    assert "is a file, so" in _one_line_error(capsys, "sweep")
    assert main(["diagnose", str(tmp_path / "v.safetensors"), "--data", str(ab), "--out", str(a_file)]) == 2
    assert "is a file: give a directory" in _one_line_error(capsys, "diagnose")


def test_a_one_multiplier_sweep_is_refused_before_the_model(tmp_path, capsys, no_model) -> None:
    assert main(["sweep", "--data", str(tmp_path / "ab.json"), "--multipliers=1"]) == 2  # exited 0, steerability NaN
    assert "--multipliers needs at least two different values" in _one_line_error(capsys, "sweep")
    assert main(["sweep", "--data", str(tmp_path / "ab.json"), "--multipliers=2,2"]) == 2


def test_the_console_script_reports_a_deep_file_in_one_line(tmp_path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    exe = Path(sys.executable).parent / "steerable"
    result = subprocess.run(
        [str(exe), "generate", "--vector", "v.safetensors", "--prompts-file", str(deep)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "deep.json: JSON nested too deeply to read" in result.stderr


# -- hardening: text from files and models is printed escaped -------------------------------------
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\rforged\nlayers:      [0]\x9b31m café 日本 👩\u200d💻 \u202eevil"


def test_info_prints_untrusted_metadata_escaped(tmp_path, capsys) -> None:
    vector = SteeringVector({1: torch.ones(4)}, model_type="llama", method="mean\x1b[31m", description=HOSTILE)
    vector.save(tmp_path / "v.safetensors")
    assert main(["info", str(tmp_path / "v.safetensors")]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r\x9b\u202e")  # nothing reaches the terminal raw
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("layers:")] == ["layers:      [1]"]  # no forged line
    (line,) = [line for line in lines if line.startswith("description:")]
    assert line == (
        "description: \\x1b[2J\\x1b]0;pwned\\x07\\rforged\\nlayers:      [0]\\x9b31m café 日本 👩\u200d💻 \\u202eevil"
    )  # ordinary unicode, and the joiner inside the emoji, stay
    assert "method:      mean\\x1b[31m" in lines


def test_generate_prints_prompts_escaped(tiny_dir, tmp_path, capsys) -> None:
    SteeringVector({0: torch.ones(32)}).save(tmp_path / "v.safetensors")
    args = ["generate", "--model", str(tiny_dir), "--vector", str(tmp_path / "v.safetensors"), "--no-chat"]
    assert main([*args, "--prompt", "w5\x1b]0;x\x07 w6", "--max-new-tokens", "2", "--multipliers=0"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "== w5\\x1b]0;x\\x07 w6" and "\x1b" not in out and "\x07" not in out


def test_error_messages_are_escaped(tmp_path, capsys, no_model) -> None:
    bad = tmp_path / "bad\x1b[2J.json"
    bad.write_text("{not json")
    SteeringVector({0: torch.ones(4)}).save(tmp_path / "v.safetensors")
    assert main(["generate", "--vector", str(tmp_path / "v.safetensors"), "--prompts-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.count("\n") == 1 and "bad\\x1b[2J.json: not valid JSON" in err


def test_printable_escapes_controls_and_keeps_ordinary_unicode() -> None:
    from steerable.cli.common import printable

    assert (
        printable("a\x1b[0m\x07\r\n\t\x9b\x7f\u2028\u202e\ufeffz")
        == "a\\x1b[0m\\x07\\r\\n\\t\\x9b\\x7f\\u2028\\u202e\\ufeffz"
    )
    assert printable("naïve Ωμέγα 中文 🙂 👩\u200d💻") == "naïve Ωμέγα 中文 🙂 👩\u200d💻"


# -- the caller's tokenizer is left as it was -----------------------------------------------------
def test_generate_leaves_the_tokenizer_padding_side_alone(tmp_path, capsys, monkeypatch) -> None:
    from steerable import SteerableModel
    from steerable.cli import common

    model, tok = SteerableModel.wrap(tiny_model("llama")), tiny_tokenizer()
    tok.padding_side = "right"
    monkeypatch.setattr(common, "load_model", lambda name: (model, tok))
    SteeringVector({0: torch.ones(32)}).save(tmp_path / "v.safetensors")
    args = ["generate", "--vector", str(tmp_path / "v.safetensors"), "--no-chat", "--max-new-tokens", "3"]
    assert main([*args, "--prompt", "w5 w6 w7", "--prompt", "w8", "--multipliers=0,4"]) == 0
    assert tok.padding_side == "right"  # the command set it to "left" for good
    together = capsys.readouterr().out
    assert main([*args, "--prompt", "w8", "--multipliers=0,4"]) == 0  # the short prompt alone: left padding held
    assert capsys.readouterr().out.split("== ")[1] == together.split("== ")[2]


def test_a_vector_file_with_deeply_nested_metadata_is_one_line(tmp_path, capsys) -> None:
    """The CLI's last line of defence: a parser deeper in the library that raises RecursionError."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    SteeringVector({1: torch.ones(4)}).save(tmp_path / "v.safetensors")
    with safe_open(str(tmp_path / "v.safetensors"), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(tensors, str(tmp_path / "deep.safetensors"), {**metadata, "layers": "[" * 100_000 + "]" * 100_000})
    assert main(["info", str(tmp_path / "deep.safetensors")]) == 2  # was a RecursionError traceback
    assert "nested too deeply to read" in _one_line_error(capsys, "info")


def test_generate_builds_the_steering_spec_the_library_would(tiny_dir, tmp_path, capsys) -> None:
    """--operator, --positions and --min-token-index make the same Steering as model.steer: the
    printed replies equal generating with that steering through the library."""
    import transformers

    from steerable import SteerableModel, Steering

    vector = SteeringVector({1: torch.randn(32, generator=torch.Generator().manual_seed(3)) * 8})
    vector.save(tmp_path / "v.safetensors")
    args = ["generate", "--model", str(tiny_dir), "--vector", str(tmp_path / "v.safetensors"), "--no-chat"]
    args += ["--prompt", "w5 w6 w7", "--max-new-tokens", "5", "--multipliers=3"]
    args += ["--operator", "ablate_then_add", "--positions", "generated", "--min-token-index", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    model = SteerableModel.from_pretrained(str(tiny_dir)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_dir))
    encoded = tokenizer(["w5 w6 w7"], return_tensors="pt")
    ids = {k: encoded[k] for k in ("input_ids", "attention_mask")}  # transformers 4 adds token_type_ids
    spec = Steering(vector, [3.0], operator="ablate_then_add", positions="generated", min_token_index=4)
    with torch.inference_mode(), model.steer(spec):
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert " ".join(reply.split()) in " ".join(printed.split())
    assert main([*args[:-6], "--operator", "twist"]) != 0
    assert "unknown operator 'twist'" in capsys.readouterr().err
