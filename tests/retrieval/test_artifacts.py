from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.artifacts import Manifest, atomic_dir, write_text_atomic
from retrieval.errors import SiftrankError


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "artifact"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temp directory left behind either


def test_atomic_dir_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "artifact"
    with atomic_dir(target) as tmp:
        Manifest(kind="demo", parameters={"v": 1}).write(tmp)
    with pytest.raises(SiftrankError, match="already exists"):
        with atomic_dir(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as tmp:
            Manifest(kind="demo", parameters={"v": 2}).write(tmp)
            raise RuntimeError
    assert Manifest.read(target).parameters == {"v": 1}  # the old artifact survived the failed replace
    with atomic_dir(target, overwrite=True) as tmp:
        Manifest(kind="demo", parameters={"v": 2}).write(tmp)
    assert Manifest.read(target, kind="demo").parameters == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_manifest_validation(tmp_path: Path) -> None:
    with pytest.raises(SiftrankError, match="not a siftrank artifact"):
        Manifest.read(tmp_path)
    write_text_atomic(tmp_path / "manifest.json", "{broken")
    with pytest.raises(SiftrankError, match="invalid manifest"):
        Manifest.read(tmp_path)
    Manifest(kind="index").write(tmp_path)
    with pytest.raises(SiftrankError, match="is a 'index' artifact, expected 'calibrator'"):
        Manifest.read(tmp_path, kind="calibrator")


def test_every_artifact_writer_keeps_the_one_contract() -> None:
    """Index, calibrator, pruned/distilled encoder, fine-tuned encoder or adapter, ranker: ``save(path,
    overwrite=False)`` and a manifest kind, nothing else passed at save time."""
    import inspect

    from retrieval.artifacts import Artifact
    from retrieval.calibration import Calibrator
    from retrieval.index import Index
    from training.distil import Distiller
    from training.finetune import FineTuner
    from training.listwise import ListwiseTrainer
    from training.prune import Pruner

    for cls in (Index, Calibrator, Pruner, Distiller, FineTuner, ListwiseTrainer):
        parameters = list(inspect.signature(cls.save).parameters.values())
        assert [p.name for p in parameters] == ["self", "path", "overwrite"], cls
        assert parameters[2].default is False and hasattr(cls, "artifact_kind"), cls
    calibrator = Calibrator(family="linear", use_embedding=False)
    assert isinstance(calibrator, Artifact) and calibrator.artifact_kind == "calibrator"


def test_a_calibrator_writes_its_data_and_metrics_through_save(tmp_path: Path) -> None:
    from retrieval.calibration import Calibrator

    calibrator = Calibrator(family="linear", use_embedding=False)
    calibrator.data, calibrator.metrics = {"queries": 3}, {"cv": {"folds": 2}}
    calibrator.save(tmp_path / "cal")
    manifest = Manifest.read(tmp_path / "cal", kind="calibrator")
    assert manifest.data == {"queries": 3} and manifest.metrics == {"cv": {"folds": 2}}
    with pytest.raises(SiftrankError, match="exists"):
        calibrator.save(tmp_path / "cal")
