"""generate.py end to end on a model trained here: exports, step checkpoints, run folders, MLflow run ids."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import ROOT, tiny

from olmo.errors import OLMoConfigurationError
from olmo.generate.cli import GenerateConfig, run_generate
from olmo.generate.loading import load_for_generation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, data_cache) -> Path:
    """A tiny model trained a few steps on Shakespeare (BPE of 512 tokens): step checkpoint + final export."""
    from olmo.train import run_experiment

    folder = tmp_path_factory.mktemp("generate-run") / "run"
    result = run_experiment(tiny(data_cache, str(folder), max_steps=6, eval_interval=None))
    assert result.status == "completed"
    return folder


def greedy(checkpoint, **fields) -> list[list[str]]:
    fields = {"prompt": "ROMEO:", "max_steps": 12, **fields}
    return run_generate(GenerateConfig(checkpoint=str(checkpoint), **fields), echo=False)


def test_the_run_saves_what_generation_needs(run_folder):
    assert {"final", "step00000006", "model_config.json", "tokenizer.json"} <= {p.name for p in run_folder.iterdir()}
    assert (run_folder / "final" / "tokenizer.json").is_file()


def test_cli_prints_text(run_folder):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "generate.py"), f"checkpoint={run_folder / 'final'}", "prompt=ROMEO:",
         "max_steps=16", "sampler=top_k", "top_k=40", "seed=3"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # A model trained 6 steps says little (greedy, it only emits newlines), but sampling prints some text.
    assert proc.stdout.startswith("ROMEO:") and len(proc.stdout.strip()) > len("ROMEO:")
    same = greedy(run_folder / "final", max_steps=16, sampler="top_k", top_k=40, seed=3)
    assert proc.stdout == same[0][0] + "\n"


@pytest.mark.slow
def test_cli_user_errors_are_one_line(run_folder):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "generate.py"), f"checkpoint={run_folder / 'nowhere'}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: checkpoint=") and "Traceback" not in proc.stderr


def test_every_reference_to_the_same_weights_generates_the_same(run_folder):
    expected = greedy(run_folder / "final")
    assert greedy(run_folder / "step00000006") == expected  # DCP checkpoint + the run's model_config.json
    assert greedy(run_folder) == expected  # a run folder: its final export
    kinds = {load_for_generation(p).kind for p in (run_folder, run_folder / "step00000006")}
    assert kinds == {"export", "dcp"}


def test_a_run_folder_without_final_uses_its_newest_checkpoint(run_folder, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy, ignore=shutil.ignore_patterns("final"))
    assert load_for_generation(copy).kind == "dcp"
    assert greedy(copy) == greedy(run_folder / "final")


def test_beams_samplers_and_several_prompts(run_folder):
    final = run_folder / "final"
    texts = greedy(final, beam_size=3, num_return=2, ngram_block=2, length_penalty=1.0)
    assert len(texts) == 1 and len(texts[0]) == 2 and all(t.startswith("ROMEO:") for t in texts[0])
    sampled = [greedy(final, sampler="top_p", top_p=0.9, temperature=0.8, seed=s) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]
    both = run_generate(GenerateConfig(checkpoint=str(final), prompts=["ROMEO:", "To be, or not"], max_steps=6),
                        echo=False)
    assert [row[0][:6] for row in both] == ["ROMEO:", "To be,"]
    # The prompts in one left-padded batch continue as they do alone (RoPE).
    assert both[0] == run_generate(GenerateConfig(checkpoint=str(final), prompt="ROMEO:", max_steps=6), echo=False)[0]


def test_original_olmo_layout_checkpoints_generate_too(run_folder, tmp_path):
    from olmo.interop import save_olmo_checkpoint

    loaded = load_for_generation(run_folder / "final")
    folder = save_olmo_checkpoint(loaded.model, tmp_path / "olmo")
    shutil.copyfile(run_folder / "tokenizer.json", folder / "tokenizer.json")
    assert load_for_generation(folder).kind == "olmo"
    assert greedy(folder) == greedy(run_folder / "final")


def test_missing_pieces_error_clearly(run_folder, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(run_folder / "final", bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(OLMoConfigurationError, match="tokenizer"):
        greedy(bare)
    assert greedy(bare, tokenizer=str(run_folder / "tokenizer.json")) == greedy(run_folder / "final")
    lonely = tmp_path / "lonely"
    shutil.copytree(run_folder / "step00000006", lonely / "step00000006")
    with pytest.raises(OLMoConfigurationError, match="model_config.json"):
        load_for_generation(lonely / "step00000006")
    with pytest.raises(OLMoConfigurationError, match="checkpoint"):
        load_for_generation(tmp_path)
    with pytest.raises(OLMoConfigurationError, match="sampler"):
        greedy(run_folder, sampler="beam")
    with pytest.raises(OLMoConfigurationError, match="num_return"):
        greedy(run_folder, num_return=2)


@pytest.mark.slow
def test_mlflow_run_id_as_the_checkpoint(run_folder, tmp_path):
    """A run id: its train.save_folder param when the folder is here, else its logged `model` artifact."""
    from olmo.tracking.store import client, prepare_store, sqlite_uri

    uri = sqlite_uri(tmp_path / "mlflow.db")
    experiment = prepare_store(uri, "generate-test")
    c = client(uri)
    here = c.create_run(experiment).info.run_id
    c.log_param(here, "train.save_folder", str(run_folder))
    elsewhere = c.create_run(experiment).info.run_id
    c.log_param(elsewhere, "train.save_folder", "/nonexistent/elsewhere")
    c.log_artifacts(elsewhere, str(run_folder / "final"), "model")

    expected = greedy(run_folder / "final")
    assert greedy(here, tracking_uri=uri) == expected
    assert greedy(f"runs:/{elsewhere}", tracking_uri=uri) == expected
    with pytest.raises(OLMoConfigurationError, match="MLflow"):
        greedy("0" * 32, tracking_uri=uri)


def test_loaded_models_are_in_eval_mode_on_the_requested_device(run_folder):
    loaded = load_for_generation(run_folder / "step00000006", device="cpu")
    assert not loaded.model.training and loaded.model.device == torch.device("cpu")


@pytest.mark.slow
def test_benchmark_quick_runs():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--quick", "--batch-sizes", "1", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("same greedy tokens: True") == 2


@pytest.mark.slow
def test_decode_linear_benchmark_quick_runs(tmp_path):
    out = tmp_path / "linear.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_decode_linear.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["rows"] for r in rows] == [1, 8]
    for r in rows:
        assert {"plain", "transposed"} <= set(r["ms_per_step"])
        assert all(t > 0 for t in r["ms_per_step"].values()) and all(t >= 0 for t in r["copy_ms"].values())
