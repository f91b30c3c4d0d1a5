"""Files that would need pickle to load are refused, and their code never runs."""
import json

import numpy as np
import pytest
import torch

from stages.errors import NeroicError

SENTINEL = {}


def _ran(path):
    SENTINEL["ran"] = path


class Payload:
    """Unpickling this calls _ran: what a malicious checkpoint would do with os.system."""

    def __reduce__(self):
        return (_ran, ("unpickled",))


def test_checkpoint_needing_pickle_is_set_aside(tmp_path):
    from stages.field.checkpoints import load_checkpoint

    path = tmp_path / "train.pt"
    torch.save({"step": 3, "config_key": "k", "payload": Payload()}, path)
    assert load_checkpoint(path, "k") is None
    assert "ran" not in SENTINEL
    assert (tmp_path / "train.corrupt").exists() and not path.exists()


def test_trained_field_needing_pickle_is_refused(tmp_path):
    from stages.field.trained import load_trained_field

    (tmp_path / "field.json").write_text(json.dumps({"format": 1}))
    torch.save({"weights": Payload()}, tmp_path / "field.pt")
    with pytest.raises(NeroicError, match="cannot load the trained field"):
        load_trained_field(tmp_path)
    assert "ran" not in SENTINEL


def test_npz_with_objects_is_refused(tmp_path):
    from stages.field.occupancy import OccupancyGrid

    np.savez(tmp_path / "occupancy.npz", aabb_min=np.zeros(3), aabb_max=np.ones(3),
             hull=np.array([Payload()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        OccupancyGrid.load_npz(tmp_path / "occupancy.npz")
    assert "ran" not in SENTINEL


def test_material_model_needing_pickle_is_refused(tmp_path):
    from stages.material.material_field import CONFIG_FILE, MODEL_FILE, load_material

    (tmp_path / CONFIG_FILE).write_text(json.dumps({"aabb_min": [-1, -1, -1], "aabb_max": [1, 1, 1]}))
    torch.save({"weights": Payload()}, tmp_path / MODEL_FILE)
    with pytest.raises(NeroicError, match="cannot load the material model"):
        load_material(tmp_path)
    assert "ran" not in SENTINEL
