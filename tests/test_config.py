import logging

import pytest

from pipeline.config import ConfigError, commented_template, defaults, parse_override, resolve


def test_defaults_cover_every_stage_section():
    settings = defaults()
    assert {"run", "ingest", "masks", "poses"} <= set(settings)
    assert settings["run"]["profile"] == "preview"


def test_workdir_file_then_set_override(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[ingest]\nmax_size = 512\n[masks]\nthreshold = 200\n")
    s = resolve(cfg, None, ("masks.threshold=100", "masks.min_fraction=0.01"))
    assert s["ingest"]["max_size"] == 512
    assert s["masks"]["threshold"] == 100
    assert s["masks"]["min_fraction"] == 0.01


def test_precedence_defaults_profile_file_set(tmp_path):
    """defaults -> profile -> the user's file -> --set, each later one winning."""
    preview = defaults()["profiles"]["preview"]["export"]["resolution"]
    quality = defaults()["profiles"]["quality"]["export"]["resolution"]
    assert len({preview, quality, defaults()["export"]["resolution"], 320}) == 4
    cfg = tmp_path / "config.toml"
    cfg.write_text(commented_template())  # what a new workdir holds: nothing set
    assert resolve(cfg)["export"]["resolution"] == preview
    assert resolve(cfg, "quality")["export"]["resolution"] == quality
    cfg.write_text("[export]\nresolution = 320\n")  # the user's edit wins over any profile
    assert resolve(cfg)["export"]["resolution"] == 320
    assert resolve(cfg, "quality")["export"]["resolution"] == 320
    assert resolve(cfg, "quality", ("export.resolution=128",))["export"]["resolution"] == 128
    cfg.write_text('[run]\nprofile = "quality"\n')  # the file may choose the profile; --profile wins
    assert resolve(cfg)["export"]["resolution"] == quality
    assert resolve(cfg, "preview")["export"]["resolution"] == preview


def test_commented_template_documents_every_key_and_sets_none():
    import tomllib

    text = commented_template()
    assert all(not values for values in tomllib.loads(text).values())
    for section, values in defaults().items():
        if section != "profiles":
            for key in values:
                assert f"# {key} = " in text, f"{section}.{key} is not documented in a new workdir's config"


def test_a_pinned_default_that_undoes_the_profile_is_warned(tmp_path, caplog):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"[export]\nresolution = {defaults()['export']['resolution']}\n")
    with caplog.at_level(logging.WARNING, logger="neroic"):
        s = resolve(cfg)
    assert s["export"]["resolution"] == defaults()["export"]["resolution"]
    assert "overrides the preview profile" in caplog.text and "export.resolution" in caplog.text


def test_unknown_key_and_wrong_type_are_refused(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[masks]\ntreshold = 200\n")
    with pytest.raises(ConfigError, match="masks.treshold"):
        resolve(cfg)
    with pytest.raises(ConfigError, match="must be int"):
        resolve(None, None, ("ingest.max_size=big",))
    with pytest.raises(ConfigError, match="unknown config section"):
        resolve(None, None, ("nosuch.key=1",))


def test_int_accepted_for_float_and_bare_words_are_strings():
    assert parse_override("poses.mapper=global") == ("poses", "mapper", "global")
    assert resolve(None, None, ("poses.init_min_tri_angle=8",))["poses"]["init_min_tri_angle"] == 8.0
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_unknown_profile(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile"):
        resolve(None, "turbo")


def test_the_gpu_profile_is_the_fallback_only_when_nothing_chose_a_profile(tmp_path):
    """The CLI passes fallback_profile="gpu" when it finds a CUDA device: it applies unless
    --profile, --set run.profile or the workdir's file chose a profile."""
    gpu = defaults()["profiles"]["gpu"]["geometry"]["target_samples"]
    cfg = tmp_path / "config.toml"
    cfg.write_text(commented_template())
    assert resolve(cfg, None, (), fallback_profile="gpu")["geometry"]["target_samples"] == gpu
    assert resolve(cfg, None, (), fallback_profile="gpu")["run"]["profile"] == "gpu"
    assert resolve(cfg, "preview", (), fallback_profile="gpu")["run"]["profile"] == "preview"
    assert resolve(cfg, None, ("run.profile=quality",), fallback_profile="gpu")["run"]["profile"] == "quality"
    cfg.write_text('[run]\nprofile = "preview"\n')
    assert resolve(cfg, None, (), fallback_profile="gpu")["run"]["profile"] == "preview"
