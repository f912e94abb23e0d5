"""QuantConfig.modules: per-Linear format overrides, their JSON round trip and their validation."""

import json

import pytest

from vq2trt.config import PER_MODULE_FIELDS, PRESETS, ConfigError, QuantConfig

DOWN = "model.layers.3.mlp.down_proj"
Q = "model.layers.0.self_attn.q_proj"


def test_for_module_applies_only_that_modules_overrides():
    c = QuantConfig(vector_len=4, num_centroids=256, kmeans_iters=7,
                    modules={DOWN: {"vector_len": 3, "num_centroids": 512, "outlier_frac": 0.01}})
    down, q = c.for_module(DOWN), c.for_module(Q)
    assert (down.vector_len, down.num_centroids, down.outlier_frac) == (3, 512, 0.01)
    assert down.kmeans_iters == 7 and down.modules == {}          # the rest comes from the base
    assert (q.vector_len, q.num_centroids, q.outlier_frac) == (4, 256, 0.0)
    assert c.vector_len == 4                                      # the base itself is untouched


def test_json_round_trip_keeps_modules():
    c = QuantConfig(modules={DOWN: {"vector_len": 2, "num_res_centroids": 4}, Q: {"enable_norm": False}})
    back = QuantConfig.from_json(c.to_json())
    assert back == c and back.for_module(Q).enable_norm is False
    assert json.loads(c.to_json())["modules"][DOWN] == {"vector_len": 2, "num_res_centroids": 4}


def test_config_without_modules_still_loads_as_version_1():
    old = QuantConfig().to_dict()
    del old["modules"]                          # a config file written before the field existed
    c = QuantConfig.from_dict(old)
    assert c.modules == {} and c.version == 1 and c == QuantConfig()


@pytest.mark.parametrize("modules, needles", [
    ({DOWN: {"kmeans_iters": 3}}, [DOWN, "kmeans_iters", "cannot be set per module"]),
    ({DOWN: {"vector_lenght": 3}}, [DOWN, "vector_lenght"]),
    ({DOWN: {"vector_len": 0}}, [DOWN, "vector_len=0", "integer >= 1"]),
    ({DOWN: {"num_centroids": 2**17}}, [DOWN, "num_centroids", "index bits <= 16"]),
    ({DOWN: {"outlier_frac": "lots"}}, [DOWN, "lots"]),
    ({DOWN: {"enable_norm": "yes"}}, [DOWN, "enable_norm", "true or false"]),
    ({DOWN: 4}, [DOWN, "must be an object", "int"]),
    ([DOWN], ["modules", "object mapping module names"]),
])
def test_bad_overrides_name_the_module_and_field(modules, needles):
    with pytest.raises(ConfigError) as e:
        QuantConfig.from_dict({"modules": modules})
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_overrides_need_method_vptq():
    with pytest.raises(ConfigError, match="modules.*method is not 'vptq'"):
        QuantConfig(method="gptq", modules={DOWN: {"vector_len": 2}})


def test_every_per_module_field_can_be_overridden():
    fmt = QuantConfig(**PRESETS["v3-k512-o1"]).format_fields()
    c = QuantConfig(modules={DOWN: fmt})
    assert c.for_module(DOWN).format_fields() == fmt and set(fmt) == set(PER_MODULE_FIELDS)
