"""The material field: albedo, specular strength, glossiness and a refined normal at any point.

    field = MaterialField(aabb_min, aabb_max)
    m = field(positions, normals)          # positions [N, 3] world, geometric normals [N, 3]
    m.albedo [N, 3] linear RGB in (0, 1), m.specular [N] in (0, 1), m.glossiness [N] >= 8,
    m.normal [N, 3] unit

    field = load_material(folder, device)  # what material.pt + material.json hold
    albedo, specular, glossiness, normal = field.query(positions, normals)

Its own small hash grid (the geometry field's features are not needed: geometry is frozen and
the material only has to be looked up at surface points). The refined normal is the geometric
normal plus a learned offset, renormalised, so it starts exactly at the normals stage's target
and only departs from it where the photos' shading asks for detail.
"""
from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from stages.errors import NeroicError
from stages.field.encodings import HashGridEncoding
from stages.field.mlp import MLP

MODEL_FILE = "material.pt"
CONFIG_FILE = "material.json"

# Output channels of the MLP: albedo 3, specular 1, glossiness 1, normal offset 3.
_N_OUT = 8
# Initial biases: albedo 0.5, specular strength sigmoid(-3) ~ 0.05, glossiness softplus(4) + 8 ~ 12.
_INIT_SPECULAR, _INIT_GLOSS = -3.0, 4.0
# A broader lobe shades almost like the diffuse term under an order-2 SH light (band-2 weight
# exp(-4 / 2s): 0.55 at s = 3.4, against the diffuse lobe's 0.25), and a free fit uses it to take
# the albedo's place: on the skull, a white lobe of glossiness 3.4 and a darker albedo.
MIN_GLOSSINESS = 8.0


@dataclass
class MaterialSample:
    """Material at N points: albedo [N, 3] linear RGB, specular [N], glossiness [N], normal [N, 3] unit."""

    albedo: Tensor
    specular: Tensor
    glossiness: Tensor
    normal: Tensor


class MaterialField(nn.Module):
    """Hash grid over the box (aabb_min, aabb_max: [3] world) + an MLP head."""

    def __init__(self, aabb_min: Sequence[float], aabb_max: Sequence[float], *, n_levels: int = 12,
                 n_features: int = 2, log2_table: int = 15, base_resolution: int = 16,
                 max_resolution: int = 512, width: int = 64, n_hidden: int = 2):
        super().__init__()
        self.config = dict(aabb_min=[float(v) for v in aabb_min], aabb_max=[float(v) for v in aabb_max],
                           n_levels=n_levels, n_features=n_features, log2_table=log2_table,
                           base_resolution=base_resolution, max_resolution=max_resolution,
                           width=width, n_hidden=n_hidden)
        lo, hi = torch.tensor(self.config["aabb_min"]), torch.tensor(self.config["aabb_max"])
        self.register_buffer("aabb_min", lo, persistent=False)
        self.register_buffer("aabb_size", hi - lo, persistent=False)
        self.encoding = HashGridEncoding(n_levels, n_features, log2_table, base_resolution, max_resolution)
        self.head = MLP(self.encoding.out_dim, _N_OUT, width, n_hidden)
        last = self.head.net[-1]
        with torch.no_grad():
            last.weight[5:].mul_(0.1)  # small normal offsets at the start
            last.bias.copy_(torch.tensor([0.0, 0.0, 0.0, _INIT_SPECULAR, _INIT_GLOSS, 0.0, 0.0, 0.0]))

    def forward(self, positions: Tensor, normals: Tensor) -> MaterialSample:
        """positions [N, 3] world, geometric normals [N, 3] unit -> MaterialSample."""
        h = self.head(self.encoding((positions - self.aabb_min) / self.aabb_size))
        return MaterialSample(
            albedo=torch.sigmoid(h[:, 0:3]),
            specular=torch.sigmoid(h[:, 3]),
            glossiness=nn.functional.softplus(h[:, 4]) + MIN_GLOSSINESS,
            normal=nn.functional.normalize(normals + h[:, 5:8], dim=-1, eps=1e-6),
        )

    @torch.no_grad()
    def query(self, positions: Tensor, normals: Tensor, chunk: int = 1 << 16) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For other stages (export): positions [N, 3] world, normals [N, 3] unit ->
        (albedo [N, 3] linear RGB, specular [N], glossiness [N], refined normal [N, 3]), in chunks."""
        parts = [self(positions[i:i + chunk], normals[i:i + chunk]) for i in range(0, positions.shape[0], chunk)]
        if not parts:
            empty = positions.new_zeros(0)
            return positions.new_zeros(0, 3), empty, empty, positions.new_zeros(0, 3)
        return (torch.cat([p.albedo for p in parts]), torch.cat([p.specular for p in parts]),
                torch.cat([p.glossiness for p in parts]), torch.cat([p.normal for p in parts]))


def save_material(field: MaterialField, folder: Path) -> None:
    """material.pt (the state dict: plain tensors) and material.json (the constructor's arguments)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in field.state_dict().items()}, folder / MODEL_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(field.config, indent=1) + "\n", encoding="utf-8")


def load_material(folder: str | Path, device: str | torch.device = "cpu") -> MaterialField:
    """The trained material field of a material stage folder, in eval mode on `device`."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        lo, hi = config.pop("aabb_min"), config.pop("aabb_max")
        field = MaterialField(lo, hi, **config)
        field.load_state_dict(torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as exc:
        raise NeroicError(f"cannot load the material model from {folder}: {exc}",
                          hint="rerun the material stage (neroic stage material --force)") from None
    return field.to(device).eval()
