"""Stage 7, export: the trained fields -> a textured, relightable mesh any viewer opens (GLB).

Inputs   ingest/ (the photos), geometry/ (the trained field, occupancy grid with the masks' visual
         hull, refined cameras.json whose mask_path entries lead to the masks), material/ (material.pt +
         material.json: albedo, specular, glossiness, refined normal at any point;
         lighting.json: the learned per-photo SH lights), poses/normalization.json (the frame).
Method   1. the geometry field on a lattice of `resolution`^3 nodes over the occupied box: its
            signed distance (an SDF field) or its density;
         2. the surface: an SDF's zero level; a density's level `threshold` (or, when 0, the one
            whose marching-cubes mesh best matches the masks' silhouettes);
         3. clean-up: solid pieces smaller than `min_component_fraction` of the largest, or
            centred outside the visual hull, dropped; for a density also the inside no photo saw
            into filled (depth maps at `visibility_opacity`) and thin tunnels and bridges removed
            (`morphology_nodes`); marching cubes, small surface pieces dropped, Taubin smoothing
            (`taubin_iterations`), quadric decimation to `face_budget` faces;
         4. UV atlas (xatlas) for a `texture_size`^2 texture (0: texels about the photos' pixel
            footprint on the surface, up to `max_texture_size`), `padding_px` texels between charts;
         5. every texel's surface point -> the material field -> roughness (from glossiness, see
            bake.roughness_from_glossiness; metallic 0) and a tangent-space normal map of the
            refined normals; base colour = the albedo read from the training photos that see the
            point, each de-lit by its learned light (specular and cast shadows included) and fused
            robustly (photo_texture.py), blended into the material field's albedo where few
            photos see it (`photo_texture`); islands dilated;
         6. GLB written in the pipeline's world frame unchanged (with COLMAP poses that frame is
            already centred, radius 1, +Y up; with imported poses it is the user's own frame);
         7. checks: Khronos glTF validator (0 errors required), silhouette IoU against the masks,
            turntable renders under the mean learned light, a three.js screenshot in Chromium.
Outputs  export/model.glb        glTF 2.0 binary: POSITION, NORMAL, TANGENT, TEXCOORD_0, one PBR
                                 metallic-roughness material with three embedded PNG textures
         export/lighting.json    the learned lights (shared SH format), copied from material/
         export/model.obj + model.mtl (using textures/base_colour.png) with `write_obj`;
         export/model.ply (geometry only) with `write_ply`
         export/textures/        base_colour.png (sRGB), metallic_roughness.png, normal.png
         export/turntable/NNN.png  `turntable_frames` views (sRGB, RGBA) under the mean light
         export/turntable.png    the same views on one sheet (the report shows it)
         export/screenshot.png   three.js in headless Chromium (when chromium is installed), seen
                                 from the first photo's side
         export/export.json      threshold table, IoU per photo, mesh/atlas statistics, validator
                                 report counts, timings
Config   [export] resolution 256      lattice nodes per axis for marching cubes
         threshold 0.0                density iso-level (per world unit; density fields only); 0 = choose
                                      by silhouette IoU
         face_budget 80000            at most this many triangles after decimation
         taubin_iterations 5          Taubin smoothing passes (0: none)
         min_component_fraction 0.05  keep extra solid parts at least this fraction of the largest
         visibility_opacity 0.3       a photo's ray stops seeing at this accumulated opacity; nodes
                                      no photo saw before its stop are filled (the hidden inside)
         visibility_size 96           longer side (pixels) of the depth maps used for that
         morphology_nodes 1           close then open the solid by this many lattice nodes: removes
                                      the noise tunnels and bridges that fragment the UV atlas
         texture_size 0, max_texture_size 2048 [quality 4096]   texture side (0: from the photos)
         photo_texture true           albedo from the de-lit photos where they see the surface
         padding_px 4                 texels between atlas charts
         normal_map true              bake and embed the tangent-space normal map
         write_obj false, write_ply false  also write OBJ/MTL (+ PNGs) and PLY
         turntable_frames 8, turntable_size 256   preview renders (0 frames: none)
         screenshot true              three.js screenshot when chromium is installed
         validate true                run the Khronos validator when node tools are installed
Cache    reruns when poses, geometry, material or the [export] section change.
Failures NeroicError when the density never reaches the threshold (geometry stage failed to
         find the object) or the inputs are missing; RuntimeError if the validator finds errors
         in the GLB (a bug, not the user's doing). Missing node/chromium tools: a warning, the
         GLB is still written.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from stages.context import StageContext
from stages.errors import NeroicError


def _material_function(material_dir: Path, device: str):
    """The material stage's field as bake.MaterialFn (numpy in, numpy out)."""
    import torch

    from stages.export.bake import roughness_from_glossiness
    from stages.material.material_field import load_material

    field = load_material(material_dir, device)

    def material_fn(positions: np.ndarray, normals: np.ndarray) -> dict:
        with torch.no_grad():
            p = torch.as_tensor(positions, dtype=torch.float32, device=device)
            n = torch.as_tensor(normals, dtype=torch.float32, device=device)
            albedo, specular, glossiness, refined = field.query(p, n)
        glossiness = glossiness.cpu().double().numpy()
        return {"albedo": albedo.cpu().double().numpy(), "roughness": roughness_from_glossiness(glossiness),
                "normal": refined.cpu().double().numpy(), "specular": specular.cpu().double().numpy(),
                "glossiness": glossiness}

    return material_fn


def _density_function(trained):
    """Field density (per world unit) at points [N, 3] world -> [N]; 0 where the occupancy grid is empty."""
    import torch

    def density_fn(points: torch.Tensor) -> torch.Tensor:
        keep = trained.grid.lookup(points)
        return torch.where(keep, trained.field.density(points)[0], 0.0)

    return density_fn


def _mesh_of_density(density, lo, hi, frames, masks, inside_hull, cfg, ctx, lap):
    """A density field's mesh: the threshold (given, or chosen by silhouette IoU against the masks),
    the inside no photo saw filled, clean-up -> (mesh, threshold, threshold table, stats)."""
    from stages.export.mesh import mesh_from_density
    from stages.export.silhouette import choose_threshold
    from stages.export.visibility import depth_maps, hidden_from_cameras

    lap("density")
    depths = depth_maps(density, lo, hi, frames, int(cfg["visibility_size"]), float(cfg["visibility_opacity"]))
    hidden = hidden_from_cameras(density, lo, hi, depths)
    lap("visibility")
    threshold_table: list = []
    threshold = float(cfg["threshold"])
    if threshold <= 0.0:
        try:
            threshold, threshold_table = choose_threshold(density, lo, hi, frames, masks, inside_hull=inside_hull,
                                                          hidden=hidden, morphology_nodes=int(cfg["morphology_nodes"]))
        except ValueError as e:
            raise NeroicError(f"cannot find a surface in the density field: {e}",
                              hint="the geometry stage did not converge; check its held-out renders") from None
        ctx.log.info("export: density threshold %.3g chosen by silhouette IoU", threshold)
    lap("threshold")
    try:
        mesh, stats = mesh_from_density(density, lo, hi, threshold, inside_hull, int(cfg["face_budget"]),
                                        int(cfg["taubin_iterations"]), float(cfg["min_component_fraction"]),
                                        hidden=hidden, morphology_nodes=int(cfg["morphology_nodes"]))
    except ValueError as e:
        raise NeroicError(f"no surface at density threshold {threshold:g}: {e}",
                          hint="lower [export] threshold, or set it to 0 to choose it automatically") from None
    return mesh, threshold, threshold_table, stats


def _photo_views(ctx: StageContext, trained, masks: list[np.ndarray], material_dir: Path) -> list:
    """The training photos with their cameras, masks and learned lights, for reading the albedo."""
    from stages.common.cameras import frame_stem
    from stages.common.inputs import PhotoSet
    from stages.common.sh import read_lighting
    from stages.export.photo_texture import PhotoView
    from stages.material.lighting import read_response

    photos = PhotoSet.load(ctx.input("ingest"))
    lights = {frame_stem(fp): coeffs for fp, coeffs in read_lighting(material_dir / "lighting.json") if fp}
    gammas = read_response(material_dir / "camera_response.json")
    return [PhotoView(frame, photos.rgb(frame.stem, (frame.w, frame.h)), mask, lights[frame.stem],
                      gammas.get(frame.stem, 1.0))
            for frame, mask in zip(trained.frames, masks) if frame.stem in lights and frame.stem in photos]


def _hull_function(grid):
    """points [N, 3] world -> bool [N]: inside the masks' visual hull (the occupancy grid's hull)."""
    import torch

    def inside(points: np.ndarray) -> np.ndarray:
        p = torch.as_tensor(points, dtype=torch.float32, device=grid.device)
        idx, in_box = grid.cell_index(p)
        return (in_box & grid.hull[idx.clamp(0, grid.hull.numel() - 1)]).cpu().numpy()

    return inside


def _write_obj(out: Path, atlas, normals: np.ndarray) -> None:
    """model.obj + model.mtl referencing textures/base_colour.png (OBJ's v runs upwards: 1 - v)."""
    lines = ["mtllib model.mtl", "usemtl neroic_material"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in atlas.vertices]
    lines += [f"vt {u:.6f} {1.0 - v:.6f}" for u, v in atlas.uvs]
    lines += [f"vn {x:.5f} {y:.5f} {z:.5f}" for x, y, z in normals]
    lines += ["f " + " ".join(f"{i}/{i}/{i}" for i in face + 1) for face in atlas.faces]
    (out / "model.obj").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "model.mtl").write_text("newmtl neroic_material\nKd 1 1 1\nKa 0 0 0\nKs 0 0 0\n"
                                   "map_Kd textures/base_colour.png\n", encoding="utf-8")


def run(ctx: StageContext) -> dict:
    import torch

    from stages.common.images import write_png
    from stages.common.sh import read_lighting
    from stages.common.colour import linear_to_srgb
    from stages.common.sheets import contact_sheet
    from stages.export.bake import bake_textures, tangent_frames, to_uint8
    from stages.export.gltf import TexturedMesh, png_bytes, read_glb, write_glb
    from stages.export.mesh import mesh_from_sdf
    from stages.export.photo_texture import PhotoAlbedo, texture_size_for
    from stages.field.grids import evaluate_on_grid
    from stages.common.cameras import orbit_frames, square_frame
    from stages.export.preview import render_mesh_sh
    from stages.export.silhouette import silhouette_iou
    from stages.export.uv_atlas import unwrap
    from stages.export.validate import ToolMissing, screenshot_glb, validate_gltf
    from stages.field.trained import frame_masks, load_trained_field

    cfg = ctx.config
    geometry_dir, material_dir, poses_dir = ctx.input("geometry"), ctx.input("material"), ctx.input("poses")
    out = ctx.out
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    trained = load_trained_field(geometry_dir, ctx.device)
    lo, hi = (v.cpu().numpy().astype(np.float64) for v in trained.grid.occupied_aabb())
    if np.any(hi <= lo):
        raise NeroicError("the geometry stage's occupancy grid is empty: there is no object to export",
                          hint="check the masks and poses, then rerun the geometry stage")
    res = int(cfg["resolution"])
    frames = trained.frames
    masks = frame_masks(geometry_dir, frames)
    inside_hull = _hull_function(trained.grid)
    box = trained.grid.aabb_min.new_tensor(lo), trained.grid.aabb_min.new_tensor(hi)
    progress = lambda it, total: ctx.progress(it, total=total, desc="sampling the field", unit="slab")  # noqa: E731
    threshold_table: list = []
    if trained.field.is_sdf:
        sdf = evaluate_on_grid(lambda p: trained.field.sdf(p)[0], *box, res, nodes=True, progress=progress).cpu().numpy()
        lap("density")
        threshold = 0.0
        mesh, mesh_stats = mesh_from_sdf(sdf, lo, hi, inside_hull, int(cfg["face_budget"]),
                                         int(cfg["taubin_iterations"]), float(cfg["min_component_fraction"]))
        del sdf
    else:
        mesh, threshold, threshold_table, mesh_stats = _mesh_of_density(
            evaluate_on_grid(_density_function(trained), *box, res, nodes=True, progress=progress).cpu().numpy(),
            lo, hi, frames, masks, inside_hull, cfg, ctx, lap)
    iou = silhouette_iou(mesh, frames, masks)
    lap("mesh")

    size = int(cfg["texture_size"]) or texture_size_for(mesh, frames, largest=int(cfg["max_texture_size"]))
    atlas = unwrap(mesh, size, int(cfg["padding_px"]))
    lap("uv_atlas")
    tangent = tangent_frames(atlas, mesh.vertex_normals[atlas.source_vertex])
    photos = _photo_views(ctx, trained, masks, material_dir) if cfg["photo_texture"] else None
    textures = bake_textures(atlas, tangent, _material_function(material_dir, ctx.device), size,
                             PhotoAlbedo(mesh, photos) if photos else None,
                             progress=lambda it, total: ctx.progress(it, total=total, desc="baking", unit="chunk"))
    (out / "textures").mkdir()
    write_png(out / "textures" / "base_colour.png", textures.base_colour)
    write_png(out / "textures" / "metallic_roughness.png", textures.metallic_roughness)
    write_png(out / "textures" / "normal.png", textures.normal)
    lap("bake")

    normalization = json.loads((poses_dir / "normalization.json").read_text(encoding="utf-8"))
    glb_path = out / "model.glb"
    glb_size = write_glb(glb_path, TexturedMesh(
        atlas.vertices, tangent.normals, tangent.tangents, atlas.uvs, atlas.faces,
        png_bytes(textures.base_colour), png_bytes(textures.metallic_roughness),
        png_bytes(textures.normal) if cfg["normal_map"] else None),
        extras={"pose_source": normalization.get("source"), "density_threshold": threshold})
    if cfg["write_obj"]:
        _write_obj(out, atlas, tangent.normals)
    if cfg["write_ply"]:
        import open3d as o3d

        ply = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(mesh.vertices),
                                        o3d.utility.Vector3iVector(mesh.faces.astype(np.int32)))
        ply.compute_vertex_normals()
        o3d.io.write_triangle_mesh(str(out / "model.ply"), ply)
    lights = read_lighting(material_dir / "lighting.json")
    shutil.copyfile(material_dir / "lighting.json", out / "lighting.json")
    lap("write")

    report = {"errors": None, "warnings": None, "messages": []}
    if cfg["validate"]:
        try:
            v = validate_gltf(glb_path)
            report = {"errors": v.errors, "warnings": v.warnings, "infos": v.infos, "messages": v.messages[:20]}
            if v.errors:
                raise RuntimeError(f"the Khronos glTF validator found {v.errors} error(s) in the GLB: "
                                   + "; ".join(v.messages[:5]))
        except ToolMissing as e:
            ctx.log.warning("export: not validating the GLB: %s", e)
    lap("validate")

    centre = 0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0))
    n_turn = int(cfg["turntable_frames"])
    if n_turn > 0:
        (out / "turntable").mkdir()
        mean_light = np.mean([sh for _, sh in lights], axis=0)
        model = read_glb(glb_path)
        radius = float(np.linalg.norm(mesh.vertices - centre, axis=1).max())
        tiles = []
        for k, frame in enumerate(orbit_frames(n_turn, square_frame(int(cfg["turntable_size"]), 40.0), 3.0 * radius,
                                               centre, stem="turntable")):
            rgb, alpha = render_mesh_sh(model, frame, mean_light)
            write_png(out / "turntable" / f"{k:03d}.png", np.dstack([to_uint8(linear_to_srgb(rgb)), to_uint8(alpha)]))
            tiles.append(to_uint8(linear_to_srgb(rgb) * alpha[..., None] + 0.25 * (1.0 - alpha[..., None])))
        write_png(out / "turntable.png", contact_sheet(tiles, [f"{360 * k // n_turn} deg" for k in range(n_turn)],
                                                      tile_height=int(cfg["turntable_size"]), columns=min(n_turn, 4)))
    lap("turntable")
    if cfg["screenshot"]:
        try:
            # Seen from where the first photo was taken, so it shows the side the user photographed.
            view = frames[0].centre - centre
            screenshot_glb(glb_path, out / "screenshot.png", yaw=float(np.degrees(np.arctan2(view[0], view[2]))),
                           pitch=float(np.degrees(np.arcsin(view[1] / np.linalg.norm(view)))))
        except ToolMissing as e:
            ctx.log.warning("export: no screenshot: %s", e)
        except (RuntimeError, OSError) as e:
            ctx.log.warning("export: the three.js screenshot failed: %s", e)
    lap("screenshot")

    summary = {
        "threshold": threshold, "threshold_table": threshold_table,
        "silhouette_iou_mean": float(iou.mean()), "silhouette_iou": {f.stem: round(float(x), 4) for f, x in zip(frames, iou)},
        "mesh": mesh_stats, "atlas": {"vertices": int(len(atlas.vertices)), "utilization": atlas.utilization,
                                      "texture_size": size, "texel_coverage": float(textures.coverage.mean()),
                                      "photo_albedo_share": float(textures.photo_confidence[textures.coverage].mean())},
        "glb_bytes": glb_size, "validator": report, "timings_s": timings, "torch_threads": torch.get_num_threads(),
    }
    (out / "export.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    validated = "not validated" if report["errors"] is None else f"{report['errors']} errors {report['warnings']} warnings"
    return {"figure": f"{mesh_stats['faces']} faces, IoU {iou.mean():.3f}, {glb_size / 1e6:.1f} MB GLB, {validated}",
            "faces": mesh_stats["faces"], "silhouette_iou": float(iou.mean()), "threshold": threshold,
            "validator_errors": report["errors"], "glb_bytes": glb_size}
