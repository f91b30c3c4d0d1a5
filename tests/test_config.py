import pytest

from pipeline.config import ConfigError, defaults, parse_override, resolve


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
