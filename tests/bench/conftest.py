from __future__ import annotations

import pytest

from tests.bench import models


@pytest.fixture(scope="session")
def classifier_path(tmp_path_factory):
    return models.classifier(tmp_path_factory.mktemp("models") / "classifier.onnx")


@pytest.fixture(scope="session")
def static_classifier_path(tmp_path_factory):
    return models.classifier(tmp_path_factory.mktemp("models") / "static.onnx", batch=4)


@pytest.fixture(scope="session")
def embedding_path(tmp_path_factory):
    return models.embedding(tmp_path_factory.mktemp("models") / "embedding.onnx")
