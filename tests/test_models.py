import json

import pytest
import torch

from digitlib.modeling.checkpoint import CheckpointError, load_model, save_model
from digitlib.modeling.models import ARCHITECTURES, build_model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_output_shape(arch):
    model = build_model(arch).eval()
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)


def test_seed_architecture_is_the_seed_apps():
    layers = [type(m).__name__ for m in build_model("seed")]
    assert layers == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert build_model("seed")[6].in_features == 9216


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'"):
        build_model("resnet9000")


def test_save_load_round_trip(tmp_path):
    model = build_model("vggbn").eval()
    save_model(model, tmp_path / "m", {"arch": "vggbn", "arch_params": {}, "metrics": {"x": 1}}, onnx_check_limit=100)
    loaded = load_model(tmp_path / "m")
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), loaded.model(x))
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["metrics"] == {"x": 1} and loaded.metadata["arch"] == "vggbn"
    for key in ("normalisation", "version", "created_at", "digitlib_version", "weights_sha256"):
        assert key in meta


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    (tmp_path / "evil").mkdir()
    torch.save({"state_dict": {}, "metadata_json": "{}", "x": Payload()}, tmp_path / "evil" / "model.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_model(tmp_path / "evil")


def test_checkpoint_for_another_architecture_is_refused(tmp_path):
    save_model(build_model("seed"), tmp_path / "s", {"arch": "seed", "arch_params": {}}, onnx_check_limit=100)
    with pytest.raises(CheckpointError, match="architecture 'seed', not 'vggbn'"):
        load_model(tmp_path / "s", expect_arch="vggbn")
    # Weights that claim another architecture than they fit.
    blob = torch.load(tmp_path / "s" / "model.pt", weights_only=True)
    blob["metadata_json"] = blob["metadata_json"].replace('"arch": "seed"', '"arch": "vggbn"')
    (tmp_path / "s" / "metadata.json").unlink()
    torch.save(blob, tmp_path / "s" / "model.pt")
    with pytest.raises(CheckpointError, match="do not fit architecture 'vggbn'"):
        load_model(tmp_path / "s")


def test_altered_weights_fail_the_checksum(tmp_path):
    save_model(build_model("seed"), tmp_path / "s", {"arch": "seed", "arch_params": {}}, onnx_check_limit=100)
    path = tmp_path / "s" / "model.pt"
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_model(tmp_path / "s")


def test_missing_model_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="digitlib train"):
        load_model(tmp_path / "nothing")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="refused"):
        load_model(tmp_path / "junk")


def test_corrupt_metadata_is_an_error_naming_the_file(tmp_path):
    save_model(build_model("seed"), tmp_path / "s", {"arch": "seed", "arch_params": {}}, onnx_check_limit=100)
    (tmp_path / "s" / "metadata.json").write_bytes(b'{"weights_sha256": "\xff')
    with pytest.raises(CheckpointError, match=r"s/metadata.json: unreadable model metadata"):
        load_model(tmp_path / "s")


def test_non_finite_weights_are_refused(tmp_path):
    save_model(build_model("seed"), tmp_path / "s", {"arch": "seed", "arch_params": {}}, onnx_check_limit=100)
    blob = torch.load(tmp_path / "s" / "model.pt", weights_only=True)
    blob["state_dict"]["6.bias"][3] = float("inf")
    torch.save(blob, tmp_path / "s" / "model.pt")
    (tmp_path / "s" / "metadata.json").unlink()
    with pytest.raises(CheckpointError, match="non-finite weights .* 6.bias"):
        load_model(tmp_path / "s")
