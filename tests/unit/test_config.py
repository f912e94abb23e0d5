"""QuantConfig: JSON round trip, presets, and impossible configurations."""

import pytest

from vq2trt.config import PRESETS, ConfigError, QuantConfig, resolve_config


def test_json_round_trip():
    c = QuantConfig(vector_len=6, num_centroids=4096, num_res_centroids=16, outlier_frac=0.01, num_groups=2)
    assert QuantConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name):
    assert resolve_config(name).method in ("vptq", "gptq", "rtn")


@pytest.mark.parametrize("fields, message", [
    (dict(num_centroids=1), "num_centroids=1"),
    (dict(vector_len=0), "vector_len=0"),
    (dict(outlier_frac=1.5), "outlier_frac=1.5"),
    (dict(num_centroids=2**16 + 1), "index bits <= 16"),
    (dict(num_res_centroids=1), "num_res_centroids=1"),
    (dict(method="awq"), "method='awq'"),
    (dict(num_groups=0), "num_groups=0"),
])
def test_impossible_configs_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("*", r"\*")):
        QuantConfig(**fields)


def test_unknown_field_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="unknown field"):
        QuantConfig.from_dict({"vector_lenght": 4})
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_config(str(p))
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_config(str(tmp_path / "missing.json"))


def test_outlier_count_is_exact():
    assert QuantConfig(outlier_frac=0.01).num_outlier_cols(100) == 1
    assert QuantConfig(outlier_frac=0.01).num_outlier_cols(576) == 6
    assert QuantConfig().num_outlier_cols(576) == 0
