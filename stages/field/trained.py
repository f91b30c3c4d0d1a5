"""A trained field on disk (the geometry stage's output) and back: what later stages load.

    trained = load_trained_field(workdir / "geometry", device="cpu")
    sigma, geo = trained.field.density(points)            # points [N, 3] world
    out = trained.render(view=3)                          # rgb/acc/depth of one photo's camera
    out = trained.render(0, cameras=Cameras.from_frames(read_transforms(path)))   # any camera

Files: field.pt (state dict of plain tensors), field.json (hyper-parameters, march step, the
training photos' stems in embedding order), occupancy.npz, cameras.json (refined cameras of all
usable photos, transforms.json format).
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stages.errors import NeroicError
from stages.common.cameras import Frame, read_transforms, write_transforms
from stages.field.nerfw_field import NerfWField
from stages.field.occupancy import OccupancyGrid
from stages.field.rays import Cameras
from stages.field.training import render_view

FORMAT_VERSION = 1


@dataclass
class TrainedField:
    """field (eval mode), occupancy grid, cameras [P] of `frames` (refined), march step (world units).

    train_stems[i] is the photo whose appearance/transient code is embedding i; photos not in it
    (held out) render with the neutral code.
    """

    field: NerfWField
    grid: OccupancyGrid
    cameras: Cameras
    frames: list[Frame]
    train_stems: list[str]
    step_size: float

    def appearance_of(self, stem: str | None = None) -> Tensor:
        """The appearance code [A] of a training photo, or the neutral (mean) code."""
        if stem is not None and stem in self.train_stems:
            return self.field.appearance.weight[self.train_stems.index(stem)].detach()
        return self.field.appearance.neutral().detach()

    def render(self, view: int, appearance: Tensor | None = None, cameras: Cameras | None = None) -> dict[str, Tensor]:
        """Static render of camera `view` of `cameras` (default: the photos' own cameras, each with
        its own appearance): rgb [H, W, 3] sRGB on black, acc [H, W], depth [H, W] (acc-weighted distance along the ray)."""
        if appearance is None:
            appearance = self.appearance_of(self.frames[view].stem if cameras is None else None)
        cams = self.cameras if cameras is None else cameras.to(self.cameras.c2w.device)
        return render_view(self.field, self.grid, cams, view, appearance, self.step_size)


def save_trained_field(folder: Path, field: NerfWField, grid: OccupancyGrid, cameras: Cameras,
                       frames: list[Frame], train_stems: list[str], step_size: float) -> None:
    """Write field.pt, field.json, occupancy.npz and cameras.json into `folder`."""
    torch.save({k: v.detach().cpu() for k, v in field.state_dict().items()}, folder / "field.pt")
    meta = {"format": FORMAT_VERSION, "field": field.config, "step_size": step_size, "train_stems": train_stems,
            "density_units": "per world unit", "colour_space": "sRGB"}
    (folder / "field.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    grid.save_npz(folder / "occupancy.npz")
    write_transforms(folder / "cameras.json", cameras.to("cpu").to_frames(frames), "OPENCV")


def load_trained_field(folder: Path, device: str | torch.device = "cpu") -> TrainedField:
    """Rebuild the trained field from a geometry folder (weights loaded with weights_only=True)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "field.json").read_text(encoding="utf-8"))
        state = torch.load(folder / "field.pt", map_location=device, weights_only=True)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:  # never unpickle to see
        raise NeroicError(f"cannot load the trained field from {folder}: {exc}",
                          hint="rerun the geometry stage (neroic stage geometry --force)") from None
    if meta.get("format") != FORMAT_VERSION:
        raise NeroicError(f"{folder / 'field.json'} has format {meta.get('format')}, expected {FORMAT_VERSION}",
                          hint="rerun the geometry stage")
    cfg = dict(meta["field"])
    field = NerfWField(cfg.pop("aabb_min"), cfg.pop("aabb_max"), cfg.pop("n_images"), **cfg).to(device)
    field.load_state_dict(state)
    field.eval()
    grid = OccupancyGrid.load_npz(folder / "occupancy.npz", device)
    frames = read_transforms(folder / "cameras.json", roots=[folder.parent])
    return TrainedField(field, grid, Cameras.from_frames(frames).to(device), frames, list(meta["train_stems"]),
                        float(meta["step_size"]))


def frame_masks(geometry_dir: Path, frames: list[Frame]) -> list[np.ndarray]:
    """Each frame's mask [H, W] bool at the frame's size, found through its mask_path (the
    geometry stage's cameras.json keeps one per photo)."""
    from stages.common.inputs import MaskSet

    masks, sets = [], {}
    for frame in frames:
        if not frame.mask_path:
            raise NeroicError(f"camera {frame.stem} in {geometry_dir / 'cameras.json'} has no mask_path",
                              hint="rerun the geometry stage")
        path = (geometry_dir / frame.mask_path).resolve()
        mask_set = sets.setdefault(path.parent, MaskSet.load(path.parent))
        masks.append(mask_set.binary(frame.stem, (frame.w, frame.h)))
    return masks
