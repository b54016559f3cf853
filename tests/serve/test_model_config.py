"""config.pbtxt: parsed against Triton's schema, completed from the engine, checked against
it; each mistake refused with a message naming it and the fix."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from kiln.build import BuilderConfig, build_engine
from kiln.demo import model_path
from kiln.serve.errors import ServeError, Unsupported
from kiln.serve.model_config import (
    builder_config,
    complete,
    cuda_graphs,
    instance_devices,
    read_config,
    scheduling,
)
from kiln.serve.proto import pb
from kiln.serve.repository import model_file, select_versions


@pytest.fixture(scope="module")
def cnn():
    return build_engine(model_path(), BuilderConfig(device="cpu"))


def _config(text: str, name: str = "m"):
    config = text_format.Parse(text, pb.ModelConfig())
    config.name = config.name or name
    return config


def _write(tmp_path, text: str | None, name: str = "m"):
    model_dir = tmp_path / name
    model_dir.mkdir()
    if text is not None:
        (model_dir / "config.pbtxt").write_text(text)
    return model_dir


CNN = """
max_batch_size: 8
input [{ name: "image" data_type: TYPE_FP32 dims: [1, 8, 8] }]
"""


def test_a_full_config_is_kept_and_completed(cnn):
    config = complete(_config(CNN + "dynamic_batching { preferred_batch_size: [4, 8] }"),
                      cnn, ["cpu", "cpu"])
    assert config.max_batch_size == 8 and config.backend == "kiln"
    assert [o.name for o in config.output] == ["logits", "probabilities"]
    assert list(config.output[0].dims) == [10]  # static inputs: the probe's dims
    assert config.version_policy.latest.num_versions == 1
    assert pb.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_CPU"
    s = scheduling(config, default_max_queue=99)
    assert s.dynamic and s.preferred == (4, 8) and s.max_queue_size == 99


def test_no_config_file_is_auto_completed(tmp_path, cnn):
    config = complete(read_config(_write(tmp_path, None, "digits")), cnn, ["cpu"])
    assert config.name == "digits"
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("image", [1, 8, 8])]


@pytest.mark.parametrize("text, expected", [
    ("max_batch_size: [", "is not a valid model configuration"),
    ("name: \"other\"", "names the model 'other', but its directory is 'm'"),
    ("no_such_field: 1", "no_such_field"),
])
def test_unreadable_configs(tmp_path, text, expected):
    with pytest.raises(ServeError, match=expected):
        read_config(_write(tmp_path, text))


@pytest.mark.parametrize("text, expected", [
    ("platform: \"tensorrt_plan\"", "kiln engines and ONNX models"),
    ("sequence_batching {}", "sequence_batching"),
    ("ensemble_scheduling {}", "ensemble_scheduling"),
    ("input [{ name: \"x\" reshape { shape: [4] } }]", "reshape"),
    ("model_transaction_policy { decoupled: true }", "decoupled"),
    ("dynamic_batching { priority_levels: 2 }", "priority_levels"),
])
def test_unsupported_settings_are_refused(tmp_path, text, expected):
    with pytest.raises(Unsupported, match=expected):
        read_config(_write(tmp_path, text))


@pytest.mark.parametrize("text, expected", [
    (CNN.replace("TYPE_FP32", "TYPE_FP16"), "is TYPE_FP16 in config.pbtxt, but the engine "
     "takes TYPE_FP32"),
    (CNN.replace("[1, 8, 8]", "[8, 8]"), "dims leave out the batch axis"),
    (CNN.replace("max_batch_size: 8", "max_batch_size: 0"), "with max_batch_size 0, dims "
     "include every axis"),
    (CNN.replace("[1, 8, 8]", "[1, 8, 9]"), "axis 3 is 9 in config.pbtxt, but the engine "
     "fixes it at 8"),
    (CNN.replace("\"image\"", "\"pixels\""), "lists input 'pixels', which the engine does not "
     "have; its inputs are 'image'"),
    (CNN + "output [{ name: \"logits\" data_type: TYPE_INT64 dims: [10] }]",
     "output 'logits' is TYPE_INT64"),
    ("max_batch_size: 0\ndynamic_batching {}", "dynamic_batching with max_batch_size 0"),
])
def test_config_and_engine_must_agree(cnn, text, expected):
    with pytest.raises(ServeError) as error:
        complete(_config(text), cnn, ["cpu"])
    assert expected in str(error.value)


def test_a_fixed_batch_cannot_be_batched():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    engine = build_engine(helper.make_model(graph, ir_version=8,
                                            opset_imports=[helper.make_opsetid("", 17)]),
                          BuilderConfig(device="cpu"))
    with pytest.raises(ServeError, match="fixes the batch axis at 1"):
        complete(_config("max_batch_size: 4"), engine, ["cpu"])
    assert complete(_config(""), engine, ["cpu"]).max_batch_size == 0  # unbatched: fine


def test_max_batch_size_beyond_the_engine_profile():
    engine = build_engine(model_path(), BuilderConfig(device="cpu", profiles=[{
        "min": {"image": [1, 1, 8, 8]}, "opt": {"image": [2, 1, 8, 8]},
        "max": {"image": [4, 1, 8, 8]}}]))
    with pytest.raises(ServeError) as error:
        complete(_config(CNN), engine, ["cpu"])
    assert "max_batch_size is 8, but the engine's profiles take image batch 1..4" in \
        str(error.value)
    assert complete(_config(CNN.replace("8\n", "4\n", 1)), engine, ["cpu"]).max_batch_size == 4


def test_preferred_sizes_must_fit_max_batch_size(cnn):
    config = complete(_config(CNN + "dynamic_batching { preferred_batch_size: [16] }"), cnn,
                      ["cpu"])
    with pytest.raises(ServeError, match=r"must lie in 1\.\.max_batch_size"):
        scheduling(config, 10)


def test_instance_groups():
    assert instance_devices(_config("instance_group [{ count: 3 kind: KIND_CPU }]"),
                            None) == ["cpu"] * 3
    assert instance_devices(_config(""), "cpu") == ["cpu"]
    with pytest.raises(ServeError, match="built for cuda, but instance_group places it on cpu"):
        instance_devices(_config("instance_group [{ kind: KIND_CPU }]"), "cuda")
    with pytest.raises(Unsupported, match="KIND_MODEL"):
        instance_devices(_config("instance_group [{ kind: KIND_MODEL }]"), None)


def test_cuda_graphs_only_when_asked_and_one_instance_per_gpu():
    graphs = "optimization { cuda { graphs: true } }"
    assert not cuda_graphs(_config(""), ["cuda:0"])
    assert cuda_graphs(_config(graphs), ["cuda:0", "cuda:1"])
    assert not cuda_graphs(_config(graphs), ["cpu"])
    with pytest.raises(Unsupported, match="several instances on one GPU"):
        cuda_graphs(_config(graphs), ["cuda:0", "cuda:0"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_instances_on_a_machine_without_one():
    with pytest.raises(ServeError, match="no CUDA device"):
        instance_devices(_config("instance_group [{ kind: KIND_GPU }]"), None)


def test_build_settings_from_parameters_and_tensorrt_accelerator():
    config = _config("""
        parameters { key: "precision" value { string_value: "fp16" } }
        parameters { key: "min_shapes" value { string_value: "image:1x1x8x8" } }
        parameters { key: "opt_shapes" value { string_value: "image:4x1x8x8" } }
        parameters { key: "max_shapes" value { string_value: "image:8x1x8x8" } }""")
    settings = builder_config(config, "cpu")
    assert settings.precision == "fp16"
    assert settings.profiles == [{"min": {"image": [1, 1, 8, 8]}, "opt": {"image": [4, 1, 8, 8]},
                                  "max": {"image": [8, 1, 8, 8]}}]
    trt = _config("""optimization { execution_accelerators { gpu_execution_accelerator [{
        name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } }] } }""")
    assert builder_config(trt, "cpu").precision == "fp16"
    assert builder_config(_config(""), "cpu").profiles == []
    with pytest.raises(ServeError, match=r"unknown precision 'fp12'"):
        builder_config(_config('parameters { key: "precision" value { string_value: "fp12" } }'),
                       "cpu")


def test_version_policy(tmp_path):
    model_dir = _write(tmp_path, None)
    for version in (1, 2, 5):
        (model_dir / str(version)).mkdir()
    (model_dir / "notes").mkdir()
    assert select_versions(model_dir, _config("")) == [5]
    assert select_versions(model_dir, _config("version_policy { latest { num_versions: 2 } }")) \
        == [2, 5]
    assert select_versions(model_dir, _config("version_policy { all {} }")) == [1, 2, 5]
    assert select_versions(model_dir, _config("version_policy { specific { versions: [1] } }")) \
        == [1]
    with pytest.raises(ServeError, match=r"asks for version\(s\) \[3\]"):
        select_versions(model_dir, _config("version_policy { specific { versions: [3] } }"))
    with pytest.raises(ServeError, match=r"no model\.kiln or model\.onnx"):
        model_file(model_dir / "1", _config(""))
    with pytest.raises(ServeError, match="has no version directories"):
        select_versions(_write(tmp_path, None, "empty"), _config(""))
