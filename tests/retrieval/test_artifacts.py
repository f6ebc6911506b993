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
