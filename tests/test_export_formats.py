"""What users take away, checked on Keenan Crane's Spot with a known material: the full PBR maps
(occlusion, roughness, specular strength) and their round trip through our renderer, detail
levels, the model frame, USDZ under usd-core's own validators, and viewer.html in headless
Chromium (loads, draws the model, a different learned light gives a different picture, and the
picture agrees with our renderer's)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from stages.common.cameras import Frame
from stages.common.colour import linear_to_srgb
from stages.common.sh import random_sh_light
from stages.errors import NeroicError
from stages.export.bake import (bake_surface_maps, encode_textures, glossiness_from_roughness, rasterize_uv,
                                roughness_from_glossiness, specular_colour_texture, specular_from_texture,
                                tangent_frames)
from stages.export.gltf import TexturedMesh, png_bytes, read_glb, write_glb
from stages.export.levels import LEVELS, Level, level_file, level_mesh, parse_levels, transfer_maps
from stages.export.occlusion import vertex_occlusion
from stages.export.placement import apply, placement
from stages.export.preview import pixel_rays, render_mesh_sh
from stages.export.uv_atlas import unwrap
from stages.material.shading import shade
from tests.synthetic.spot_capture import load_spot, look_at
from tests.test_export import spot_material

o3d = pytest.importorskip("open3d")
SPECULAR, GLOSSINESS = 0.2, 20.0


def glossy_spot_material(spot):
    """Spot's true albedo and normals with a uniform specular lobe (k_s 0.2, glossiness 20)."""
    base = spot_material(spot)

    def material_fn(positions, normals):
        out = base(positions, normals)
        n = len(positions)
        return {**out, "specular": np.full(n, SPECULAR), "glossiness": np.full(n, GLOSSINESS),
                "roughness": roughness_from_glossiness(np.full(n, GLOSSINESS))}

    return material_fn


@pytest.fixture(scope="module")
def spot():
    return load_spot()


@pytest.fixture(scope="module")
def glossy(tmp_path_factory, spot):
    """Spot's true mesh baked with occlusion and the glossy material, as a GLB; (path, mesh, atlas, maps, model)."""
    mesh = trimesh.Trimesh(spot.mesh_vertices, spot.mesh_faces, process=False)
    atlas = unwrap(mesh, texture_size=512, padding_px=4)
    frames = tangent_frames(atlas, mesh.vertex_normals[atlas.source_vertex])
    raster = rasterize_uv(atlas, 512)
    maps = bake_surface_maps(atlas, frames, raster, glossy_spot_material(spot),
                             occlusion=vertex_occlusion(mesh, 32)[atlas.source_vertex])
    textures = encode_textures(maps, atlas, frames, raster)
    model = TexturedMesh(atlas.vertices, frames.normals, frames.tangents, atlas.uvs, atlas.faces,
                         png_bytes(textures.base_colour), png_bytes(textures.orm), png_bytes(textures.normal),
                         png_bytes(textures.specular))
    path = tmp_path_factory.mktemp("formats") / "model.glb"
    write_glb(path, model)
    return path, mesh, atlas, maps, model


def _frame(position, size=96, focal=110.0) -> Frame:
    return Frame(stem="v", c2w=look_at(np.asarray(position, dtype=float)), fl_x=focal, fl_y=focal,
                 cx=size / 2, cy=size / 2, w=size, h=size)


def _direct_render(mesh, material_fn, frame: Frame, light, specular: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The material itself (no textures) shaded at the mesh's ray hits, one ray per pixel: (rgb, hit)."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)), o3d.core.Tensor(mesh.faces.astype(np.uint32)))
    origins, dirs = pixel_rays(frame)
    hits = scene.cast_rays(o3d.core.Tensor(np.concatenate([origins, dirs], axis=1).astype(np.float32)))
    hit = np.isfinite(hits["t_hit"].numpy())
    points = origins[hit] + hits["t_hit"].numpy()[hit, None] * dirs[hit]
    m = material_fn(points, np.zeros_like(points))
    k_s = m["specular"] if specular else np.zeros(len(points))
    out = shade(*(torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in
                  (m["albedo"], k_s, m["glossiness"], m["normal"], dirs[hit])),
                torch.as_tensor(light, dtype=torch.float64)).rgb.numpy()
    rgb = np.zeros((frame.h * frame.w, 3))
    rgb[hit] = out
    return rgb.reshape(frame.h, frame.w, 3), hit.reshape(frame.h, frame.w)


def _psnr(a, b, where) -> float:
    return -10.0 * math.log10(float(np.mean((linear_to_srgb(a)[where] - linear_to_srgb(b)[where]) ** 2)))


def test_glossiness_and_specular_strength_round_trip_through_the_maps():
    s = np.array([8.0, 12.0, 30.0, 200.0])
    np.testing.assert_allclose(glossiness_from_roughness(roughness_from_glossiness(s)), s, rtol=1e-9)
    k_s = np.array([0.0, 0.02, 0.15, 0.6])
    np.testing.assert_allclose(specular_from_texture(specular_colour_texture(k_s)), k_s, atol=1e-6)
    # 8-bit textures: the quantised specular strength stays within 2 % (relative) or 0.001.
    quantised = specular_from_texture(np.round(specular_colour_texture(k_s) * 255) / 255)
    assert np.all(np.abs(quantised - k_s) <= np.maximum(0.02 * k_s, 1e-3)), quantised


def test_the_glb_relights_like_the_material_it_was_baked_from(tmp_path, spot, glossy):
    """Our renderer on the exported maps (specular decoded from KHR_materials_specular, glossiness
    from roughness, occlusion folded back in) against the material shaded directly. A uniform
    albedo, so that what is compared is the shading, not how a 512^2 texture resamples Spot's
    patches."""
    path, mesh, atlas, maps, _ = glossy
    model = read_glb(path)
    assert model.specular_colour is not None and model.specular_colour_factor == pytest.approx(25.0)
    assert model.occlusion is model.metallic_roughness  # one ORM texture serves both slots
    assert 0.1 < maps.occlusion[maps.coverage].min() < 0.9 and maps.occlusion[maps.coverage].max() > 0.99

    glossy_fn = glossy_spot_material(spot)

    def plain(points, normals):
        return {**glossy_fn(points, normals), "albedo": np.broadcast_to([0.6, 0.5, 0.4], (len(points), 3)).copy()}

    frames = tangent_frames(atlas, mesh.vertex_normals[atlas.source_vertex])
    raster = rasterize_uv(atlas, 512)
    plain_maps = bake_surface_maps(atlas, frames, raster, plain, occlusion=vertex_occlusion(mesh, 32)[atlas.source_vertex])
    textures = encode_textures(plain_maps, atlas, frames, raster)
    write_glb(tmp_path / "plain.glb", TexturedMesh(atlas.vertices, frames.normals, frames.tangents, atlas.uvs,
                                                    atlas.faces, *(png_bytes(getattr(textures, k)) for k in
                                                                   ("base_colour", "orm", "normal", "specular"))))
    light = random_sh_light(np.random.default_rng(3), directional=(1.2, 1.5))
    frame = _frame([1.7, 0.8, 1.5])
    rendered, alpha = render_mesh_sh(tmp_path / "plain.glb", frame, light, supersample=1)
    truth, hit = _direct_render(mesh, plain, frame, light)
    diffuse_only, _ = _direct_render(mesh, plain, frame, light, specular=False)
    inside = hit & (alpha > 0.5)
    assert inside.mean() > 0.2
    with_lobe, without_lobe = _psnr(rendered, truth, inside), _psnr(rendered, diffuse_only, inside)
    assert with_lobe > 45.0, with_lobe
    assert without_lobe < 30.0, without_lobe  # the lobe is really there


def test_ambient_occlusion_of_a_box_floor_is_its_view_factor_of_the_opening():
    """A 2 x 2 x 2 box open at the top: the floor's centre sees the opening with the view factor of a
    parallel square, 4 * F(1/2, 1/2) = 0.2394 (F for a corner-aligned rectangle, X = Y = a / (2 h))."""
    box = trimesh.creation.box((2.0, 2.0, 2.0)).subdivide().subdivide()
    closed_top = np.isclose(box.triangles_center[:, 1], 1.0)
    cup = trimesh.Trimesh(box.vertices, box.faces[~closed_top], process=False)
    cup.invert()  # normals into the box, as its inside surface
    occlusion = vertex_occlusion(cup, rays=4096)
    floor_centre = int(np.argmin(np.linalg.norm(cup.vertices - [0.0, -1.0, 0.0], axis=1)))
    x = 0.5
    corner = (2.0 * x / math.sqrt(1 + x * x) * math.atan(x / math.sqrt(1 + x * x))) / (2.0 * math.pi)
    assert occlusion[floor_centre] == pytest.approx(4 * corner, abs=0.01)
    sphere = trimesh.creation.icosphere(3)
    assert vertex_occlusion(sphere, rays=64).min() == 1.0  # nothing in the way outside a convex body


def test_detail_levels_are_decimated_and_take_the_reference_maps(spot, glossy):
    assert [level.name for level in parse_levels(["medium", "preview", "medium"])] == ["medium", "preview"]
    with pytest.raises(ValueError, match="unknown detail level"):
        parse_levels(["preview", "huge"])
    assert LEVELS["preview"].max_triangles == 25_000 and LEVELS["full"].max_triangles == 250_000
    assert level_file(LEVELS["preview"], LEVELS["medium"]) == "model.preview.glb"
    assert level_file(LEVELS["medium"], LEVELS["medium"], suffix=".usdz") == "model.usdz"

    _, mesh, atlas, maps, _ = glossy
    small = level_mesh(mesh, Level("small", 1500, 256))
    assert len(small.faces) < 1500 and level_mesh(mesh, LEVELS["preview"]) is mesh
    small_atlas = unwrap(small, 256, 2)
    raster = rasterize_uv(small_atlas, 256)
    carried = transfer_maps(maps, atlas, small_atlas, raster)
    # the carried albedo at random points of the small mesh is the material's there
    rng = np.random.default_rng(4)
    face = rng.integers(0, len(small_atlas.faces), 2000)
    bary = rng.dirichlet(np.ones(3), 2000) * 0.8 + 0.2 / 3
    points = np.einsum("nk,nkc->nc", bary, small_atlas.vertices[small_atlas.faces[face]])
    uv = np.einsum("nk,nkc->nc", bary, small_atlas.uvs[small_atlas.faces[face]])
    from stages.common.images import sample_bilinear

    truth = spot_material(spot)(points, np.zeros_like(points))
    albedo = sample_bilinear(carried.albedo, uv)
    assert np.median(np.abs(linear_to_srgb(albedo) - linear_to_srgb(truth["albedo"]))) < 0.03
    normal = sample_bilinear(carried.normal, uv)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    angle = np.degrees(np.arccos(np.clip(np.sum(normal * truth["normal"], axis=1), -1, 1)))
    assert np.median(angle) < 3.0, np.median(angle)
    np.testing.assert_allclose(sample_bilinear(carried.specular[..., None], uv)[:, 0], SPECULAR, atol=1e-5)


def test_placement_rests_sfm_models_on_the_ground_and_keeps_given_frames():
    rng = np.random.default_rng(5)
    vertices = rng.normal(size=(500, 3)) * [0.5, 0.8, 0.3] + [0.2, -0.1, 0.4]
    ground = apply(placement(vertices, "colmap"), vertices)
    assert ground[:, 1].min() == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose((ground.min(0) + ground.max(0))[[0, 2]], 0.0, atol=1e-12)
    np.testing.assert_allclose(placement(vertices, "transforms.json"), np.eye(4))  # the user's frame kept
    np.testing.assert_allclose(apply(placement(vertices, "transforms.json", "ground"), vertices), ground)
    sized = apply(placement(vertices, "colmap", scale_to=0.3), vertices)
    assert (sized.max(0) - sized.min(0)).max() == pytest.approx(0.3)
    a, b = vertices[0], vertices[1]
    measured = placement(vertices, "colmap", scale_points=[a.tolist(), b.tolist()], scale_length=0.05)
    assert np.linalg.norm(apply(measured, a[None]) - apply(measured, b[None])) == pytest.approx(0.05)
    for bad in ({"mode": "float"}, {"scale_to": 1.0, "scale_points": [a.tolist(), b.tolist()]},
                {"scale_points": [a.tolist()], "scale_length": 1.0}, {"scale_points": [a.tolist(), a.tolist()],
                                                                      "scale_length": 1.0}):
        with pytest.raises(NeroicError):
            placement(vertices, "colmap", **bad)


def test_usdz_passes_usd_cores_validators_and_carries_the_maps(tmp_path, glossy):
    pytest.importorskip("pxr")
    from pxr import Sdf, Usd, UsdGeom, UsdShade, UsdUtils

    from stages.export.usdz import validate_usdz, write_usdz

    _, _, atlas, _, model = glossy
    path = tmp_path / "model.usdz"
    write_usdz(path, model, meters_per_unit=1.0)
    report = validate_usdz(path)
    assert report.validators >= 20 and report.errors == 0 and report.warnings == 0, report.messages
    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/object/mesh"))
    np.testing.assert_allclose(np.asarray(mesh.GetPointsAttr().Get()), atlas.vertices, atol=1e-6)
    st = np.asarray(UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st").Get())
    np.testing.assert_allclose(st[:, 1], 1.0 - atlas.uvs[:, 1], atol=1e-6)  # USD's st runs upwards
    material, _ = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()
    surface = material.ComputeSurfaceSource()[0]
    sources = {name: surface.GetInput(name).GetConnectedSources()[0][0]
               for name in ("diffuseColor", "occlusion", "roughness", "normal", "specularColor")}
    files = {name: UsdShade.Shader(src.source.GetPrim()).GetInput("file").Get().path for name, src in sources.items()}
    assert files["occlusion"] == files["roughness"] and files["specularColor"].endswith("specular.png")
    assert surface.GetInput("useSpecularWorkflow").Get() == 1
    zipped = UsdUtils.ComputeAllDependencies(Sdf.AssetPath(str(path)))[0]
    assert len(zipped) == 1  # one package, nothing outside it

    # the validators can fail: the same stage without metersPerUnit, repackaged, is an error
    loose = tmp_path / "loose"
    loose.mkdir()
    layer = Sdf.Layer.FindOrOpen(str(path)).Export(str(loose / "m.usdc")) and Sdf.Layer.FindOrOpen(str(loose / "m.usdc"))
    layer.pseudoRoot.ClearInfo("metersPerUnit")
    layer.Save()
    broken = tmp_path / "broken.usdz"
    UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(loose / "m.usdc")), str(broken))
    assert validate_usdz(broken).errors > 0


def test_deliverables_are_copied_beside_out_and_the_report_links_the_viewer(tmp_path):
    from pipeline.cli import _copy_deliverables
    from pipeline.report import write_report

    export = tmp_path / "work" / "export"
    export.mkdir(parents=True)
    names = ["model.glb", "model.preview.glb", "model.usdz", "model.preview.usdz", "viewer.html"]
    for name in names:
        (export / name).write_text(name)
    (export / "export.json").write_text(json.dumps({"deliverables": names}))
    written = _copy_deliverables(export, tmp_path / "skull.glb")
    assert [p.name for p in written] == ["skull.glb", "skull.preview.glb", "skull.usdz", "skull.preview.usdz",
                                         "skull.viewer.html"]
    assert (tmp_path / "skull.preview.usdz").read_text() == "model.preview.usdz"
    (export / "manifest.json").write_text("{}")
    assert 'href="export/viewer.html"' in write_report(tmp_path / "work", "t").read_text()


def _viewer_camera(positions: np.ndarray, yaw: float, pitch: float, width: int, height: int) -> Frame:
    """The camera viewer.html (main.js frameCamera) opens with, as a Frame."""
    lo, hi = positions.min(0), positions.max(0)
    centre, radius = (lo + hi) / 2, np.linalg.norm(hi - lo) / 2
    yaw, pitch = math.radians(yaw), math.radians(pitch)
    direction = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    eye = centre + direction * radius / math.sin(math.radians(35) / 2) * 0.9
    focal = (height / 2) / math.tan(math.radians(35) / 2)
    return Frame(stem="viewer", c2w=look_at(eye, centre), fl_x=focal, fl_y=focal, cx=width / 2, cy=height / 2,
                 w=width, h=height)


def test_viewer_page_in_headless_chromium(tmp_path, glossy):
    from PIL import Image

    from stages.export.validate import ToolMissing, chromium_path
    from stages.export.viewer import ViewerLevel, bundle_script, screenshot_viewer, write_viewer

    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium): no browser to open viewer.html in")
    try:
        bundle_script()
    except ToolMissing as e:
        pytest.skip(str(e))
    path, mesh, _, _, model = glossy
    small = level_mesh(mesh, Level("small", 1500, 256))
    small_atlas = unwrap(small, 256, 2)
    small_frames = tangent_frames(small_atlas, small.vertex_normals[small_atlas.source_vertex])
    blank = png_bytes(np.full((256, 256, 3), 200, np.uint8))
    write_glb(tmp_path / "model.small.glb", TexturedMesh(small_atlas.vertices, small_frames.normals,
                                                          small_frames.tangents, small_atlas.uvs, small_atlas.faces,
                                                          blank, blank))
    warm = random_sh_light(np.random.default_rng(11), directional=(1.0, 1.2))
    warm[:, 2] *= 0.5  # a warm light from one side, and a cool one from another
    cool = random_sh_light(np.random.default_rng(12), directional=(1.0, 1.2))
    cool[:, 0] *= 0.5
    page = tmp_path / "viewer.html"
    write_viewer(page, [ViewerLevel("full", path, len(model.faces)), ViewerLevel("small", tmp_path / "model.small.glb",
                                                                                 len(small_atlas.faces))],
                 [("images/warm.png", warm), ("images/cool.png", cool)], "full", np.eye(4), view=(35.0, 15.0))
    text = page.read_text()
    assert 'src="http' not in text and "<link" not in text  # nothing to fetch: it opens offline

    width, height = 320, 240
    shots = {}
    for light, level in (("0", "full"), ("1", "full"), ("room", "full"), ("0", "small")):
        png = tmp_path / f"{light}_{level}.png"
        assert screenshot_viewer(page, png, width, height, light=light, level=level) == "ready"
        shots[light, level] = np.asarray(Image.open(png).convert("RGB")).astype(np.float64) / 255.0
    frame = _viewer_camera(model.positions, 35.0, 15.0, width, height)
    ours, alpha = render_mesh_sh(path, frame, warm, supersample=1)
    inside = alpha > 0.99
    assert 0.1 < inside.mean() < 0.8
    viewer = shots["0", "full"]
    psnr = -10 * math.log10(float(np.mean((viewer[inside] - linear_to_srgb(ours)[inside]) ** 2)))
    assert psnr > 28.0, psnr  # three.js: LightProbe + prefiltered GGX lobe, against the material model
    for other in (("1", "full"), ("room", "full"), ("0", "small")):
        change = np.abs(shots[other][inside] - viewer[inside]).mean()
        assert change > 0.03, (other, change)  # another light or another level: another picture
