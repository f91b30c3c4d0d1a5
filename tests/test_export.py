"""Export stage: density -> mesh -> UV atlas -> baked textures -> GLB, against exact ground truth.

The ground truth is Keenan Crane's Spot (tests/synthetic/spot_capture.load_spot): a density made
from its signed distance must give back its surface, its texture baked onto the extracted mesh
must come back at the texels, and the GLB must pass the Khronos validator and load in a browser.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh

from stages.common.sh import random_sh_light
from stages.common.colour import linear_to_srgb
from stages.common.images import sample_bilinear
from stages.export.bake import (bake_surface_maps, encode_textures, rasterize_uv, roughness_from_glossiness,
                                tangent_frames)
from stages.export.gltf import TexturedMesh, png_bytes, read_glb, write_glb
from stages.export.mesh import chamfer_distance, clean_volume, lattice_points, mesh_from_density
from stages.field.grids import evaluate_on_grid
from stages.export.preview import render_mesh_sh, shading_normals
from stages.export.silhouette import choose_threshold, silhouette_iou
from stages.export.uv_atlas import unwrap
from stages.export.validate import chromium_path, screenshot_glb, validate_gltf
from stages.export.visibility import depth_maps, hidden_from_cameras
from tests.synthetic.spot_capture import SpotRenderer, load_spot, look_at
from tests.synthetic.spot_capture import sample_texture as spot_texture

o3d = pytest.importorskip("open3d")


def _scene(vertices, faces):
    scene = o3d.t.geometry.RaycastingScene(nthreads=1)
    scene.add_triangles(o3d.core.Tensor(np.asarray(vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.asarray(faces, dtype=np.uint32)))
    return scene


@pytest.fixture(scope="module")
def spot():
    return load_spot()


@pytest.fixture(scope="module")
def spot_density(spot):
    """A NeRF-like density of Spot: sigma = 100 sigmoid(-sdf / 0.01) on a 112^3 lattice, plus a floater."""
    scene = _scene(spot.mesh_vertices, spot.mesh_faces)
    lo, hi = spot.mesh_vertices.min(0) - 0.08, spot.mesh_vertices.max(0) + 0.08

    def density_fn(points):
        sdf = scene.compute_signed_distance(o3d.core.Tensor(points.numpy()), nthreads=1).numpy()
        return torch.from_numpy(100.0 / (1.0 + np.exp(np.clip(sdf / 0.01, -60.0, 60.0))))

    density = evaluate_on_grid(density_fn, torch.from_numpy(lo), torch.from_numpy(hi), 112, nodes=True).numpy()
    density[2:6, 2:6, 2:6] = 100.0  # a floater in a corner, far from the cow
    return density, lo, hi


@pytest.fixture(scope="module")
def spot_mesh(spot_density):
    density, lo, hi = spot_density
    mesh, stats = mesh_from_density(density, lo, hi, threshold=50.0, face_budget=12_000, taubin_iterations=5)
    return mesh, stats


def spot_material(spot):
    """Material function of the true textured Spot: closest point -> texture albedo, true normal."""
    scene = _scene(spot.vertices, spot.faces)

    def material_fn(positions, normals):
        hit = scene.compute_closest_points(o3d.core.Tensor(positions.astype(np.float32)), nthreads=1)
        face = hit["primitive_ids"].numpy().astype(np.int64)
        uv = hit["primitive_uvs"].numpy().astype(np.float64)
        w = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
        corners = spot.faces[face]
        albedo = spot_texture(spot.texture, np.einsum("nk,nkc->nc", w, spot.uvs[corners]))
        n = np.einsum("nk,nkc->nc", w, spot.normals[corners])
        return {"albedo": albedo, "roughness": np.full(len(positions), 0.4), "specular": np.zeros(len(positions)),
                "glossiness": np.full(len(positions), 20.0), "normal": n / np.linalg.norm(n, axis=1, keepdims=True)}

    return material_fn


@pytest.fixture(scope="module")
def spot_glb(tmp_path_factory, spot, spot_mesh):
    """The extracted Spot mesh, unwrapped, baked from the true material and written as a GLB."""
    mesh, _ = spot_mesh
    atlas = unwrap(mesh, texture_size=512, padding_px=4)
    frames = tangent_frames(atlas, mesh.vertex_normals[atlas.source_vertex])
    raster = rasterize_uv(atlas, 512)
    maps = bake_surface_maps(atlas, frames, raster, spot_material(spot))
    textures = encode_textures(maps, atlas, frames, raster)
    path = tmp_path_factory.mktemp("export") / "spot.glb"
    write_glb(path, TexturedMesh(atlas.vertices, frames.normals, frames.tangents, atlas.uvs, atlas.faces,
                                 png_bytes(textures.base_colour), png_bytes(textures.orm),
                                 png_bytes(textures.normal), png_bytes(textures.specular)))
    return path, atlas, frames, textures, maps


def test_mesh_from_density_recovers_the_true_surface(spot, spot_mesh):
    mesh, stats = spot_mesh
    truth = trimesh.Trimesh(spot.mesh_vertices, spot.mesh_faces, process=False)
    diagonal = float(np.linalg.norm(truth.vertices.max(0) - truth.vertices.min(0)))
    chamfer = chamfer_distance(mesh, truth, n=100_000)
    assert chamfer <= 0.005 * diagonal, f"Chamfer {chamfer:.5f} > 0.5% of the diagonal {diagonal:.3f}"
    assert stats["components"] == 2 and stats["kept_components"] == 1  # the floater went
    assert stats["faces"] <= 12_000
    assert mesh.vertices.min(0)[0] > truth.vertices.min(0)[0] - 0.05  # nothing left near the floater's corner


def test_clean_volume_drops_floaters_outside_the_hull_and_fills_pockets():
    n = 48
    nodes = lattice_points([-1.0] * 3, [1.0] * 3, n)
    x, y, z = np.meshgrid(*nodes, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    density = np.where(r < 0.6, 10.0, 0.0)
    density[np.sqrt((x - 0.1)**2 + y**2 + z**2) < 0.12] = 0.0  # an enclosed pocket
    density[np.sqrt((x - 0.85)**2 + (y - 0.85)**2 + (z - 0.85)**2) < 0.13] = 10.0  # small, inside the hull
    density[np.sqrt((x + 0.8)**2 + (y + 0.8)**2 + (z + 0.8)**2) < 0.3] = 10.0  # large, outside the hull

    cleaned, stats = clean_volume(density, 5.0, nodes, inside_hull=lambda p: (np.linalg.norm(p, axis=1) < 0.7),
                                  min_component_fraction=0.05)
    assert stats["components"] == 3 and stats["kept_components"] == 1
    assert stats["filled_nodes"] > 0
    assert (cleaned >= 5.0).sum() == (r < 0.6).sum()  # exactly the ball, pocket filled, both floaters gone
    # Without a hull, size alone decides: the large floater stays, the small one goes.
    _, by_size = clean_volume(density, 5.0, nodes, inside_hull=None, min_component_fraction=0.05)
    assert by_size["kept_components"] == 2


def _ring_frames(n: int, size: int = 64, distance: float = 3.0):
    from stages.common.cameras import Frame

    frames = []
    for k in range(n):
        az, el = 2 * math.pi * k / n, 0.5 * math.sin(3 * k)
        c2w = look_at(distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)]))
        frames.append(Frame(stem=f"v{k}", c2w=c2w, fl_x=size, fl_y=size, cx=size / 2, cy=size / 2, w=size, h=size))
    return frames


def _foam_ball(n: int = 64):
    """A ball of radius 0.6 whose 0.1-thick shell is dense (200 / unit) and whose inside is foam:
    random blobs above the threshold in low-density fog. Returns (density, nodes, r)."""
    nodes = lattice_points([-1.0] * 3, [1.0] * 3, n)
    x, y, z = np.meshgrid(*nodes, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    rng = np.random.default_rng(0)
    density = np.where(r < 0.6, 200.0, 0.0)
    foam = (r < 0.45) & (rng.random(r.shape) < 0.7)
    density[foam] = 0.5
    return density, nodes, r


def test_depth_maps_and_hidden_nodes_of_a_foam_filled_ball():
    density, nodes, r = _foam_ball()
    frames = _ring_frames(6)
    depths = depth_maps(density, [-1.0] * 3, [1.0] * 3, frames, max_size=64, opacity=0.3)
    for frame, depth in depths:
        centre_ray = depth[32, 32]
        assert abs(centre_ray - (3.0 - 0.6)) < 0.05, centre_ray  # the ray stops at the shell
        assert np.isinf(depth[0, 0])  # a corner ray misses the ball
    hidden = hidden_from_cameras(density, [-1.0] * 3, [1.0] * 3, depths)
    assert hidden[r < 0.45].all(), "the foam behind the shell is hidden from every photo"
    assert not hidden[r > 0.75].any(), "space the photos looked through is not"
    cleaned, stats = clean_volume(density, 100.0, nodes, hidden=hidden)
    assert ((cleaned >= 100.0) == (r < 0.6)).mean() > 0.995
    mesh = mesh_from_density(density, [-1.0] * 3, [1.0] * 3, 100.0, hidden=hidden, taubin_iterations=0)[0]
    raw = mesh_from_density(density, [-1.0] * 3, [1.0] * 3, 100.0, hidden=np.zeros_like(hidden),
                            taubin_iterations=0, morphology_nodes=0)[0]
    sphere = 4 * math.pi * 0.6**2
    assert sphere < mesh.area < 1.15 * sphere, mesh.area / sphere  # the outer sphere (staircased) only
    assert raw.area > 1.5 * mesh.area, raw.area / sphere  # without filling, the foam's faces too


def test_lattice_visibility_fills_without_cameras_and_morphology_removes_a_tunnel():
    density, nodes, r = _foam_ball()
    mesh, stats = mesh_from_density(density, [-1.0] * 3, [1.0] * 3, 100.0, taubin_iterations=0)
    assert stats["filled_nodes"] > 0.9 * ((r < 0.45) & (density < 100)).sum()  # the foam, seen from 26 directions
    assert mesh.area < 1.15 * 4 * math.pi * 0.6**2

    x, y, _ = np.meshgrid(*nodes, indexing="ij")
    solid = np.where(r < 0.6, 200.0, 0.0)
    solid[(np.abs(x) < 0.04) & (np.abs(y) < 0.04)] = 0.0  # a tunnel two nodes wide, right through
    for morphology, genus in ((0, 1), (1, 0)):
        mesh, _ = mesh_from_density(solid, [-1.0] * 3, [1.0] * 3, 100.0, taubin_iterations=0,
                                    morphology_nodes=morphology)
        assert mesh.is_watertight and (2 - mesh.euler_number) // 2 == genus, (morphology, mesh.euler_number)


def test_silhouette_threshold_choice_matches_masks(spot, spot_density):
    """Masks rendered from the true mesh: the chosen threshold is near the true level (50)."""
    density, lo, hi = spot_density
    renderer = SpotRenderer(spot, nthreads=1)
    from stages.common.cameras import Frame

    frames, masks = [], []
    for k in range(4):
        az = 2 * math.pi * k / 4 + 0.3
        c2w = look_at(3.2 * np.array([math.sin(az), 0.5, math.cos(az)]))
        frames.append(Frame(stem=f"v{k}", c2w=c2w, fl_x=100.0, fl_y=100.0, cx=48.0, cy=48.0, w=96, h=96))
        masks.append(renderer.render(c2w, 100.0, 96, np.zeros((9, 3)), supersample=1)["alpha"] > 0.5)
    threshold, table = choose_threshold(density, lo, hi, frames, masks, candidates=[2.0, 10.0, 50.0, 90.0, 99.0])
    assert threshold in (10.0, 50.0, 90.0)
    ious = dict(table)
    assert ious[threshold] > 0.95 and ious[99.0] < ious[threshold]
    mesh, _ = mesh_from_density(density, lo, hi, threshold, face_budget=5000)
    assert silhouette_iou(mesh, frames, masks).min() > 0.95


def test_sdf_surface_level_follows_the_masks():
    """A sphere's signed distance whose zero level lies two grid steps inside the spheres the masks
    show (as a soft VolSDF field's does): the export's level moves out by those two steps."""
    import trimesh

    from stages.common.cameras import Frame
    from stages.export.mesh import lattice_points
    from stages.export.silhouette import choose_sdf_offset, mesh_silhouette

    lo, hi, res = [-1.0] * 3, [1.0] * 3, 64
    spacing = 2.0 / (res - 1)
    x, y, z = np.meshgrid(*lattice_points(lo, hi, res), indexing="ij")
    sdf = np.sqrt(x ** 2 + y ** 2 + z ** 2) - 0.5
    seen = trimesh.creation.icosphere(subdivisions=5, radius=0.5 + 2 * spacing)
    frames, masks = [], []
    for k in range(4):
        az = 2 * math.pi * k / 4 + 0.3
        frame = Frame(stem=f"v{k}", c2w=look_at(3.0 * np.array([math.sin(az), 0.4, math.cos(az)])),
                      fl_x=160.0, fl_y=160.0, cx=64.0, cy=64.0, w=128, h=128)
        frames.append(frame)
        masks.append(mesh_silhouette(seen, frame))
    offset, table = choose_sdf_offset(sdf, lo, hi, frames, masks)
    assert offset == pytest.approx(2 * spacing), table
    assert dict(table)[offset] > 0.97 > dict(table)[0.0]


def test_uv_atlas_covers_the_mesh_without_overlap(spot_glb, spot_mesh):
    _, atlas, _, _, _ = spot_glb
    mesh, _ = spot_mesh
    assert len(atlas.faces) == len(mesh.faces)
    np.testing.assert_array_equal(atlas.vertices, mesh.vertices[atlas.source_vertex])
    assert atlas.uvs.min() >= 0.0 and atlas.uvs.max() <= 1.0
    # The same faces in 3-D (seams split vertices, never faces).
    np.testing.assert_array_equal(atlas.source_vertex[atlas.faces], mesh.faces)
    tri = atlas.uvs[atlas.faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    uv_area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    assert np.all(uv_area > 0), "every face gets some texels' worth of UV area"
    # No overlap: the texel centres covered equal the UV area (up to edge rounding).
    raster = rasterize_uv(atlas, 512)
    assert abs(raster.covered.mean() - uv_area.sum()) < 0.03 * uv_area.sum()
    assert uv_area.sum() > 0.3, "charts use a reasonable part of the square"


def test_baked_texture_reproduces_the_colour_function(spot, spot_glb):
    """Texels looked up at random surface points give back the true albedo (sRGB, 8 bits)."""
    _, atlas, _, textures, maps = spot_glb
    rng = np.random.default_rng(1)
    face = rng.integers(0, len(atlas.faces), 4000)
    w = rng.dirichlet(np.ones(3), 4000) * 0.9 + 0.1 / 3  # away from the edges, where texels are shared
    points = np.einsum("nk,nkc->nc", w, atlas.vertices[atlas.faces[face]])
    uv = np.einsum("nk,nkc->nc", w, atlas.uvs[atlas.faces[face]])
    truth = linear_to_srgb(spot_material(spot)(points, np.zeros_like(points))["albedo"])
    baked = sample_bilinear(textures.base_colour, uv) / 255.0
    error = np.abs(baked - truth)
    # Spot's texture has hard edges between patches, which a 512^2 bake blurs: look at the median.
    assert np.median(error) < 0.01 and np.mean(error) < 0.04, (np.median(error), np.mean(error))
    assert np.all(textures.orm[..., 2] == 0) and np.all(textures.orm[..., 0] == 255)  # metallic 0, no occlusion given
    np.testing.assert_allclose(textures.orm[maps.coverage][:, 1], round(0.4 * 255), atol=1)
    assert np.all(textures.specular == 0)


def test_normal_map_gives_back_the_material_normals_under_the_viewer_rule(spot, spot_glb):
    """Decoding the normal map as a glTF viewer does (TBN from NORMAL and TANGENT) gives the true normals."""
    path, atlas, _, _, _ = spot_glb
    model = read_glb(path)
    rng = np.random.default_rng(2)
    face = rng.integers(0, len(model.faces), 3000)
    bary = rng.dirichlet(np.ones(3), 3000) * 0.9 + 0.1 / 3
    uv = np.einsum("nk,nkc->nc", bary, model.uvs[model.faces[face]])
    points = np.einsum("nk,nkc->nc", bary, model.positions[model.faces[face]])
    decoded = shading_normals(model, face, bary, uv)
    truth = spot_material(spot)(points, np.zeros_like(points))["normal"]
    geometric = shading_normals(replace(model, normal=None), face, bary, uv)
    angle = np.degrees(np.arccos(np.clip(np.sum(decoded * truth, axis=1), -1, 1)))
    angle_without = np.degrees(np.arccos(np.clip(np.sum(geometric * truth, axis=1), -1, 1)))
    assert np.median(angle) < 1.5, np.median(angle)
    assert np.median(angle) < 0.5 * np.median(angle_without)  # the map adds what the mesh lacks


def test_glb_passes_the_khronos_validator_and_reads_back(spot_glb):
    path, atlas, frames, textures, _ = spot_glb
    report = validate_gltf(path)
    assert report.errors == 0, report.messages
    assert report.warnings == 0, report.messages
    model = read_glb(path)
    np.testing.assert_allclose(model.positions, atlas.vertices, atol=1e-6)
    np.testing.assert_allclose(model.uvs, atlas.uvs, atol=1e-7)
    np.testing.assert_array_equal(model.faces, atlas.faces)
    np.testing.assert_array_equal(model.base_colour, textures.base_colour)
    np.testing.assert_array_equal(model.tangents[:, 3], frames.tangents[:, 3])
    doc = model.document
    material = doc["materials"][0]
    pbr = material["pbrMetallicRoughness"]
    assert pbr["baseColorTexture"]["index"] == 0 and pbr["metallicRoughnessTexture"]["index"] == 1
    assert material["occlusionTexture"]["index"] == 1 and material["normalTexture"]["index"] == 2
    assert material["extensions"]["KHR_materials_specular"]["specularColorTexture"]["index"] == 3
    assert doc["extensionsUsed"] == ["KHR_materials_specular"]
    assert [i["mimeType"] for i in doc["images"]] == ["image/png"] * 4


def test_obj_export_matches_the_glb(tmp_path, spot_glb):
    from stages.export import _write_obj

    _, atlas, frames, _, _ = spot_glb
    _write_obj(tmp_path, atlas.vertices, atlas.uvs, atlas.faces, frames.normals)
    obj = trimesh.load(tmp_path / "model.obj", process=False, force="mesh")
    np.testing.assert_allclose(obj.vertices, atlas.vertices, atol=1e-5)
    np.testing.assert_array_equal(obj.faces, atlas.faces)
    np.testing.assert_allclose(obj.visual.uv[:, 1], 1.0 - atlas.uvs[:, 1], atol=1e-5)  # OBJ's v runs upwards
    assert "map_Kd textures/base_colour.png" in (tmp_path / "model.mtl").read_text()


def test_validator_reports_errors_in_a_broken_glb(tmp_path, spot_glb):
    """The check can fail: a GLB whose index points past the vertices is an error."""
    path, atlas, frames, textures, _ = spot_glb
    faces = atlas.faces.copy()
    faces[0, 0] = len(atlas.vertices) + 5
    broken = tmp_path / "broken.glb"
    write_glb(broken, TexturedMesh(atlas.vertices, frames.normals, frames.tangents, atlas.uvs, faces,
                                   png_bytes(textures.base_colour), png_bytes(textures.orm)))
    assert validate_gltf(broken).errors > 0


def test_relit_render_of_the_export_matches_the_true_model(spot, spot_glb):
    """The exported GLB, rendered under a random SH light, against the ground-truth renderer."""
    path, _, _, _, _ = spot_glb
    from stages.common.cameras import Frame

    light = random_sh_light(np.random.default_rng(5))
    c2w = look_at(3.2 * np.array([0.6, 0.4, -0.7]))
    frame = Frame(stem="v", c2w=c2w, fl_x=150.0, fl_y=150.0, cx=64.0, cy=64.0, w=128, h=128)
    rgb, alpha = render_mesh_sh(path, frame, light)
    truth = SpotRenderer(spot, nthreads=1).render(c2w, 150.0, 128, light)
    pred = linear_to_srgb(rgb) * alpha[..., None]
    target = linear_to_srgb(truth["rgb"]) * truth["alpha"][..., None]
    psnr = -10 * math.log10(float(np.mean((pred - target) ** 2)))
    assert psnr > 32.0, psnr
    assert abs(alpha.mean() - truth["alpha"].mean()) < 0.01

    # with shadow rays it matches the ground truth's cast shadows, and without them it cannot
    shadowed, _ = render_mesh_sh(path, frame, light, shadows=True)
    truth = SpotRenderer(spot, nthreads=1).render(c2w, 150.0, 128, light, shadows=True)
    target = linear_to_srgb(truth["rgb"]) * truth["alpha"][..., None]
    with_rays = -10 * math.log10(float(np.mean((linear_to_srgb(shadowed) * alpha[..., None] - target) ** 2)))
    without = -10 * math.log10(float(np.mean((pred - target) ** 2)))
    assert with_rays > 30.0 and with_rays > without + 0.5, (with_rays, without)
    assert np.all(shadowed <= rgb + 1e-6)


def test_roughness_from_glossiness_is_monotone_and_in_range():
    s = np.array([1.0, 5.0, 20.0, 100.0, 1e4])
    r = roughness_from_glossiness(s)
    assert np.all(np.diff(r) < 0) and np.all((r > 0) & (r <= 1))
    np.testing.assert_allclose(roughness_from_glossiness(1.0), 3 ** -0.25)


def test_threejs_screenshot_in_headless_chromium(tmp_path, spot_glb):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium): no browser to load the GLB in")
    path, _, _, _, _ = spot_glb
    png = tmp_path / "shot.png"
    assert screenshot_glb(path, png, width=320, height=240, yaw=210, pitch=15) == "ready"
    from PIL import Image

    image = np.asarray(Image.open(png).convert("RGB")).astype(np.float64)
    assert image.shape == (240, 320, 3)
    background = np.array([0xE8, 0xE8, 0xE8])
    drawn = np.abs(image - background).sum(axis=2) > 30
    assert 0.1 < drawn.mean() < 0.7, drawn.mean()  # the cow fills a good part of the frame
    assert drawn[120, 160] or drawn[100:140, 140:180].mean() > 0.5  # and sits in the middle
    assert image[drawn].min() < 80  # Spot's black patches are there: the texture was applied
