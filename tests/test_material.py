"""Material stage: shading against hand computations, shadows, the regulariser's gradient, and a
small decomposition of a synthetic capture (random light per photo, specular, cast shadows) on
its true geometry, judged on held-out views under new lights."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import defaults
from stages.common.settings import from_section
from stages.common.sh import ambient_sh, read_lighting
from bench.relighting import evaluate_capture, fit_channel_scale
from bench.ground_truth import density_grid_from_mesh, surface_from_capture
from stages.material.lighting import PhotoLighting, read_response
from stages.material.losses import colour_loss, specular_regulariser
from stages.material.material_field import MaterialField, load_material, save_material
from stages.common.colour import linear_to_srgb, srgb_to_linear
from stages.material.shading import shade
from stages.material.training import MaterialTrainConfig, mean_linear_colour, train_material
from stages.material.visibility import DensityGrid

Y00, Y1 = 0.282095, 0.488603


def _light(ambient: float, z_coeff: float) -> torch.Tensor:
    """Constant radiance `ambient` plus z_coeff on Y10 (radiance z_coeff * Y1 * w_z), all channels."""
    c = torch.from_numpy(ambient_sh([ambient] * 3)).float()
    c[2] = z_coeff
    return c


def test_shading_matches_a_hand_computation():
    L0, b, albedo, k_s, s = 0.4, 0.9, 0.6, 0.3, 8.0
    light = _light(L0, b)
    n = torch.tensor([[0.0, 0.0, 1.0]])
    view = torch.tensor([[0.0, 0.0, -1.0]])  # looking straight down at the surface: reflection is +z
    out = shade(torch.full((1, 3), albedo), torch.tensor([k_s]), torch.tensor([s]), n, view, light)
    # E(+z) = pi L0 + integral over the hemisphere of b Y1 w_z^2 = pi L0 + b Y1 2 pi / 3
    irradiance = math.pi * L0 + b * Y1 * 2.0 * math.pi / 3.0
    # specular: L0 (band 0, no attenuation) + b Y1 exp(-1 / (2 s)) in the reflection direction +z
    glossy = L0 + b * Y1 * math.exp(-1.0 / (2.0 * s))
    expected = albedo / math.pi * irradiance + k_s * glossy
    assert torch.allclose(out.rgb, torch.full((1, 3), expected), atol=1e-5)

    # fully blocked: only the ambient part arrives, and no specular
    blocked = shade(torch.full((1, 3), albedo), torch.tensor([k_s]), torch.tensor([s]), n, view, light,
                    visibility=torch.zeros(1))
    assert torch.allclose(blocked.rgb, torch.full((1, 3), albedo * L0), atol=1e-5)


def test_srgb_round_trip_and_finite_gradient_at_black():
    x = torch.linspace(0.0, 1.0, 101, requires_grad=True)
    assert torch.allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-5)
    linear_to_srgb(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_specular_regulariser_flattens_the_lobe_without_shrinking_it():
    field = MaterialField([-1, -1, -1], [1, 1, 1], n_levels=4, log2_table=10, max_resolution=32)
    p = torch.rand(256, 3) * 2 - 1
    n = torch.nn.functional.normalize(torch.randn(256, 3), dim=-1)
    m = field(p, n)
    assert specular_regulariser(m.specular, m.glossiness) > 0  # a fresh field's lobe varies a little
    specular_regulariser(m.specular, m.glossiness).backward()
    assert next(field.encoding.parameters()).grad.abs().sum() > 0  # it reaches the grid
    varying, gloss = torch.linspace(0.1, 0.5, 256), torch.full((256,), 20.0)
    assert torch.isclose(specular_regulariser(varying + 0.3, gloss), specular_regulariser(varying, gloss))  # size is free
    uniform = torch.full((256,), 0.3)
    assert specular_regulariser(uniform, torch.full((256,), 20.0)) < 1e-6
    assert specular_regulariser(uniform, torch.linspace(2, 40, 256)) > 0


def test_visibility_shadows_only_what_the_occluder_blocks():
    # a solid ball of radius 0.3 at (0, 0.6, 0) over a floor point at the origin facing +y
    res = 48
    axis = -1 + (torch.arange(res) + 0.5) * 2 / res
    p = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    density = 200.0 * ((p - torch.tensor([0.0, 0.6, 0.0])).norm(dim=-1) < 0.3).float()
    grid = DensityGrid(density, torch.full((3,), -1.0), torch.full((3,), 1.0))
    point, normal = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    up = torch.tensor([[0.0, 1.0, 0.0]])
    slanted = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 0.0]]), dim=-1)
    assert grid.visibility(point, normal, up).item() < 0.01
    assert grid.visibility(point, normal, slanted).item() > 0.99


def test_save_and_load_give_the_same_query(tmp_path):
    field = MaterialField([-1, -1, -1], [1, 1, 1], n_levels=4, log2_table=10, max_resolution=32)
    with torch.no_grad():
        field.encoding.table.uniform_(-1, 1)
    save_material(field, tmp_path)
    loaded = load_material(tmp_path)
    p = torch.rand(100, 3) * 2 - 1
    n = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    for a, b in zip(field.query(p, n), loaded.query(p, n)):
        assert torch.allclose(a, b)


def test_colour_loss_pulls_an_outlier_no_harder_than_its_threshold():
    """Squared error for residuals under `huber`, linear beyond: a pixel 0.4 off (a sun's shadow the
    light cannot hold) pulls with 2 * 0.05, not 2 * 0.4; small residuals are fitted as before."""
    photo = torch.tensor([[0.52, 0.5, 0.5], [0.9, 0.5, 0.5]])
    for huber, outlier_pull in ((0.0, 2 * 0.4), (0.05, 2 * 0.05)):
        rendered = torch.full((2, 3), 0.5, requires_grad=True)
        colour_loss(rendered, photo, huber).backward()
        n = photo.numel()
        assert rendered.grad[0, 0] * n == pytest.approx(-2 * 0.02, abs=1e-6)
        assert rendered.grad[1, 0] * n == pytest.approx(-outlier_pull, abs=1e-6)
    assert float(colour_loss(torch.full((2, 3), 0.5), photo)) == pytest.approx(float((0.5 - photo).square().mean()))


def test_channel_scale_fit_undoes_a_scale():
    x = torch.rand(50, 3)
    k = fit_channel_scale(x, x * torch.tensor([2.0, 0.5, 1.5]))
    assert torch.allclose(k, torch.tensor([2.0, 0.5, 1.5]), atol=1e-5)


def test_channel_scale_fit_finds_the_scale_of_a_photo_that_clips_its_highlights():
    # two thirds of the red channel is clipped: least squares in linear light halves its factor
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(20000, 3, generator=generator, dtype=torch.float64)
    photo = (x * torch.tensor([3.0, 1.0, 0.4], dtype=torch.float64)
             + 0.02 * torch.randn(20000, 3, generator=generator, dtype=torch.float64)).clamp(0, 1)
    k = fit_channel_scale(x, photo)
    assert torch.allclose(k, torch.tensor([3.0, 1.0, 0.4], dtype=torch.float64), rtol=0.01)


@pytest.fixture(scope="module")
def small_capture(tmp_path_factory):
    from tests.synthetic.spot_capture import make_spot_capture

    out = tmp_path_factory.mktemp("spot_material")
    return make_spot_capture(out, size=64, n_train=24, n_heldout=4, lighting="random", specular=0.15,
                             shadows=True, seed=3, supersample=1, nthreads=1)


def test_decomposition_on_true_geometry_relights_new_views(small_capture, tmp_path):
    torch.manual_seed(0)
    surface = surface_from_capture(small_capture, "train")
    density = density_grid_from_mesh(small_capture / "gt" / "mesh.ply", resolution=48)
    field = MaterialField(density.aabb_min.tolist(), density.aabb_max.tolist(), max_resolution=64)
    lights = PhotoLighting(surface.n_photos, ambient_radiance=mean_linear_colour(surface) / 0.5)
    cfg = from_section(MaterialTrainConfig, defaults()["material"], steps=240, batch_size=4096, checkpoint_every=120)
    ckpt = tmp_path / "train.pt"
    first = train_material(field, lights, surface, MaterialTrainConfig(**{**cfg.__dict__, "max_seconds": 1e-9}),
                           density=density, checkpoint_path=ckpt)
    assert first.stopped_early and first.steps_done == 1 and ckpt.exists()  # one step, then out of time
    result = train_material(field, lights, surface, cfg, density=density, checkpoint_path=ckpt)
    assert result.resumed_from == 1 and result.steps_done == 240

    stems = [fp for fp, _ in read_lighting(small_capture / "lighting.json")]
    learned = {fp: c for fp, c in zip(stems, lights.coeffs.detach().double().numpy())}
    metrics = evaluate_capture(field, learned, small_capture, density=density, keep_images=False)
    # a wrong decomposition (lights left at the white ambient start) scores far lower on the spheres
    untrained = {fp: lights.coeffs.new_tensor(ambient_sh([1.0] * 3)).double().numpy() for fp in stems}
    baseline = evaluate_capture(field, untrained, small_capture, density=density, keep_images=False)
    assert metrics.sphere_psnr > baseline.sphere_psnr + 5.0, (metrics.summary(), baseline.sphere_psnr)
    assert metrics.relit_psnr > 25.0 and metrics.albedo_psnr > 20.0 and metrics.sphere_psnr > 22.0, metrics.summary()
    assert np.all(np.asarray(metrics.albedo_scale) > 0)

    # the lights written in the shared format read back exactly, the tone curves beside them
    lights.save(tmp_path / "lighting.json", tmp_path / "camera_response.json", stems)
    back = read_lighting(tmp_path / "lighting.json")
    assert [fp for fp, _ in back] == stems
    assert np.allclose(np.stack([c for _, c in back]), lights.coeffs.detach().double().numpy(), atol=1e-6)
    gammas = read_response(tmp_path / "camera_response.json")
    assert list(gammas) == [Path(s).stem for s in stems]
    assert abs(np.mean(np.log(list(gammas.values())))) < 1e-4  # mean log-gamma is zero by construction
    assert all(0.7 < g < 1.4 for g in gammas.values())  # the photos share one tone curve
