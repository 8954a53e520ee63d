"""BitConfig: JSON round trip, apply/read back, and one clear error per bad entry."""

from __future__ import annotations

import json

import pytest

from proqha.errors import ProqhaError
from proqha.models import create_model
from proqha.quant import BitConfig, quant_layers, quantize_model


@pytest.fixture
def model():
    return quantize_model(create_model("digits_resnet"))


def test_round_trip_through_json_and_model(model, tmp_path):
    bits = BitConfig.from_model(model).to_dict()
    assert set(bits) == set(quant_layers(model))
    bits["layer1.0.conv1"] = {"w": 4, "a": 5}
    bits["fc"] = {"w": 32, "a": 32}
    path = tmp_path / "bits.json"
    BitConfig(bits).save(path)
    loaded = BitConfig.load(path)
    assert loaded.to_dict() == bits
    loaded.apply(model)
    assert quant_layers(model)["layer1.0.conv1"].w_bits == 4
    assert quant_layers(model)["layer1.0.conv1"].a_bits == 5
    assert BitConfig.from_model(model).to_dict() == bits
    assert json.loads(path.read_text()) == bits


def _config_with(model, layer, knobs):
    bits = BitConfig.from_model(model).to_dict()
    bits[layer] = knobs
    return bits


@pytest.mark.parametrize("knobs, message", [
    ({"w": 9, "a": 8}, "'w' bits must be an integer in 2..8 or 32"),
    ({"w": 4.0, "a": 8}, "got 4.0"),
    ({"w": 4, "a": True}, "got True"),
    ({"w": 4, "a": "8"}, "got '8'"),
    ({"w": 4}, "missing key 'a'"),
    ({"w": 4, "a": 4, "x": 1}, "unknown key 'x'"),
    (4, "must map 'w' and 'a'"),
])
def test_bad_entries_name_the_culprit(model, knobs, message):
    with pytest.raises(ProqhaError, match="layer1.0.conv1") as err:
        BitConfig(_config_with(model, "layer1.0.conv1", knobs))
    assert message in str(err.value)


def test_unknown_and_missing_layers(model):
    bits = BitConfig.from_model(model).to_dict()
    with pytest.raises(ProqhaError, match="unknown layer 'layer9.conv'"):
        BitConfig(bits | {"layer9.conv": {"w": 4, "a": 4}}).apply(model)
    del bits["layer2.0.conv2"]
    with pytest.raises(ProqhaError, match="missing layer 'layer2.0.conv2'"):
        BitConfig(bits).apply(model)


def test_unreadable_files(tmp_path):
    with pytest.raises(ProqhaError, match="not found"):
        BitConfig.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProqhaError, match="not readable JSON"):
        BitConfig.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ProqhaError, match="JSON object"):
        BitConfig.load(bad)
