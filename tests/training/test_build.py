"""``siftrank build``: a tiny recipe built stage by stage, reuse by lineage, resume after kill -9, bad recipes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrieval.config import PipelineConfig
from tests.conftest import QUERIES, write_dataset

GENERAL = ["what is the capital of france\tParis is the capital and largest city of France.\tBerlin is the capital of Germany.",
           "how many legs does a spider have\tSpiders have eight legs.\tInsects have six legs and three body parts.",
           "who wrote hamlet\tHamlet is a tragedy written by William Shakespeare.\tOthello is set in Venice and Cyprus."]


def write_recipe(folder: Path, finetune_steps: int = 4, **sections: dict) -> Path:
    """A tiny recipe over the test collection (qrels as the 'train' split) with a tiny general set."""
    data = write_dataset(folder / "tiny")
    (data / "qrels" / "train.tsv").write_text((data / "qrels" / "test.tsv").read_text())
    general = folder / "general"
    general.mkdir(exist_ok=True)
    (general / "splade_toy_triples_100.tsv").write_text("\n".join(GENERAL) + "\n")
    recipe = {"data": {"dataset": "tiny", "general": "general"},
              "prune": {"triplets": 4, "sparsity": 0.5},
              "finetune": {"steps": finetune_steps, "batch_size": 2, "general": 3},
              "calibrate": {"k": 5, "features": "global"}}
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    lines = ['name = "tiny"']
    for name, values in recipe.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = folder / "recipe.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def statuses(out: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((out / "build.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("build")
    recipe = write_recipe(folder)
    result = subprocess.run([sys.executable, "-m", "serving.cli", "build", str(recipe), "--out", str(folder / "out")],
                            capture_output=True, text=True, env={**os.environ, "SIFTRANK_CACHE": str(folder / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    return recipe, folder / "out"


def test_build_writes_every_stage_with_lineage_and_a_pipeline_eval_takes(built, cli) -> None:
    recipe, out = built
    assert statuses(out) == {"prune": "built", "finetune": "built", "index": "built", "first_stage": "built", "calibrate": "built"}
    for stage in ("prune", "finetune", "index", "first_stage", "calibrate"):
        lineage = json.loads((out / stage / "manifest.json").read_text())["lineage"]
        assert lineage["stage"] == stage and len(lineage["key"]) == 20
    # each stage names what it was built from: finetune ← prune, index ← finetune, first stage ← index, calibrate ← first stage
    keys = {s: json.loads((out / s / "manifest.json").read_text())["lineage"]
            for s in ("prune", "finetune", "index", "first_stage", "calibrate")}
    assert keys["finetune"]["inputs"]["encoder"] == keys["prune"]["key"]
    assert keys["index"]["inputs"]["encoder"] == keys["finetune"]["key"]
    assert keys["first_stage"]["inputs"]["index"] == keys["index"]["key"]
    assert keys["calibrate"]["inputs"]["first_stage"] == keys["first_stage"]["key"]
    pruned = json.loads((out / "prune" / "manifest.json").read_text())
    assert pruned["parameters"]["structured"] is True and pruned["metrics"]["parameters"] < 22_713_216
    config = PipelineConfig.load(out / "pipeline.toml")
    assert config.stages() == ["dense", "filter"] and config.encoder.model == str(out / "finetune")
    decisions = {s["name"]: s["decision"] for s in json.loads((out / "build.json").read_text())["stages"]}
    assert decisions["finetune"].startswith("encoder: full fine-tuning") and decisions["calibrate"].startswith("filter: ")
    # 3 training queries hold out fewer than 50: cross-fitted, one fold model per query, kept in the artifact, and the
    # filter calibrated on every query scored by the fold model that never trained on it
    details = keys["finetune"]["details"]
    assert details["validation"] == "3-fold" and sorted(q for f in details["folds"] for q in f["qids"]) == sorted(QUERIES)
    assert all((out / "finetune" / f["path"] / "manifest.json").is_file() for f in details["folds"])
    assert "out of fold" in details["evidence"]["source"] and details["evidence"]["queries"] == len(QUERIES)
    calibrator = json.loads((out / "calibrate" / "manifest.json").read_text())
    assert calibrator["data"]["held_out"].startswith("out-of-fold queries (3 folds") and calibrator["data"]["queries"] == 3
    code, _, err = cli("eval", "--dataset", recipe.parent / "tiny", "--pipeline", out / "pipeline.toml", "--out", out.parent / "ev")
    assert code == 0, err
    metrics = json.loads((out.parent / "ev" / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"dense", "filter"} and metrics["queries"] == len(QUERIES)


def test_rerun_reuses_and_a_changed_parameter_rebuilds_from_its_stage(built, cli) -> None:
    recipe, out = built
    code, stdout, err = cli("build", recipe, "--out", out)
    assert code == 0, err
    assert statuses(out) == {"prune": "reused", "finetune": "reused", "index": "reused", "first_stage": "reused",
                             "calibrate": "reused"}
    assert "reused" in stdout
    code, _, err = cli("build", recipe, "--out", out, "--set", "calibrate.k=4")
    assert code == 0, err
    assert statuses(out) == {"prune": "reused", "finetune": "reused", "index": "reused", "first_stage": "reused",
                             "calibrate": "built"}
    code, _, err = cli("build", recipe, "--out", out, "--set", "finetune.enabled=false", "--set", "calibrate.k=4")
    assert code == 0, err
    assert statuses(out) == {"prune": "reused", "index": "built", "first_stage": "built", "calibrate": "built"}
    assert PipelineConfig.load(out / "pipeline.toml").encoder.model == str(out / "prune")


def test_kill_9_in_the_finetune_stage_then_resume_redoes_only_that_stage(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, finetune_steps=80)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "serving.cli", "build", str(recipe), "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("[2/5] finetune"):
            break
    time.sleep(3)  # inside the stage: the model is loading, mining negatives or training
    assert process.poll() is None, "the finetune stage ended before it could be killed: raise finetune_steps"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / "prune" / "manifest.json").is_file()
    assert not (out / "finetune").exists() and not (out / "pipeline.toml").exists()
    prune_manifest = (out / "prune" / "manifest.json").read_text()
    (out / ".finetune.leftover.tmp").mkdir()  # what a kill during the artifact's write leaves behind
    result = subprocess.run(command, capture_output=True, text=True, env=env)  # the same recipe
    assert result.returncode == 0, result.stderr[-2000:]
    assert statuses(out) == {"prune": "reused", "finetune": "built", "index": "built", "first_stage": "built", "calibrate": "built"}
    assert (out / "prune" / "manifest.json").read_text() == prune_manifest
    assert not list(out.glob(".*.tmp"))


BAD = [
    ({"prune": {"sparsity_typo": 0.5}}, "prune.sparsity_typo: Extra inputs are not permitted"),
    ({"distill": {"steps": 3}}, "distill: Extra inputs are not permitted"),
    ({"data": {"split": "dev"}}, "needs training qrels"),
    ({"finetune": {"method": "prefix"}}, "finetune.method"),
    ({"first_stage": {"kind": "run"}}, "first_stage.kind"),
    ({"first_stage": {"kind": "hybrid", "weight": 1.5}}, "first_stage.weight"),
    ({"rank": {"enabled": True, "model": "no-such-model"}}, "[rank] model"),
    ({"rank": {"enabled": True, "model": "bundled:NoSuchLM"}}, "unknown bundled ranker"),
    ({"prune": {"artifact": "other-pruned"}}, "built from"),
    ({"prune": {"enabled": False}, "finetune": {"artifact": "other-adapter"}}, "built from another base model"),
]


@pytest.mark.parametrize(("sections", "message"), BAD)
def test_bad_recipes_fail_with_one_line_before_any_work(sections: dict, message: str, tmp_path: Path, cli) -> None:
    from retrieval.artifacts import Manifest

    pruned = tmp_path / "other-pruned"
    pruned.mkdir()
    Manifest(kind="pruned-encoder", source_model=str(tmp_path / "some-other-model")).write(pruned)
    adapter = tmp_path / "other-adapter"
    adapter.mkdir()
    Manifest(kind="adapter", encoder={"model": "another-base", "fingerprint": "0123456789abcdef"}).write(adapter)
    recipe = write_recipe(tmp_path, **sections)
    code, _, err = cli("build", recipe, "--out", tmp_path / "out")
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_built_folder_serves_as_a_variant_with_the_plain_pipeline_as_shadow(built, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.experiment import ExperimentConfig
    from serving.variants import VariantPool

    recipe, out = built
    path = tmp_path / "experiment.toml"
    path.write_text(f'[service]\ndata = "{recipe.parent / "tiny"}"\nevent_log = "events.db"\n\n[variants.domain]\n'
                    f'pipeline = "{out}"\n\n[variants.dense]\n\n[experiment]\nprimary = "domain"\n'
                    'shadows = [{ variant = "dense", sample_rate = 1.0 }]\n')
    config = ExperimentConfig.load(path)
    with TestClient(create_app(config, path, VariantPool.build(config))) as client:
        body = client.post("/search", json={"query": "why do volcanoes erupt", "k": 3}).json()
    assert body.get("variant") == "domain" and body["hits"], body
    assert body["hits"] and body["hits"][0]["relevance"] is not None


def test_the_shipped_recipes_validate(tmp_path: Path) -> None:
    from training.recipe import Recipe

    root = Path(__file__).resolve().parents[2] / "configs" / "recipes"
    for path in sorted(root.glob("*.toml")):
        recipe = Recipe.load(path, tmp_path)
        assert recipe.data.dataset.startswith(str(tmp_path)) and "index" in recipe.active()


def test_a_rank_stage_trains_the_ranker_on_the_built_first_stage(tmp_path: Path, tiny_llm: Path, cli) -> None:
    recipe = write_recipe(tmp_path, prune={"enabled": False}, finetune={"enabled": False}, calibrate={"enabled": False},
                          first_stage={"kind": "hybrid", "fusion": "rrf"},  # lists drawn from the hybrid's candidates
                          rank={"enabled": True, "model": str(tiny_llm), "depth": 4, "steps": 2, "validation": 0})
    code, out, err = cli("build", recipe, "--out", tmp_path / "out")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "rank" / "manifest.json").read_text())
    assert manifest["kind"] == "ranker-adapter" and manifest["lineage"]["stage"] == "rank"
    config = PipelineConfig.load(tmp_path / "out" / "pipeline.toml")
    assert config.stages() == ["hybrid", "rerank"] and config.rerank is not None


def test_a_hybrid_first_stage_is_chosen_on_validation_and_feeds_the_filter(tmp_path: Path, cli) -> None:
    recipe = write_recipe(tmp_path, prune={"enabled": False}, finetune={"enabled": False},
                          first_stage={"kind": "hybrid"})
    code, stdout, err = cli("build", recipe, "--out", tmp_path / "out")
    assert code == 0, err
    assert "first stage: hybrid fusion" in stdout and "chosen on 3 validation queries" in stdout
    manifest = json.loads((tmp_path / "out" / "first_stage" / "manifest.json").read_text())
    section = manifest["parameters"]["section"]
    assert section["kind"] == "hybrid" and section["fusion"] in ("rrf", "interpolate")
    evidence = manifest["metrics"]
    assert evidence["queries"] == len(QUERIES) and evidence["chosen"] == max(evidence["options"].values())
    calibrator = json.loads((tmp_path / "out" / "calibrate" / "manifest.json").read_text())
    assert calibrator["data"]["first_stage"] == section  # the filter was fitted on the hybrid's candidates
    config = PipelineConfig.load(tmp_path / "out" / "pipeline.toml")
    assert config.stages() == ["hybrid", "filter"] and config.first_stage.params.fusion == section["fusion"]
    code, _, err = cli("eval", "--dataset", recipe.parent / "tiny", "--pipeline", tmp_path / "out" / "pipeline.toml",
                       "--out", tmp_path / "ev")
    assert code == 0, err
    assert set(json.loads((tmp_path / "ev" / "metrics.json").read_text())["stages"]) == {"hybrid", "filter"}


def test_a_new_build_stage_is_one_module_and_one_registry_line() -> None:
    from training.recipe import Recipe
    from training.stages.registry import BUILD_STAGES, build_stage

    for name in BUILD_STAGES:
        stage = build_stage(name)
        assert stage.name == name and stage.Params is not None
    recipe = Recipe.model_validate({"data": {"dataset": "x"}})
    assert recipe.active() == ["prune", "finetune", "index", "first_stage", "calibrate"]  # compress and rank: off by default


def test_an_auto_first_stage_is_chosen_by_the_one_standard_error_rule_and_reported(tmp_path: Path, cli) -> None:
    recipe = write_recipe(tmp_path, prune={"enabled": False}, finetune={"enabled": False}, calibrate={"enabled": False},
                          first_stage={"kind": "auto", "folds": 3})
    code, stdout, err = cli("build", recipe, "--out", tmp_path / "out")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "first_stage" / "manifest.json").read_text())
    evidence, section = manifest["metrics"], manifest["parameters"]["section"]
    kinds = {"dense", "bm25", "hybrid", "hybrid, tuned fusion"}
    assert set(evidence["kinds"]) == kinds and evidence["kind"] in kinds
    assert set(evidence["kinds_p_vs_chosen"]) == kinds - {evidence["kind"]}
    # the one-standard-error rule: the chosen kind is the first of the preference order within one SE of the best
    scores = {k: v for k, v in evidence["kinds"].items()}
    assert scores[evidence["kind"]] <= max(scores.values())
    if evidence["kind"] != "hybrid":  # the untuned hybrid (the default) was passed over: something beat it
        assert scores["hybrid"] < max(scores.values())
    assert section["kind"] == ("hybrid" if evidence["kind"].startswith("hybrid") else evidence["kind"])
    report = json.loads((tmp_path / "out" / "build.json").read_text())
    decision = next(s["decision"] for s in report["stages"] if s["name"] == "first_stage")
    assert decision.startswith(f"first stage: {section['kind']}") and f"decision [first_stage]: {decision}" in stdout
    assert "(default hybrid, then dense, bm25, hybrid, tuned fusion)" in decision
    assert PipelineConfig.load(tmp_path / "out" / "pipeline.toml").first_stage.kind == section["kind"]
    code, stdout, err = cli("build", recipe, "--out", tmp_path / "out")  # a reused stage still reports its decision
    assert code == 0 and f"decision [first_stage]: {decision}" in stdout, err


def test_an_auto_kind_with_a_fixed_fusion_compares_only_that_hybrid(tmp_path: Path, cli) -> None:
    recipe = write_recipe(tmp_path, prune={"enabled": False}, finetune={"enabled": False}, calibrate={"enabled": False},
                          first_stage={"kind": "auto", "fusion": "rrf", "folds": 3})
    code, _, err = cli("build", recipe, "--out", tmp_path / "out")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "first_stage" / "manifest.json").read_text())
    assert list(manifest["metrics"]["options"]) == ["rrf"] and set(manifest["metrics"]["kinds"]) == {"dense", "bm25", "hybrid"}
    section = manifest["parameters"]["section"]
    assert section["kind"] != "hybrid" or section["fusion"] == "rrf"


def test_auto_keeps_the_zero_shot_encoder_when_fine_tuning_does_not_pay_and_switches_off_a_filter_it_cannot_place(
        tmp_path: Path, cli) -> None:
    # a learning rate that wrecks the model: fine-tuning cannot pay, the build must see it on out-of-fold queries
    recipe = write_recipe(tmp_path, prune={"enabled": False}, finetune={"enabled": "auto", "learning_rate": 0.5},
                          calibrate={"enabled": "auto"})
    code, stdout, err = cli("build", recipe, "--out", tmp_path / "out")
    assert code == 0, err
    stages = {s["name"]: s for s in json.loads((tmp_path / "out" / "build.json").read_text())["stages"]}
    details = json.loads((tmp_path / "out" / "finetune" / "manifest.json").read_text())["lineage"]["details"]
    assert details["kept"] is False and details["evidence"]["fine-tuned"] < details["evidence"]["zero-shot"]
    assert stages["finetune"]["decision"].startswith("encoder: zero-shot kept")
    assert "decision [finetune]: encoder: zero-shot kept" in stdout
    # 7 relevant passages cannot place a 95%-recall threshold (40 needed): the build says so and serves no filter
    assert stages["calibrate"]["decision"].startswith("filter: off, ") and "fewer than the 40 needed" in stages["calibrate"]["decision"]
    config = PipelineConfig.load(tmp_path / "out" / "pipeline.toml")
    assert config.stages() == ["dense"] and config.encoder.adapter is None
    assert config.encoder.model == "bundled:all-MiniLM-L6-v2"
    # nothing trained on the training queries now: a filter allowed on fewer relevant pairs calibrates on all of them
    code, _, err = cli("build", recipe, "--out", tmp_path / "out", "--set", "calibrate.min_relevant=2")
    assert code == 0, err
    assert statuses(tmp_path / "out") == {"finetune": "reused", "index": "reused", "first_stage": "reused", "calibrate": "built"}
    calibrator = json.loads((tmp_path / "out" / "calibrate" / "manifest.json").read_text())
    assert calibrator["data"]["held_out"] == "all training queries" and calibrator["data"]["queries"] == len(QUERIES)
    assert PipelineConfig.load(tmp_path / "out" / "pipeline.toml").stages() == ["dense", "filter"]


def test_only_stages_that_decide_take_auto(tmp_path: Path, cli) -> None:
    recipe = write_recipe(tmp_path, prune={"enabled": "auto"})
    code, _, err = cli("build", recipe, "--out", tmp_path / "out")
    assert code != 0 and "prune.enabled: this stage does not decide for itself" in err


COMPRESS = {"enabled": True, "score": "gaprune", "layers": 2, "ffn": 0.5, "batch_size": 4, "supervised": 0.5, "triplets": 3}


def test_a_compress_stage_shrinks_the_fine_tuned_teacher_and_each_fold_model(tmp_path: Path, cli) -> None:
    # three queries: the fine-tuning cross-fits, so each fold's model is compressed too
    recipe = write_recipe(tmp_path, finetune_steps=2, prune={"enabled": False}, calibrate={"enabled": False}, compress=COMPRESS)
    out = tmp_path / "out"
    code, stdout, err = cli("build", recipe, "--out", out)
    assert code == 0, err
    assert statuses(out) == {"finetune": "built", "compress": "built", "index": "built", "first_stage": "built"}
    config = json.loads((out / "compress" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["intermediate_size"] == 768
    details = json.loads((out / "compress" / "manifest.json").read_text())["lineage"]["details"]
    assert len(details["folds"]) == 3 and all((out / "compress" / f["path"] / "config.json").is_file() for f in details["folds"])
    assert sorted(q for f in details["folds"] for q in f["qids"]) == sorted(QUERIES)  # every query scored out of fold
    assert details["kept"] is True and details["evidence"]["queries"] == len(QUERIES)
    assert "decision [compress]: encoder: compressed (gaprune: " in stdout
    assert PipelineConfig.load(out / "pipeline.toml").encoder.model == str(out / "compress")
    # lineage: the same recipe reuses it, another depth rebuilds it and what is built on it, not the fine-tuning
    code, _, err = cli("build", recipe, "--out", out, "--set", "compress.layers=3")
    assert code == 0, err
    assert statuses(out) == {"finetune": "reused", "compress": "built", "index": "built", "first_stage": "built"}
    assert json.loads((out / "compress" / "config.json").read_text())["num_hidden_layers"] == 3


def test_auto_keeps_the_teacher_when_the_student_loses_and_holds_out_its_own_queries(tmp_path: Path, cli) -> None:
    # no fine-tuning: the stage holds out its own validation queries; a learning rate that wrecks the student
    recipe = write_recipe(tmp_path, prune={"enabled": False}, finetune={"enabled": False}, calibrate={"enabled": False},
                          compress={**COMPRESS, "enabled": "auto", "learning_rate": 0.5, "tolerance": 0.0})
    code, stdout, err = cli("build", recipe, "--out", tmp_path / "out")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "compress" / "manifest.json").read_text())
    details = manifest["lineage"]["details"]
    assert manifest["kind"] == "compress-decision" and details["kept"] is False and details["held_out"]
    assert details["evidence"]["student"] < details["evidence"]["teacher"]
    assert "decision [compress]: encoder: teacher kept" in stdout
    assert PipelineConfig.load(tmp_path / "out" / "pipeline.toml").encoder.model == "bundled:all-MiniLM-L6-v2"
