"""An exported GLB in Blender (Cycles), lit by one of Blender's own HDR environments.

    pip install bpy        # in a venv of its own: Blender as a Python module, benchmark-only
    python bench/blender_view.py model.glb views.png [--env sunset] [--views 3] [--size 384]

A second client besides three.js: Blender's glTF importer reads the base colour, normal,
roughness/metallic and KHR_materials_specular maps into its Principled BSDF (it ignores the
occlusion map), and Cycles path-traces the model under a real environment (Blender ships the
Poly Haven skies studiolights/world/*.exr: city, courtyard, forest, interior, night, studio,
sunrise, sunset). Writes the views side by side. Imports only bpy and numpy, so it runs in the
environment that has bpy, not neroic's.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector


def environment(name: str) -> Path:
    folder = Path(bpy.utils.system_resource("DATAFILES", path="studiolights/world"))
    path = folder / f"{name}.exr"
    if not path.exists():
        choices = ", ".join(sorted(p.stem for p in folder.glob("*.exr")))
        raise SystemExit(f"no environment {name!r} in {folder} (there are: {choices})")
    return path


def load_scene(glb: Path, env: Path, strength: float) -> list:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(glb))
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    if not meshes:
        raise SystemExit(f"{glb} holds no mesh")
    world = bpy.data.worlds.new("env")
    world.use_nodes = True
    nodes, links = world.node_tree.nodes, world.node_tree.links
    texture = nodes.new("ShaderNodeTexEnvironment")
    texture.image = bpy.data.images.load(str(env))
    background = nodes["Background"]
    background.inputs["Strength"].default_value = strength
    links.new(texture.outputs["Color"], background.inputs["Color"])
    bpy.context.scene.world = world
    return meshes


def bounds(meshes: list) -> tuple[np.ndarray, float]:
    """Centre and radius of the imported meshes' world-space corners."""
    corners = np.array([list(o.matrix_world @ Vector(c)) for o in meshes for c in o.bound_box])
    lo, hi = corners.min(0), corners.max(0)
    return (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2)


def render_views(centre: np.ndarray, radius: float, views: int, size: int, samples: int, threads: int,
                 out: Path) -> None:
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = True
    scene.render.threads_mode = "FIXED"
    scene.render.threads = threads
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.image_settings.file_format = "PNG"
    scene.view_settings.view_transform = "Standard"  # plain sRGB, as the photos
    camera_data = bpy.data.cameras.new("camera")
    camera_data.lens_unit = "FOV"
    camera_data.angle = math.radians(35)
    camera = bpy.data.objects.new("camera", camera_data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    distance = radius / math.sin(camera_data.angle / 2) * 1.05
    frames = []
    for k in range(views):
        yaw = 2 * math.pi * k / views + math.radians(30)
        # Blender is +Z up; the glTF importer turns glTF's +Y up into it
        offset = np.array([math.sin(yaw), -math.cos(yaw), 0.35])
        position = centre + distance * offset / np.linalg.norm(offset)
        camera.location = Vector(position.tolist())
        camera.rotation_euler = (Vector(centre.tolist()) - camera.location).to_track_quat("-Z", "Y").to_euler()
        path = out.with_name(f"{out.stem}_{k}.png")
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        frames.append(path)
    _side_by_side(frames, out)


def _side_by_side(frames: list[Path], out: Path) -> None:
    images = [bpy.data.images.load(str(p)) for p in frames]
    w, h = images[0].size
    canvas = np.zeros((h, w * len(images), 4), np.float32)
    for k, im in enumerate(images):
        canvas[:, k * w:(k + 1) * w] = np.asarray(im.pixels[:], np.float32).reshape(h, w, 4)
    sheet = bpy.data.images.new("sheet", width=w * len(images), height=h, alpha=True)
    sheet.pixels[:] = canvas.ravel()
    sheet.filepath_raw = str(out)
    sheet.file_format = "PNG"
    sheet.save()
    for p in frames:
        p.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("glb", type=Path)
    parser.add_argument("out", type=Path, help="PNG: the views side by side")
    parser.add_argument("--env", default="sunset", help="one of Blender's studiolights/world skies")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    meshes = load_scene(args.glb.resolve(), environment(args.env), args.strength)
    centre, radius = bounds(meshes)
    render_views(centre, radius, args.views, args.size, args.samples, args.threads,
                 args.out.resolve())
    print(f"{args.out}: {len(meshes)} mesh(es), {sum(len(o.data.polygons) for o in meshes)} faces, "
          f"materials {sorted({s.material.name for o in meshes for s in o.material_slots if s.material})}")


if __name__ == "__main__":
    main()
