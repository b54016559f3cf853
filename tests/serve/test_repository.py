"""The model repository on its own: loading, failing, reloading, unloading, readiness."""

from __future__ import annotations

import shutil

import pytest

from kiln.demo import model_path
from kiln.serve.errors import NotFound, ServeError, Unavailable
from kiln.serve.repository import ModelRepository
from tests.serve import models


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "cnn" / "1").mkdir(parents=True)
    shutil.copy(model_path(), tmp_path / "cnn" / "1" / "model.onnx")
    repository = ModelRepository(tmp_path, max_queue_size=4)
    yield repository
    repository.close()


def test_readiness_follows_the_models_meant_to_serve(repo, tmp_path):
    assert repo.load_all() == []
    assert repo.all_ready() and repo.ready_models() == ["cnn"]
    assert repo.get("cnn").scheduling.max_queue_size == 4  # the server's default bound
    repo.unload("cnn")  # unloaded on request: no longer expected to serve
    assert repo.all_ready()
    with pytest.raises(Unavailable, match="unloaded"):
        repo.get("cnn")
    with pytest.raises(NotFound, match="not loaded"):
        repo.unload("cnn")
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "model.onnx").write_bytes(
        models.broken_model().SerializeToString())
    assert repo.load_all() == ["bad"]  # cnn loads again, bad fails
    assert not repo.all_ready()
    assert [row["state"] for row in repo.index() if row["name"] == "bad"] == ["UNAVAILABLE"]
    assert repo.index(ready_only=True) == [{"name": "cnn", "version": "1", "state": "READY",
                                            "reason": ""}]


def test_a_failed_reload_keeps_the_old_versions(repo, tmp_path):
    repo.load("cnn")
    serving = repo.get("cnn")
    (tmp_path / "cnn" / "config.pbtxt").write_text("max_batch_size: oops")
    with pytest.raises(ServeError, match="not a valid model configuration"):
        repo.load("cnn")
    assert repo.get("cnn") is serving and repo.all_ready()
    (tmp_path / "cnn" / "config.pbtxt").write_text("max_batch_size: 2")
    repo.load("cnn")
    assert repo.get("cnn") is not serving and repo.get("cnn").config.max_batch_size == 2
