"""KServe v2 over HTTP, driven by Triton's own client (tritonclient.http): every answer is
checked against the same engine run directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serve import models

pytestmark = pytest.mark.timeout(120)


def _inputs(arrays: dict[str, np.ndarray], binary: bool) -> list[httpclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        datatype = httpclient.np_to_triton_dtype(array.dtype)
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_health_and_server_metadata(http):
    assert http.is_server_live()
    # strict readiness: the repository holds two models that fail to load
    assert not http.is_server_ready()
    metadata = http.get_server_metadata()
    assert metadata["name"] == "kiln"
    assert {"binary_tensor_data", "statistics", "model_repository"} <= set(
        metadata["extensions"])


def test_model_metadata_and_config(http):
    metadata = http.get_model_metadata("digits")
    assert metadata["versions"] == ["2"]  # the newest, when no version is named
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "logits"]
    assert http.get_model_metadata("digits", "1")["versions"] == ["1"]
    config = http.get_model_config("digits")
    assert config["max_batch_size"] == 16
    assert config["input"][0]["dims"] == [1, 8, 8]  # numbers, as Triton sends them
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert config["instance_group"][0]["count"] == 2
    assert http.is_model_ready("digits") and http.is_model_ready("digits", "1")
    assert not http.is_model_ready("digits", "7")


@pytest.mark.parametrize("version", ["1", "2"])  # 1: a .kiln engine, 2: ONNX built at load
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_digits_match_the_engine(http, digits_engine, version, binary, rows):
    images = models.digits_images(rows, seed=rows)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
               for n in ("probabilities", "logits")]
    result = http.infer("digits", _inputs({"image": images}, binary), model_version=version,
                        outputs=outputs, request_id=f"r{rows}")
    expected = digits_engine.run({"image": images})
    for name in ("probabilities", "logits"):
        models.assert_cnn_close(result.as_numpy(name), expected[name])
    response = result.get_response()
    assert response["model_version"] == version and response["id"] == f"r{rows}"


@pytest.mark.parametrize("binary", [True, False])
def test_eight_dtypes_match_the_engine(http, mixed_engine, binary):
    arrays = models.mixed_inputs(5, seed=int(binary))
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
               for n in models.MIXED_OUTPUTS]
    result = http.infer("mixed", _inputs(arrays, binary), outputs=outputs)
    expected = mixed_engine.run(arrays)
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_only_the_requested_outputs_come_back(http, digits_engine):
    images = models.digits_images(2, seed=5)
    result = http.infer("digits", _inputs({"image": images}, True),
                        outputs=[httpclient.InferRequestedOutput("logits")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits"]
    models.assert_cnn_close(result.as_numpy("logits"),
                                  digits_engine.run({"image": images})["logits"])
    # a model whose config lists one of the engine's two outputs serves that one
    plain = http.infer("plain", _inputs({"image": images}, True))
    assert [o["name"] for o in plain.get_response()["outputs"]] == ["probabilities"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(http, digits_engine, algorithm):
    images = models.digits_images(4, seed=11)
    result = http.infer("digits", _inputs({"image": images}, True),
                        request_compression_algorithm=algorithm,
                        response_compression_algorithm=algorithm)
    models.assert_cnn_close(result.as_numpy("probabilities"),
                                  digits_engine.run({"image": images})["probabilities"])


def test_statistics_count_what_was_served(http):
    before = http.get_inference_statistics("mixed")["model_stats"][0]
    for rows in (1, 2, 3):
        http.infer("mixed", _inputs(models.mixed_inputs(rows, seed=rows), True))
    after = http.get_inference_statistics("mixed")["model_stats"][0]
    stats, old = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - old["success"]["count"] == 3
    assert after["inference_count"] - before["inference_count"] == 6  # rows
    assert stats["queue"]["ns"] > old["queue"]["ns"]
    assert stats["compute_infer"]["ns"] > old["compute_infer"]["ns"]
    assert after["last_inference"] > 0
    assert sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == \
        after["execution_count"]
    everything = http.get_inference_statistics()["model_stats"]
    assert {"digits", "mixed", "plain"} <= {s["name"] for s in everything}


def test_repository_index_reports_what_failed_and_why(http):
    rows = http.get_model_repository_index()
    index = {(row["name"], row.get("version", "")): row for row in rows}
    assert index[("digits", "1")]["state"] == "READY"
    assert index[("digits", "2")]["state"] == "READY"
    assert index[("broken", "")]["state"] == "UNAVAILABLE"
    assert "NoSuchOp" in index[("broken", "")]["reason"]
    assert "config.pbtxt" in index[("badcfg", "")]["reason"]
    with pytest.raises(InferenceServerException, match=r"(?s)not ready.*NoSuchOp"):
        http.infer("broken", _inputs({"x": np.zeros((1, 4), np.float32)}, True))


def test_auto_completed_config(http, digits_engine):
    config = http.get_model_config("fixed")
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config
    assert config["input"][0] == {**config["input"][0], "name": "image",
                                  "data_type": "TYPE_FP32", "dims": [1, 8, 8]}
    assert {o["name"]: o["dims"] for o in config["output"]} == {"logits": [10],
                                                                "probabilities": [10]}
    images = models.digits_images(4, seed=3)
    result = http.infer("fixed", _inputs({"image": images}, True))
    models.assert_cnn_close(result.as_numpy("logits"),
                                  digits_engine.run({"image": images})["logits"])


def test_unload_then_load_again(http, digits_engine):
    images = models.digits_images(1, seed=8)
    http.unload_model("plain")
    assert not http.is_model_ready("plain")
    with pytest.raises(InferenceServerException) as refused:
        http.infer("plain", _inputs({"image": images}, True))
    assert refused.value.status() == "503" or "not ready" in str(refused.value)
    http.load_model("plain")
    assert http.is_model_ready("plain")
    result = http.infer("plain", _inputs({"image": images}, True))
    models.assert_cnn_close(result.as_numpy("probabilities"),
                                  digits_engine.run({"image": images})["probabilities"])


def test_load_with_a_config_override_and_a_bad_one(http):
    config = http.get_model_config("plain")
    config["max_batch_size"] = 2
    http.load_model("plain", config=json.dumps(config))
    assert http.get_model_config("plain")["max_batch_size"] == 2
    with pytest.raises(InferenceServerException, match="batch size 3"):
        http.infer("plain", _inputs({"image": models.digits_images(3, seed=1)}, True))
    with pytest.raises(InferenceServerException, match="not a valid model configuration"):
        http.load_model("plain", config="{\"max_batch_size\": \"many\"}")
    assert http.get_model_config("plain")["max_batch_size"] == 2  # the old one still serves
    http.load_model("plain")
    assert http.get_model_config("plain")["max_batch_size"] == 16
