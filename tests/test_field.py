"""The neural-field parts (stages/field) and the geometry stage, on small exact problems."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stages.common.cameras import Frame
from stages.field.encodings import HashGridEncoding, sh_encode
from stages.field.mlp import MLP
from stages.field.nerfw_field import NerfWField
from stages.field.occupancy import OccupancyGrid, carve_visual_hull, hull_signed_distance
from stages.field.rays import CameraRefinement, Cameras, axis_angle_to_matrix
from stages.field.rendering import composite, exclusive_transmittance, nerfw_weights, render_image, render_rays
from stages.field.checkpoints import config_key, load_checkpoint
from stages.field.training import TrainConfig, TrainingPixels, train_field
from pipeline.config import defaults
from stages.common.settings import from_section


def geometry_train_config(**changes) -> TrainConfig:
    """The stage's own training settings (config defaults, no time budget) with `changes`."""
    return from_section(TrainConfig, {**defaults()["geometry"], "max_seconds": 0.0}, **changes)


def _look_at(eye: np.ndarray) -> np.ndarray:
    """OpenGL c2w looking at the origin, +Y up."""
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, eye
    return c2w


def _ring_frames(n: int, size: int, dist: float = 3.0, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        az, el = 2 * math.pi * i / n, (-0.3, 0.15, 0.6)[i % 3] + rng.uniform(-0.05, 0.05)
        eye = dist * np.array([math.cos(az) * math.cos(el), math.sin(el), math.sin(az) * math.cos(el)])
        frames.append(Frame(stem=f"v{i:02d}", c2w=_look_at(eye), fl_x=size * 1.1, fl_y=size * 1.1,
                            cx=size / 2, cy=size / 2, w=size, h=size))
    return frames


def _sphere_masks(cams: Cameras, radius: float) -> list[np.ndarray]:
    """Exact silhouettes of a sphere at the origin."""
    masks = []
    for v in range(len(cams)):
        w, h = cams.size[v].tolist()
        py, px = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        o, d = cams.rays(torch.full((h * w,), v), px.reshape(-1), py.reshape(-1))
        b = (o * d).sum(-1)
        disc = b * b - ((o * o).sum(-1) - radius ** 2)
        masks.append((disc > 0).view(h, w).numpy())
    return masks


# --- encodings -------------------------------------------------------------------------------

def test_hash_grid_gradients_match_finite_differences():
    torch.manual_seed(0)
    # res 2..16 with a 2^9 slab: the coarse levels are dense, the finest is hashed
    enc = HashGridEncoding(n_levels=3, n_features=2, log2_table=9, base_resolution=2, max_resolution=16).double()
    assert 0 < enc.n_dense_levels < enc.n_levels
    enc.table.data.normal_()
    x = torch.rand(9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda table, pos: enc(pos), (enc.table, x), fast_mode=True)


def test_hash_grid_interpolates_the_dense_level_exactly():
    """A dense level with table values f(corner) = a.corner reproduces a.x exactly (trilinear)."""
    enc = HashGridEncoding(n_levels=1, n_features=1, log2_table=15, base_resolution=8, max_resolution=8)
    a = torch.tensor([0.3, -1.2, 2.0])
    bits = math.ceil(math.log2(9))
    with torch.no_grad():
        for i in range(9):
            for j in range(9):
                for k in range(9):
                    enc.table[i | (j << bits) | (k << 2 * bits), 0] = float(a @ torch.tensor([i, j, k], dtype=torch.float32) / 8.0)
    x = torch.rand(100, 3)
    assert torch.allclose(enc(x)[:, 0], x @ a, atol=1e-5)


def test_hash_grid_fits_a_smooth_function():
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=8, log2_table=14, base_resolution=8, max_resolution=128)
    mlp = MLP(enc.out_dim, 2, 64, 1)
    opt = torch.optim.Adam(list(enc.parameters()) + list(mlp.parameters()), 1e-2, betas=(0.9, 0.99), eps=1e-15)

    def target(x):
        return torch.stack([torch.sin(6 * x[:, 0]) * torch.cos(5 * x[:, 1]), torch.sin(9 * x[:, 2] + x[:, 0])], -1)

    for _ in range(200):
        x = torch.rand(4096, 3)
        loss = (mlp(enc(x)) - target(x)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.rand(4096, 3)
    with torch.no_grad():
        mse = (mlp(enc(x)) - target(x)).square().mean().item()
    assert mse < 2e-3  # the target's variance is ~0.45


def test_sh_encoding_is_orthonormal():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(200_000, 3, generator=g)
    y = sh_encode(d / d.norm(dim=-1, keepdim=True), 4)
    gram = 4 * math.pi * (y.T @ y) / d.shape[0]
    assert torch.allclose(gram, torch.eye(16), atol=0.03)


# --- rays ----------------------------------------------------------------------------------------

def test_rays_reproject_to_their_pixel_centres_with_distortion():
    frame = Frame(stem="a", c2w=_look_at(np.array([0.5, 1.0, 3.0])), fl_x=300.0, fl_y=310.0, cx=161.0, cy=118.0,
                  w=320, h=240, k1=-0.12, k2=0.03, p1=0.001, p2=-0.002)
    cams = Cameras.from_frames([frame])
    px, py = torch.randint(0, 320, (500,)), torch.randint(0, 240, (500,))
    o, d = cams.rays(torch.zeros(500, dtype=torch.long), px, py)
    pix, depth = cams.project(o + 2.0 * d, 0)
    assert (depth > 0).all()
    assert torch.allclose(pix, torch.stack((px, py), -1).float() + 0.5, atol=1e-3)


def test_camera_refinement_at_zero_is_identity_and_rotation_is_orthonormal():
    cams = Cameras.from_frames(_ring_frames(3, 32))
    ref = CameraRefinement(3)
    idx, px, py = torch.tensor([0, 1, 2]), torch.tensor([3, 10, 20]), torch.tensor([5, 7, 30])
    for a, b in zip(cams.rays(idx, px, py), cams.rays(idx, px, py, ref)):
        assert torch.allclose(a, b)
    r = axis_angle_to_matrix(torch.randn(5, 3))
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(5), atol=1e-5)


# --- packed volume rendering ----------------------------------------------------------------------

def _loop_render(sigma, sigma_t, deltas, values, ray_idx, n_rays):
    """Straightforward per-ray NeRF-W compositing, one sample at a time."""
    rgb = torch.zeros(n_rays, values.shape[1], dtype=torch.float64)
    acc = torch.zeros(n_rays, dtype=torch.float64)
    acc_t = torch.zeros(n_rays, dtype=torch.float64)
    for r in range(n_rays):
        trans = 1.0
        for i in (ray_idx == r).nonzero()[:, 0].tolist():
            a_s = 1 - math.exp(-sigma[i].item() * deltas[i].item())
            a_t = 1 - math.exp(-sigma_t[i].item() * deltas[i].item())
            rgb[r] += trans * a_s * values[i].double()
            acc[r] += trans * a_s
            acc_t[r] += trans * a_t
            trans *= math.exp(-(sigma[i].item() + sigma_t[i].item()) * deltas[i].item())
    return rgb, acc, acc_t


def test_packed_rendering_equals_a_per_ray_loop():
    g = torch.Generator().manual_seed(1)
    n_rays = 7
    counts = torch.tensor([5, 0, 1, 40, 0, 12, 3])  # empty rays included, even the last-but-two
    ray_idx = torch.repeat_interleave(torch.arange(n_rays), counts)
    s = ray_idx.shape[0]
    sigma = torch.rand(s, generator=g) * 30
    sigma_t = torch.rand(s, generator=g) * 5
    deltas = torch.rand(s, generator=g) * 0.05 + 0.01
    values = torch.rand(s, 3, generator=g)
    w_s, w_t = nerfw_weights(sigma, deltas, ray_idx, n_rays, sigma_t)
    rgb = composite(w_s, values, ray_idx, n_rays)
    acc = composite(w_s, torch.ones_like(w_s), ray_idx, n_rays)
    acc_t = composite(w_t, torch.ones_like(w_t), ray_idx, n_rays)
    ref_rgb, ref_acc, ref_acc_t = _loop_render(sigma, sigma_t, deltas, values, ray_idx, n_rays)
    assert torch.allclose(rgb.double(), ref_rgb, atol=1e-5)
    assert torch.allclose(acc.double(), ref_acc, atol=1e-5)
    assert torch.allclose(acc_t.double(), ref_acc_t, atol=1e-5)
    assert acc[1] == 0 and acc[4] == 0


def test_exclusive_transmittance_keeps_precision_after_long_opaque_rays():
    """A ray after a batch with huge optical depth must still start at T = 1."""
    ray_idx = torch.tensor([0] * 1000 + [1] * 3)
    depth = torch.cat((torch.full((1000,), 500.0), torch.tensor([1e-4, 1e-4, 1e-4])))
    trans = exclusive_transmittance(depth, ray_idx, 2)
    assert trans[1000] == 1.0
    assert torch.allclose(trans[1001:], torch.exp(-torch.tensor([1e-4, 2e-4])), rtol=1e-6)


def test_windowed_image_rendering_equals_one_pass():
    """render_image marches in windows with early termination; with no early stop it must equal
    one pass of render_rays over the same samples."""
    torch.manual_seed(0)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    grid = OccupancyGrid(lo, hi, torch.ones(16, 16, 16, dtype=torch.bool))
    field = NerfWField(lo, hi, 2, n_levels=4, log2_table=12, max_resolution=64, transient_dim=0)
    with torch.no_grad():
        field.encoding.table.normal_(0, 1.0)
    origins = torch.tensor([[0.0, 0.0, 3.0]]).expand(64, 3)
    dirs = torch.randn(64, 3) * 0.15 + torch.tensor([0.0, 0.0, -1.0])
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    code = field.appearance.neutral().detach()
    step = 2.0 / 64
    windowed = render_image(field, grid, origins, dirs, code, step, segment_steps=5, min_transmittance=0.0)
    with torch.no_grad():
        whole = render_rays(field, grid, origins, dirs, code.expand(64, -1), step, min_weight=0.0)
    windowed_close = render_image(field, grid, origins, dirs, code, step, segment_steps=5, min_transmittance=0.0)
    for key in ("rgb", "acc", "depth"):
        assert torch.allclose(windowed[key], whole[key], atol=2e-3), key
        assert torch.equal(windowed[key], windowed_close[key])


# --- occupancy --------------------------------------------------------------------------------

def test_visual_hull_of_a_sphere_contains_its_surface_and_little_else():
    radius = 0.6
    cams = Cameras.from_frames(_ring_frames(16, 48))
    masks = _sphere_masks(cams, radius)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    hull = carve_visual_hull(cams, masks, lo, hi, resolution=32)
    grid = OccupancyGrid(lo, hi, hull)
    g = torch.Generator().manual_seed(0)
    surface = torch.randn(5000, 3, generator=g)
    surface = radius * surface / surface.norm(dim=-1, keepdim=True)
    assert grid.lookup(surface).all()
    far = torch.rand(20000, 3, generator=g) * 2 - 1
    far = far[far.norm(dim=-1) > radius * 1.35]
    assert grid.lookup(far).float().mean() < 0.02
    sphere_fraction = 4 / 3 * math.pi * radius ** 3 / 8.0
    assert float(hull.float().mean()) < 2.0 * sphere_fraction


def test_hull_signed_distance_of_a_voxel_sphere_is_its_distance():
    res, radius = 32, 0.6
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    centres = -1 + (torch.arange(res) + 0.5) * 2 / res
    p = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), -1)
    hull = p.norm(dim=-1) < radius
    signed = hull_signed_distance(hull, lo, hi)
    near = (p.norm(dim=-1) - radius).abs() < 0.3
    assert (signed[hull] < 0).all() and (signed[~hull] > 0).all()
    assert ((signed - (p.norm(dim=-1) - radius))[near].abs() < 2 / res).all()  # within one cell


def test_sdf_field_starts_as_its_prior_and_its_gradient_is_the_normal():
    """With the residual at zero the SDF is its prior (a sphere here); the finite-difference
    gradient is the outward normal with unit length; the VolSDF density is 1/width deep inside and
    vanishes outside."""
    res, radius = 32, 0.5
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    centres = -1 + (torch.arange(res) + 0.5) * 2 / res
    p = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), -1)
    field = NerfWField(lo, hi, 2, n_levels=4, log2_table=12, max_resolution=64, surface="sdf", prior_resolution=res,
                       surface_width=0.02, min_surface_width=0.01)
    field.set_sdf_prior(p.norm(dim=-1) - radius)
    points = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    points = points * (radius + 0.2 * (torch.rand(200, 1) - 0.5))
    with torch.no_grad():
        d, _ = field.sdf(points)
        gradient = field.sdf_gradient(points, 0.02)
        sigma_in, _ = field.density(torch.zeros(1, 3))
        sigma_out, _ = field.density(torch.tensor([[0.9, 0.0, 0.0]]))
    assert torch.allclose(d, points.norm(dim=-1) - radius, atol=0.02)
    assert (gradient.norm(dim=-1) - 1).abs().max() < 0.05
    cos = (torch.nn.functional.normalize(gradient, dim=-1) * torch.nn.functional.normalize(points, dim=-1)).sum(-1)
    assert cos.min() > 0.995
    assert torch.allclose(sigma_in, 1 / field.surface_width, rtol=1e-4) and sigma_out.item() < 1e-6



def test_the_surface_width_bound_narrows_to_the_minimum_and_holds_the_learned_width_under_it():
    """The bound starts at the initial width and reaches the minimum at `sharpen_surface` of
    training; bounding a field keeps a narrower learned width as it is and never goes below the floor."""
    from stages.field.training import surface_width_bound

    cfg = from_section(TrainConfig, {**defaults()["geometry"], "sharpen_surface": 0.5}, step_size=0.01)
    assert surface_width_bound(0.0, cfg, 0.02, 0.005) == pytest.approx(0.02)
    assert surface_width_bound(0.25, cfg, 0.02, 0.005) == pytest.approx(0.01)  # geometric: halfway in log
    assert surface_width_bound(0.5, cfg, 0.02, 0.005) == pytest.approx(0.005)
    assert surface_width_bound(0.9, cfg, 0.02, 0.005) == pytest.approx(0.005)
    unbounded = from_section(TrainConfig, {**defaults()["geometry"], "sharpen_surface": 0.0}, step_size=0.01)
    assert surface_width_bound(0.9, unbounded, 0.02, 0.005) == pytest.approx(0.02)
    field = NerfWField(torch.full((3,), -1.0), torch.full((3,), 1.0), 2, n_levels=4, log2_table=12, max_resolution=64,
                       surface="sdf", surface_width=0.02, min_surface_width=0.005)
    field.bound_surface_width(0.01)
    assert float(field.surface_width) == pytest.approx(0.01, rel=1e-5)
    field.bound_surface_width(0.015)  # a looser bound leaves it where it is
    assert float(field.surface_width) == pytest.approx(0.01, rel=1e-5)
    field.bound_surface_width(0.001)
    assert 0.005 <= float(field.surface_width) < 0.00501

def test_occupancy_update_empties_cells_the_field_finds_empty():
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    grid = OccupancyGrid(lo, hi, torch.ones(16, 16, 16, dtype=torch.bool))

    def density(p):  # a solid ball of radius 0.5
        return torch.where(p.norm(dim=-1) < 0.5, 100.0, 0.0)

    grid.update(density, step_size=0.02)
    inside = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.1]])
    outside = torch.tensor([[0.9, 0.9, 0.9], [-0.8, 0.0, 0.0]])
    assert grid.lookup(inside).all() and not grid.lookup(outside).any()


# --- training and the geometry stage -----------------------------------------------------------

def _tiny_scene(n=12, size=40):
    """A textured sphere seen from a ring: photos [H, W, 3] uint8, masks, cameras."""
    frames = _ring_frames(n, size)
    cams = Cameras.from_frames(frames)
    masks = _sphere_masks(cams, 0.6)
    images = []
    for v, m in enumerate(masks):
        w, h = size, size
        py, px = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        o, d = cams.rays(torch.full((h * w,), v), px.reshape(-1), py.reshape(-1))
        b = (o * d).sum(-1)
        t = -b - torch.sqrt((b * b - ((o * o).sum(-1) - 0.36)).clamp(min=0))
        p = (o + t[:, None] * d) / 0.6
        col = 0.5 + 0.35 * torch.stack((torch.sin(3 * p[:, 0]), torch.cos(2 * p[:, 1]), torch.sin(2 * p[:, 2] + 1)), -1)
        img = (col.view(h, w, 3) * torch.from_numpy(m)[..., None]).numpy()
        images.append((img * 255 + 0.5).astype(np.uint8))
    return images, masks, cams


def test_checkpoint_resume_and_corrupt_checkpoint(tmp_path):
    torch.manual_seed(0)
    images, masks, cams = _tiny_scene(4, 24)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    pixels = TrainingPixels.from_photos(images, masks, band_px=2)

    def fresh():
        grid = OccupancyGrid(lo, hi, carve_visual_hull(cams, masks, lo, hi, 16))
        field = NerfWField(lo, hi, 4, n_levels=4, log2_table=12, max_resolution=64)
        return field, grid

    ckpt = tmp_path / "train.pt"
    cfg = geometry_train_config(steps=6, target_samples=2048, initial_rays=256, step_size=2 / 64, checkpoint_every=3,
                                occupancy_warmup=2, occupancy_update_every=2)
    field, grid = fresh()
    first = train_field(field, grid, cams, pixels, cfg, checkpoint_path=ckpt)
    assert first.steps_done == 6 and first.resumed_from == 0
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 6
    # a longer run with otherwise equal settings resumes at step 6 from the same weights
    field2, grid2 = fresh()
    longer = TrainConfig(**{**cfg.__dict__, "steps": 9})
    assert load_checkpoint(ckpt, "other settings") is None  # settings differ: ignored, file kept
    assert ckpt.exists()
    second = train_field(field2, grid2, cams, pixels, longer, checkpoint_path=ckpt)
    assert second.resumed_from == 0  # the key includes `steps`: a different schedule restarts
    ckpt.write_bytes(b"not a checkpoint")
    field3, grid3 = fresh()
    third = train_field(field3, grid3, cams, pixels, cfg, checkpoint_path=ckpt)
    assert third.resumed_from == 0 and third.steps_done == 6
    assert (tmp_path / "train.corrupt").exists()
    # interrupted run: same settings resume where the checkpoint left off
    cfg_int = TrainConfig(**{**cfg.__dict__, "checkpoint_every": 2})
    field4, grid4 = fresh()
    calls = {"n": 0}

    def interrupt_at_4(total):
        class Bar:
            def update(self, n):
                calls["n"] += n
                if calls["n"] == 4:
                    raise KeyboardInterrupt

            def set_postfix(self, **kw):
                pass

            def close(self):
                pass
        return Bar()

    ckpt.unlink()
    with pytest.raises(KeyboardInterrupt):
        train_field(field4, grid4, cams, pixels, cfg_int, checkpoint_path=ckpt, progress=interrupt_at_4)
    field5, grid5 = fresh()
    resumed = train_field(field5, grid5, cams, pixels, cfg_int, checkpoint_path=ckpt)
    assert resumed.resumed_from == 4 and resumed.steps_done == 6


def test_a_checkpoint_from_another_device_resumes(tmp_path, caplog):
    """A run checkpointed on one device resumes on another: weights and optimiser state load onto
    the new device, the random stream restarts from (seed, step). Simulated on the CPU with the
    generator state a CUDA run writes (16 bytes: seed and offset), which a CPU generator refuses."""
    import logging

    images, masks, cams = _tiny_scene(4, 24)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    pixels = TrainingPixels.from_photos(images, masks, band_px=2)
    cfg = geometry_train_config(steps=3, target_samples=2048, initial_rays=256, step_size=2 / 64, checkpoint_every=3)
    ckpt = tmp_path / "train.pt"
    train_field(NerfWField(lo, hi, 4, n_levels=4, log2_table=12, max_resolution=64),
                OccupancyGrid(lo, hi, carve_visual_hull(cams, masks, lo, hi, 16)), cams, pixels, cfg, checkpoint_path=ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert state["generator"]["device"] == "cpu"
    state["generator"] = {"device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}
    torch.save(state, ckpt)
    with pytest.raises(RuntimeError):  # what resuming did before: the CPU generator refuses it
        torch.Generator().set_state(state["generator"]["state"])
    # continue as a 5-step run (the key includes `steps`)
    longer = TrainConfig(**{**cfg.__dict__, "steps": 5})
    field = NerfWField(lo, hi, 4, n_levels=4, log2_table=12, max_resolution=64)
    grid = OccupancyGrid(lo, hi, carve_visual_hull(cams, masks, lo, hi, 16))
    state["config_key"] = config_key(longer, {"field": field.config, "grid": grid.resolution})
    torch.save(state, ckpt)
    with caplog.at_level(logging.INFO, logger="neroic"):
        resumed = train_field(field, grid, cams, pixels, longer, checkpoint_path=ckpt)
    assert resumed.resumed_from == 3 and resumed.steps_done == 5
    assert "made on cuda and training resumes on cpu" in caplog.text


def _upstream_from_spot(work: Path, capture: Path) -> list[str]:
    """ingest/, masks/ and poses/ folders as the upstream stages publish them, from a Spot capture
    (alpha = mask, known cameras); returns the held-out stems."""
    from stages.common.cameras import write_transforms

    for d in ("ingest/images", "masks", "poses"):
        (work / d).mkdir(parents=True)
    photos, mask_rows, frames, held = [], [], [], []
    for name in ("transforms.json", "transforms_test.json"):
        top = json.loads((capture / name).read_text())
        for raw in top["frames"]:
            src = capture / raw["file_path"]
            src = src if src.suffix else src.with_suffix(".png")
            rgba = np.asarray(Image.open(src).convert("RGBA"))
            stem = src.stem
            Image.fromarray(rgba[..., :3]).save(work / "ingest" / "images" / f"{stem}.png")
            Image.fromarray(rgba[..., 3]).save(work / "masks" / f"{stem}.png")
            photos.append({"name": f"{stem}.png", "stem": stem, "image": f"images/{stem}.png",
                           "width": rgba.shape[1], "height": rgba.shape[0]})
            mask_rows.append({"stem": stem, "mask": f"{stem}.png", "status": "ok"})
            frames.append(Frame(stem=stem, c2w=np.array(raw["transform_matrix"]), fl_x=top["fl_x"], fl_y=top["fl_y"],
                                cx=top["cx"], cy=top["cy"], w=top["w"], h=top["h"],
                                file_path=f"../ingest/images/{stem}.png", mask_path=f"../masks/{stem}.png"))
            if name == "transforms_test.json":
                held.append(stem)
    (work / "ingest" / "photos.json").write_text(json.dumps({"photos": photos}))
    (work / "masks" / "masks.json").write_text(json.dumps({"threshold": 128, "masks": mask_rows}))
    write_transforms(work / "poses" / "transforms.json", frames, "OPENCV")
    (work / "poses" / "normalization.json").write_text(json.dumps({"bounds": {"center": [0, 0, 0], "radius": 1.05}}))
    return held


def test_geometry_stage_learns_a_small_spot_capture_and_writes_its_outputs(tmp_path):
    import stages.geometry as geometry
    from pipeline.config import defaults
    from stages.context import Sources, StageContext
    from stages.field import load_trained_field
    from tests.synthetic.spot_capture import make_spot_capture

    torch.manual_seed(0)
    capture = make_spot_capture(tmp_path / "spot", size=64, n_train=24, n_heldout=3, supersample=1, nthreads=1)
    work = tmp_path / "work"
    held = _upstream_from_spot(work, capture)
    out = work / "geometry"
    out.mkdir()
    config = {**defaults()["geometry"], "steps": 250, "max_seconds": 0, "target_samples": 24576, "lr": 0.02, "occupancy_resolution": 64, "hash_levels": 8,
              "hash_log2_table": 14, "density_grid_resolution": 24, "steps_across": 128, "transient_dim": 0,
              "checkpoint_every": 1000, "holdout_stems": held, "heldout_image_size": 48}
    ctx = StageContext(name="geometry", workdir=work, out=out, checkpoints=work / "ckpt", config=config, settings={},
                       sources=Sources(), device="cpu", inputs={k: work / k for k in ("ingest", "masks", "poses")},
                       quiet=True)
    summary = geometry.run(ctx)
    assert summary["heldout_photos"] == 3 and summary["train_photos"] == 24
    # the untrained field renders ~11 dB inside the masks here
    assert summary["heldout_psnr_masked"] > 20.0, summary
    for name in ("field.pt", "field.json", "cameras.json", "occupancy.npz", "density_grid.npz", "curves.png",
                 "metrics.json", *(f"heldout/{s}.png" for s in held)):
        assert (out / name).exists(), name
    # held-out photos are scored at heldout_image_size: photo | render | opacity
    assert np.asarray(Image.open(out / "heldout" / f"{held[0]}.png")).shape == (48, 3 * 48, 3)
    torch.load(out / "field.pt", weights_only=True)
    with np.load(out / "density_grid.npz", allow_pickle=False) as d:
        density = d["density"]
        assert density.shape == (24, 24, 24) and density.max() > 10 * max(float(np.median(density)), 1e-3)
    trained = load_trained_field(out, "cpu")
    assert len(trained.train_stems) == 24 and not set(held) & set(trained.train_stems)
    view = [f.stem for f in trained.frames].index(held[0])
    render = trained.render(view)
    photo_mask = torch.from_numpy(np.asarray(Image.open(work / "masks" / f"{held[0]}.png")) >= 128)
    iou = ((render["acc"] > 0.5) & photo_mask).sum() / ((render["acc"] > 0.5) | photo_mask).sum()
    assert iou > 0.9


def test_camera_refinement_receives_gradients_through_the_field():
    torch.manual_seed(0)
    images, masks, cams = _tiny_scene(4, 24)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    grid = OccupancyGrid(lo, hi, carve_visual_hull(cams, masks, lo, hi, 16))
    field = NerfWField(lo, hi, 4, n_levels=4, log2_table=12, max_resolution=64)
    refinement = CameraRefinement(4, translation_scale=1.0)
    cfg = geometry_train_config(steps=3, target_samples=4096, initial_rays=256, step_size=2 / 64, refine_cameras=True,
                                camera_lr=1e-2)
    train_field(field, grid, cams, TrainingPixels.from_photos(images, masks, 2), cfg, refinement=refinement)
    for p in (refinement.rotation, refinement.translation, refinement.log_focal):
        assert p.abs().max() > 1e-4  # moved by Adam: the gradient reached it
    refined = refinement.apply_to(cams)
    assert not torch.allclose(refined.c2w, cams.c2w)


def test_masks_are_checked_against_the_other_photos_hull():
    """A sky patch stuck to one mask is cut, a mask of something else is dropped, a user's mask is
    kept as it is, and the good masks agree."""
    from stages.field.mask_agreement import agree_masks, hull_silhouette, hull_surface_cells

    cams = Cameras.from_frames(_ring_frames(12, 48))
    masks = _sphere_masks(cams, 0.5)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    bad = [m.copy() for m in masks]
    bad[2][2:8, 2:8] = True  # a patch of background in a corner, touching nothing
    bad[3][:] = False
    bad[3][30:46, 0:16] = True  # another object entirely
    bad[4][2:14, 2:14] = True  # the same patch in a mask the user gave
    bad[5][masks[5].nonzero()[0].max():, :] = True  # a turntable below: more than half the mask
    hull = carve_visual_hull(cams, bad, lo, hi, resolution=32, min_misses=1)
    surface = hull_surface_cells(hull)
    silhouettes = [hull_silhouette(surface, lo, hi, cams, i) for i in range(len(masks))]
    assert surface.sum() < hull.sum() and all((s == hull_silhouette(hull, lo, hi, cams, i)).all()
                                              for i, s in enumerate(silhouettes))
    editable = [i != 4 for i in range(len(masks))]
    repaired, verdicts = agree_masks(bad, silhouettes, editable)
    status = [v.status for v in verdicts]
    assert status[2] == "repaired" and status[3] == "dropped" and status[4] == "agrees", status
    assert status[5] == "repaired" and verdicts[5].removed > 0.5, (status, verdicts[5])
    assert all(s == "agrees" for i, s in enumerate(status) if i not in (2, 3, 4, 5)), status
    assert not repaired[2][2:8, 2:8].any() and (repaired[2] & masks[2]).sum() == masks[2].sum()
    assert np.array_equal(repaired[4], bad[4])


def test_equal_inputs_give_an_equal_geometry_output(tmp_path):
    """Two runs of the geometry stage on the same inputs publish the same files (bar the timing
    records), so a batch on another engine or machine agrees on every downstream fingerprint."""
    import stages.geometry as geometry
    from pipeline import cache
    from pipeline.config import defaults
    from stages import get_stage
    from stages.context import Sources, StageContext
    from tests.synthetic.spot_capture import make_spot_capture

    capture = make_spot_capture(tmp_path / "spot", size=48, n_train=10, n_heldout=2, supersample=1, nthreads=1)
    work = tmp_path / "work"
    held = _upstream_from_spot(work, capture)
    config = {**defaults()["geometry"], "steps": 12, "max_seconds": 0, "target_samples": 8192,
              "occupancy_resolution": 32, "hash_levels": 6, "hash_log2_table": 12, "density_grid_resolution": 16,
              "holdout_stems": held, "heldout_image_size": 32, "checkpoint_every": 1000}
    hashes = []
    for run in ("a", "b"):
        out = work / f"geometry_{run}"
        out.mkdir()
        torch.manual_seed(len(run) * 1234 + ord(run))  # whatever the global random state was before
        ctx = StageContext(name="geometry", workdir=work, out=out, checkpoints=work / f"ckpt_{run}", config=config,
                           settings={}, sources=Sources(), device="cpu",
                           inputs={k: work / k for k in ("ingest", "masks", "poses")}, quiet=True)
        geometry.run(ctx)
        hashes.append(cache.hash_tree(out, get_stage("geometry").records))
    assert hashes[0] == hashes[1]
