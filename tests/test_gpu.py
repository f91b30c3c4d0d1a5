"""The CUDA path gives what the CPU path gives: field forward and backward, one training step,
one render, one material step. Runs only where PyTorch sees a CUDA device (`make gpu-check`);
skipped elsewhere. NEROIC_PARITY_DEVICE names another device to compare with (e.g. "cpu", which
checks the test itself on a machine without a GPU)."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from pipeline.config import defaults
from stages.common.settings import from_section

OTHER = os.environ.get("NEROIC_PARITY_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(OTHER == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA device (PyTorch sees none)")


def _field():
    from stages.field.nerfw_field import NerfWField

    torch.manual_seed(0)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    field = NerfWField(lo, hi, 4, n_levels=8, log2_table=14, max_resolution=128, prior_resolution=32)
    axis = -1 + (torch.arange(32) + 0.5) * 2 / 32
    p = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    field.set_sdf_prior(p.norm(dim=-1) - 0.5)
    with torch.no_grad():
        field.encoding.table.normal_(0.0, 0.1)
    return field


def test_field_forward_and_backward_match():
    cpu = _field()
    gpu = copy.deepcopy(cpu).to(OTHER)
    points = torch.rand(4096, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for field, device in ((cpu, "cpu"), (gpu, OTHER)):
        sigma, geo = field.density(points.to(device))
        rgb = field.colour(geo, torch.nn.functional.normalize(points.to(device), dim=-1),
                           field.appearance(torch.zeros(len(points), dtype=torch.long, device=device)),
                           normals=field.surface_normals(points.to(device), 0.02))
        (sigma.mean() + rgb.square().mean()).backward()
    assert torch.allclose(cpu.density(points)[0], gpu.density(points.to(OTHER))[0].cpu(), rtol=1e-4, atol=1e-4)
    for (name, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad.cpu(), rtol=1e-3, atol=1e-6), name


def test_one_training_step_render_and_material_step_match():
    from stages.field.occupancy import OccupancyGrid
    from stages.field.rendering import render_image
    from stages.field.training import TrainConfig, TrainingPixels, train_field
    from tests.test_field import _tiny_scene

    images, masks, cams = _tiny_scene(4, 24)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    cfg = from_section(TrainConfig, {**defaults()["geometry"], "max_seconds": 0.0}, steps=1, target_samples=4096,
                       step_size=2 / 64, checkpoint_every=0)
    results = {}
    for device in ("cpu", OTHER):
        field = _field().to(device)
        grid = OccupancyGrid(lo, hi, torch.ones(16, 16, 16, dtype=torch.bool)).to(device)
        pixels = TrainingPixels.from_photos(images, masks, band_px=2).to(device)
        train_field(field, grid, cams.to(device), pixels, cfg)
        origins = torch.tensor([[0.0, 0.0, 3.0]], device=device).expand(256, 3)
        dirs = torch.nn.functional.normalize(torch.randn(256, 3, generator=torch.Generator().manual_seed(2))
                                             * 0.1 + torch.tensor([0.0, 0.0, -1.0]), dim=-1).to(device)
        with torch.no_grad():
            results[device] = render_image(field, grid, origins, dirs, field.appearance.neutral(), 2 / 64)
    # one step from the same start: the random draws differ between devices, so compare loosely
    for key in ("rgb", "acc"):
        assert torch.allclose(results["cpu"][key], results[OTHER][key].cpu(), atol=0.05), key

    from stages.material.lighting import PhotoLighting
    from stages.material.material_field import MaterialField
    from stages.material.shading import shade

    torch.manual_seed(3)
    material = MaterialField([-1.0] * 3, [1.0] * 3, max_resolution=64)
    lights = PhotoLighting(2, ambient_radiance=1.0)
    points = torch.rand(2048, 3) * 2 - 1
    normals = torch.nn.functional.normalize(points, dim=-1)
    shaded = {}
    for device in ("cpu", OTHER):
        m = copy.deepcopy(material).to(device)
        lit = copy.deepcopy(lights).to(device)
        sample = m(points.to(device), normals.to(device))
        out = shade(sample.albedo, sample.specular, sample.glossiness, sample.normal, -normals.to(device),
                    lit.coeffs[0], None)
        out.rgb.mean().backward()
        shaded[device] = (out.rgb.detach().cpu(), m.encoding.table.grad.cpu())
    assert torch.allclose(shaded["cpu"][0], shaded[OTHER][0], rtol=1e-4, atol=1e-5)
    assert torch.allclose(shaded["cpu"][1], shaded[OTHER][1], rtol=1e-3, atol=1e-7)


def test_learned_matches_in_half_precision_match_the_cpus():
    """LighterGlue runs in half precision on a GPU (learned.load_model): most of its matches on two
    neighbouring skull photos are the CPU's float32 matches."""
    import numpy as np
    from PIL import Image

    from stages.poses import learned

    missing = learned.missing_packages("xfeat")
    if missing:
        pytest.skip(missing)
    images = Path(__file__).resolve().parent.parent / "examples" / "skull" / "images"
    photos = [np.asarray(Image.open(images / name).convert("RGB").resize((512, 341))) for name in ("01.jpg", "02.jpg")]
    found = []
    for device in ("cpu", OTHER):
        model = learned.load_model("xfeat", 1024, device)
        a, b = (learned.extract(model, rgb, np.ones(rgb.shape[:2], bool), 512) for rgb in photos)
        found.append({tuple(m) for m in learned.match(model, a, b)})
    assert len(found[0]) > 100
    assert len(found[0] & found[1]) > 0.8 * len(found[0])
