import pytest

from ddoq_ray.config import ConfigError, RunConfig, load_config
from ddoq_ray.stages import fingerprint as stage_fingerprint

SMOKE = "configs/smoke.yaml"


def test_smoke_config_loads_with_typed_sections():
    cfg = load_config(SMOKE)
    assert cfg.quantize.ipc == 5 and cfg.data.class_subset == [0, 3, 8]
    assert cfg.train.seeds == [0, 1] and cfg.encode.vae == "madebyollin/taesd"


def test_overrides_parse_yaml_values():
    cfg = load_config(SMOKE, ["quantize.ipc=7", "train.seeds=[3, 4]", "output_dir=/tmp/x", "train.teacher=null"])
    assert cfg.quantize.ipc == 7 and cfg.train.seeds == [3, 4] and cfg.output_dir == "/tmp/x"
    assert cfg.train.teacher is None


@pytest.mark.parametrize("override, fragment", [
    ("quantize.ipcc=3", "quantize.ipcc: unknown key"),
    ("quantize.ipc=0", "quantize.ipc: Input should be greater than 0"),
    ("train.epochs=many", "train.epochs"),
    ("bogus=1", "bogus: unknown key"),
    ("decode.strength=1.5", "strength must be in [0, 1]"),
    ("decode.guidance_scale=-1", "guidance_scale must be >= 0"),
])
def test_bad_values_name_the_field(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(SMOKE, [override])
    assert fragment in str(e.value) and SMOKE in str(e.value)


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("configs/nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(SMOKE, ["quantize.ipc"])


def test_fingerprints_chain_downstream_only():
    a = load_config(SMOKE)
    b = load_config(SMOKE, ["quantize.ipc=6"])
    assert stage_fingerprint(a, "encode") == stage_fingerprint(b, "encode")
    for s in ("quantize", "decode", "train"):
        assert stage_fingerprint(a, s) != stage_fingerprint(b, s)
    c = load_config(SMOKE, ["train.epochs=3"])
    assert stage_fingerprint(a, "decode") == stage_fingerprint(c, "decode")
    assert stage_fingerprint(a, "train") != stage_fingerprint(c, "train")


def test_defaults_are_the_main_job_defaults():
    cfg = RunConfig.model_validate({"data": {"train": "x.parquet"}})
    assert cfg.data.image_size == 64 and cfg.quantize.ipc == 10 and cfg.train.methods == ["random", "d4m", "ddoq"]
