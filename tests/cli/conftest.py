from tests.bench.conftest import (  # noqa: F401  (fixtures shared with the library tests)
    classifier_path,
    embedding_path,
    static_classifier_path,
)
