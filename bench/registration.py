"""Registration on every capture that has reference cameras: photos posed, how right, how fast.

    python -m bench.registration                    # every case, one table
    python -m bench.registration milk dino          # some cases
    python -m bench.registration --out DIR --set poses.features=sift ...

Each case runs `neroic run PHOTOS --until poses` as a user would (shipped defaults plus any
--set) in a fresh workdir, then scores the cameras against the case's reference
(bench/poses_accuracy.py: rotation error and camera-centre error after a similarity fit) and
reads the poses stage's own time and record of attempts. The table goes to OUT/registration.md,
everything to OUT/registration.json.

References: the dataset's own cameras where it has them (milk, ethiopian_head: their authors'
COLMAP; dino: the calibration; spot-wild and the rendered print capture: the truth). Captures with
none (skull01, kermit) are scored against plain pycolmap on the whole photos (SIFT, exhaustive
matching, incremental mapper, COLMAP's defaults, no masks): what a user gets without neroic. It
is also run on the cases that have references, for comparison.

Cases that test failure modes:
- skull-third: every third photo of skull01 (22, ~16 degrees apart), scored against the cameras
  the skull case found for all 66 (run it first; else against plain pycolmap's);
- kermit-rough, skull-rough: every fourth mask given (--masks) with its left half erased, as a
  background remover that misses part of the object does;
- spot-print: Spot painted with one print box-projected on all six sides (repeated pattern, as
  printed packaging), a random camera, focal length and light per photo (bench/print_capture.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from bench import SHARED_DATA
from bench.poses_accuracy import read_truth, score
from stages.common.cameras import read_transforms



def link_photos(source: Path, target: Path, keep=lambda index, path: True) -> Path:
    """target/ holding symlinks to source's image files (those `keep` accepts), made once."""
    if not target.exists():
        target.mkdir(parents=True)
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for index, path in enumerate(images):
            if keep(index, path):
                (target / path.name).symlink_to(path.resolve())
    return target


def rough_masks(workdir: Path, target: Path, every: int = 4) -> Path:
    """The masks stage's masks of `workdir`, with the left half of every `every`-th one erased."""
    if not target.exists():
        target.mkdir(parents=True)
        masks = sorted((workdir / "masks").glob("*.png"))
        masks = [m for m in masks if m.name != "contact_sheet.png"]
        for index, path in enumerate(masks):
            mask = np.asarray(Image.open(path).convert("L")).copy()
            if index % every == every - 1:
                cols = np.flatnonzero(mask.max(0) >= 128)
                if len(cols):
                    mask[:, : (cols[0] + cols[-1]) // 2] = 0
            Image.fromarray(mask).save(target / path.name)
    return target


def plain_pycolmap(photos: Path, out: Path) -> tuple[dict, float]:
    """stem -> Frame from plain pycolmap on the whole photos (cached in out/), and its seconds."""
    import pycolmap

    from stages.poses.colmap_model import frame_from_image

    cached = out / "cameras.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        frames = ({f.stem: f for f in read_transforms(out / "transforms.json", roots=[Path("/")])}
                  if (out / "transforms.json").exists() else {})
        return frames, data["seconds"]
    shutil.rmtree(out, ignore_errors=True)
    (out / "sparse").mkdir(parents=True)
    started = time.perf_counter()
    database = out / "database.db"
    pycolmap.extract_features(database, photos, device=pycolmap.Device.cpu)
    pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
    models = pycolmap.incremental_mapping(database, photos, out / "sparse")
    seconds = time.perf_counter() - started
    frames = {}
    if models:
        best = max(models.values(), key=lambda r: r.num_reg_images())
        for image in (best.image(i) for i in best.reg_image_ids()):
            stem = Path(image.name).stem
            frames[stem] = replace(frame_from_image(image, best.camera(image.camera_id), stem), file_path=image.name)
        from stages.common.cameras import write_transforms

        write_transforms(out / "transforms.json", list(frames.values()), "OPENCV")
    cached.write_text(json.dumps({"seconds": seconds, "registered": len(frames)}))
    return frames, seconds


def run_poses(photos: Path, workdir: Path, overrides: list[str], extra: list[str] = ()) -> tuple[int, float]:
    """`neroic run PHOTOS --until poses` in a fresh workdir; its exit code and wall seconds."""
    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "-m", "pipeline", "run", str(photos), "--out", str(workdir.parent / "model.glb"),
               "--workdir", str(workdir), "--until", "poses", "-q", *extra]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    (workdir.parent / "neroic.out").write_text(done.stdout + done.stderr)
    return done.returncode, time.perf_counter() - started


def result_of(workdir: Path, truth: dict, code: int, wall: float, photos: int) -> dict:
    """What the poses stage achieved, scored against `truth` (stem -> Frame)."""
    out: dict = {"exit": code, "wall_seconds": round(wall, 1), "photos": photos}
    record = workdir / "poses" / "normalization.json"
    if code != 0 or not record.exists():
        log = (workdir.parent / "neroic.out").read_text().strip().splitlines()
        out["failed"] = next((line for line in log if line.startswith("error")), log[-1] if log else "")
        return out
    manifest = json.loads((workdir / "poses" / "manifest.json").read_text())
    info = json.loads(record.read_text())
    estimated = {f.stem: f for f in read_transforms(workdir / "poses" / "transforms.json", roots=[workdir])}
    scored = score(estimated, truth, photos)
    out.update({"seconds": round(manifest["seconds"], 1), "posed": len(estimated),
                "features": info.get("features"), "attempts": info.get("attempts", []),
                "excluded": info.get("excluded", []), "unregistered": info.get("unregistered", [])})
    if "rotation_deg" in scored:
        out.update({"rotation_median": scored["rotation_deg"]["median"], "rotation_max": scored["rotation_deg"]["max"],
                    "centre_median": scored["centre_of_spread"]["median"],
                    "centre_max": scored["centre_of_spread"]["max"],
                    "per_photo": scored["per_photo"]})
    return out


def scored_attempts(workdir: Path, truth: dict, photos: int) -> list[dict]:
    """Every model the poses stage built (poses/attempts, or the checkpoint folder after a failure),
    its record and its cameras' errors against `truth`: right when the median rotation error is
    at most RIGHT_MEDIAN_DEG and nine in ten cameras are within RIGHT_P90_DEG."""
    folder = workdir / "poses" / "attempts"
    if not folder.exists():
        folder = workdir / ".checkpoints" / "poses" / "colmap" / "attempts"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        record = json.loads(path.read_text())["record"]
        cameras = {f.stem: f for f in read_transforms(path, roots=[workdir])}
        scored = score(cameras, truth, photos)
        if "rotation_deg" not in scored:
            continue
        errors = [e["rotation_deg"] for e in scored["per_photo"].values()]
        out.append({**record, "rotation_median": float(np.median(errors)),
                    "rotation_p90": float(np.percentile(errors, 90)),
                    "right": bool(np.median(errors) <= RIGHT_MEDIAN_DEG and np.percentile(errors, 90) <= RIGHT_P90_DEG)})
    return out


RIGHT_MEDIAN_DEG, RIGHT_P90_DEG = 2.0, 10.0
# Each model check: the figure it reads and the rule that passes a model (stages/poses/sfm.py).
CHECKS = {
    "points inside the masks >= 0.9 (median photo)": lambda r: r.get("points_inside_masks", 1) >= 0.9,
    "object points inside the masks >= 0.9 (median photo)": lambda r: r.get("object_points_inside_masks", 1) >= 0.9,
    "others' hull covers the mask >= 0.9 (median photo)": lambda r: r.get("hull_covers_mask", 1) >= 0.9,
    "adjustment: error grows < 1.5x (or stays under 1 px), no divergence": lambda r: (
        r.get("reprojection_adjusted_px", 0) < 1e4 and (r.get("reprojection_adjusted_px", 0)
                                                        <= 1.5 * r.get("reprojection_px", 1)
                                                        or r.get("reprojection_adjusted_px", 0) <= 1.0)),
}


def checks_table(results: dict) -> str:
    """Each check's false rejections (right models it fails) and false acceptances (wrong models it
    passes), over every model built in every case."""
    models = [(name, a) for name, r in results.items() for a in r.get("attempt_models", [])]
    right = [(n, a) for n, a in models if a["right"]]
    wrong = [(n, a) for n, a in models if not a["right"]]
    lines = [f"{len(models)} models built: {len(right)} right, {len(wrong)} wrong (right: median rotation error <= "
             f"{RIGHT_MEDIAN_DEG:g} deg and 90 % of the cameras <= {RIGHT_P90_DEG:g} deg)", "",
             "| check | right models rejected | wrong models passed |", "| --- | --- | --- |"]
    for check, passes in CHECKS.items():
        rejected = [f"{n}/{a['attempt']}" for n, a in right if not passes(a)]
        passed = [f"{n}/{a['attempt']}" for n, a in wrong if passes(a)]
        lines.append(f"| {check} | {len(rejected)}/{len(right)} {', '.join(rejected)} | "
                     f"{len(passed)}/{len(wrong)} {', '.join(passed)} |")
    lines += ["", "| case / model | built | median / p90 rotation error (deg) | inside masks | object points inside | "
              "hull covers | reprojection (px) before / after | rejected |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, a in models:
        lines.append(f"| {n}/{a['attempt']} | {a['built']} | {a['rotation_median']:.2f} / {a['rotation_p90']:.1f} | "
                     f"{a.get('points_inside_masks', '-')} | {a.get('object_points_inside_masks', '-')} | "
                     f"{a.get('hull_covers_mask', '-')} | {a.get('reprojection_px', '-')} / "
                     f"{a.get('reprojection_adjusted_px', '-')} | {a['rejected'][:80]} |")
    return "\n".join(lines)


def case_paths(name: str, out: Path) -> tuple[Path, str | None, list[str]]:
    """(photos folder, reference file or None for plain pycolmap, extra neroic arguments)."""
    if name == "milk":
        return SHARED_DATA / "milk" / "images", str(SHARED_DATA / "milk" / "poses_bounds.npy"), []
    if name == "spot-wild":
        return SHARED_DATA / "spot-wild" / "images", str(SHARED_DATA / "spot-wild" / "transforms.json"), []
    if name == "ethiopian-head":
        return SHARED_DATA / "ethiopian_head" / "images", str(SHARED_DATA / "ethiopian_head" / "poses_bounds.npy"), []
    if name == "dino":
        photos = link_photos(SHARED_DATA / "dino", out / "photos")
        return photos, str(SHARED_DATA / "dino" / "dinoSR_par.txt"), []
    if name == "skull":
        return SHARED_DATA / "skull01" / "images", None, []
    if name == "kermit":
        return SHARED_DATA / "kermit" / "images", None, []
    if name == "skull-third":
        return link_photos(SHARED_DATA / "skull01" / "images", out / "photos", lambda i, p: i % 3 == 0), "skull", []
    if name in ("kermit-rough", "skull-rough"):
        base = name.split("-")[0]
        photos = SHARED_DATA / ("kermit" if base == "kermit" else "skull01") / "images"
        first = out / "masks-run"
        if not (first / "work" / "masks" / "masks.json").exists():
            subprocess.run([sys.executable, "-m", "pipeline", "run", str(photos), "--out", str(first / "m.glb"),
                            "--workdir", str(first / "work"), "--until", "masks", "-q"], check=True)
        return photos, None, ["--masks", str(rough_masks(first / "work", out / "rough-masks"))]
    if name == "spot-print":
        from bench.print_capture import make_print_capture

        capture = out / "capture"
        if not (capture / "transforms.json").exists():
            make_print_capture(capture)
        return capture / "images", str(capture / "transforms.json"), []
    raise SystemExit(f"unknown case {name}")


CASES = ("milk", "spot-wild", "ethiopian-head", "dino", "skull", "kermit", "skull-third", "kermit-rough",
         "skull-rough", "spot-print")


def run_case(name: str, out: Path, overrides: list[str]) -> dict:
    case = out / name
    photos, reference, extra = case_paths(name, case)
    data_missing = not photos.exists()
    if data_missing:
        return {"skipped": f"{photos} is absent"}
    count = len([p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")])
    plain, plain_seconds = plain_pycolmap(photos, out / "pycolmap" / name.replace("-rough", ""))
    skull_run = out / "skull" / "work" / "poses" / "transforms.json"
    if reference == "skull":
        if skull_run.exists():
            truth, against = {f.stem: f for f in read_transforms(skull_run, roots=[out / "skull" / "work"])}, "skull"
        else:
            truth, against = plain_pycolmap(SHARED_DATA / "skull01" / "images", out / "pycolmap" / "skull")[0], "plain pycolmap"
    elif reference is None:
        truth, against = plain, "plain pycolmap"
    else:
        truth, against = read_truth(Path(reference), None if not reference.endswith(".npy") else photos_workdir(photos, case)), "reference"
    code, wall = run_poses(photos, case / "work", overrides, extra)
    result = result_of(case / "work", truth, code, wall, count)
    result["attempt_models"] = scored_attempts(case / "work", truth, count)
    result["scored_against"] = against
    plain_scored = score(plain, truth, count) if against != "plain pycolmap" else {"posed": len(plain)}
    result["pycolmap"] = {"posed": plain_scored["posed"], "seconds": round(plain_seconds, 1),
                          **({"rotation_median": plain_scored["rotation_deg"]["median"]}
                             if "rotation_deg" in plain_scored else {})}
    return result


def photos_workdir(photos: Path, case: Path) -> Path:
    """A folder holding ingest/photos.json naming the photos, for LLFF references (rows follow the
    photos' sorted names)."""
    folder = case / "names"
    (folder / "ingest").mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    (folder / "ingest" / "photos.json").write_text(json.dumps({"photos": [{"name": n} for n in names]}))
    return folder


def table(results: dict) -> str:
    lines = ["| case | posed | rotation median / max (deg) | centre max (% of spread) | poses stage (s) | "
             "features | plain pycolmap |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | |")
            continue
        plain = r["pycolmap"]
        plain_text = f"{plain['posed']}/{r['photos']}, {plain['seconds']:.0f} s" + (
            f", {plain['rotation_median']:.2f} deg" if "rotation_median" in plain else "")
        if "failed" in r:
            lines.append(f"| {name} | 0/{r['photos']}: {r['failed'][:120]} | | | {r['wall_seconds']:.0f} (wall) | | {plain_text} |")
            continue
        rotation = (f"{r['rotation_median']:.2f} / {r['rotation_max']:.2f}" if "rotation_median" in r else "-")
        centre = f"{100 * r['centre_max']:.1f}" if "centre_max" in r else "-"
        lines.append(f"| {name} | {r['posed']}/{r['photos']} | {rotation} | {centre} | {r['seconds']:.0f} | "
                     f"{r['features']} | {plain_text} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"some of {', '.join(CASES)} (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench-runs/registration"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}: choose from {', '.join(CASES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "registration.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for name in args.cases or CASES:
        print(f"{name} ...", flush=True)
        results[name] = run_case(name, args.out, args.overrides)
        saved.write_text(json.dumps(results, indent=1))
        print(table({name: results[name]}).splitlines()[-1], flush=True)
    (args.out / "registration.md").write_text(table(results) + "\n\n" + checks_table(results) + "\n")
    print(table(results))
    print(checks_table(results))


if __name__ == "__main__":
    main()
