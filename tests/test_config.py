"""Config layering and validation; every shipped YAML validates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import lavislite  # noqa: F401
from lavislite.common.config import Config, build_config, load_dataset_config, load_model_config, load_yaml
from lavislite.common.schema import ConfigError, validate

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "projects" / "demo" / "train.yaml")


@dataclass
class Inner:
    a: int = 1
    b: list[str] = field(default_factory=lambda: ["x"])


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    rate: float = 0.5
    maybe: int | None = None


def test_validate_fills_defaults_and_coerces_int_to_float() -> None:
    out = validate(Outer, {"name": "n", "rate": 1, "inner": {"a": 3}}, "sec")
    assert out == {"name": "n", "inner": {"a": 3, "b": ["x"]}, "rate": 1.0, "maybe": None}
    assert isinstance(out["rate"], float)


def test_validate_reports_every_problem_with_full_paths() -> None:
    with pytest.raises(ConfigError) as info:
        validate(Outer, {"inner": {"aa": 2, "b": "notalist"}, "rate": "fast", "maybe": 1.5}, "sec")
    problems = info.value.problems
    assert "sec.inner.aa: unknown key; did you mean 'sec.inner.a'?" in problems
    assert any(p.startswith("sec.inner.b: expected a list") for p in problems)
    assert any(p.startswith("sec.rate: expected a float") for p in problems)
    assert any(p.startswith("sec.maybe: expected an int") for p in problems)
    assert any(p.startswith("sec.name: required key is missing") for p in problems)
    assert len(problems) == 5


def test_bool_is_not_an_int_and_int_is_not_a_bool() -> None:
    with pytest.raises(ConfigError, match="sec.a: expected an int"):
        validate(Inner, {"a": True}, "sec")


def test_precedence_options_over_run_config_over_model_default() -> None:
    # demo.yaml says max_len 256 / image_size 64 / freeze_vit false; run config and options override.
    default = load_model_config("blip2_qwen", "demo")
    assert default.freeze_vit is False and default.qformer.num_query_token == 8
    cfg = Config(DEMO, ["model.freeze_vit=true", "run.init_lr=0.5", "model.qformer.num_query_token=4"])
    assert cfg.model_cfg.freeze_vit is True
    assert cfg.model_cfg.qformer.num_query_token == 4
    assert cfg.model_cfg.qformer.hidden_size == 64  # untouched default from demo.yaml
    assert cfg.run_cfg.init_lr == 0.5
    assert cfg.run_cfg.weight_decay == 0.0  # run config
    assert cfg.run_cfg.beta2 == 0.999  # schema default
    # dataset default config layer: data_type comes from the builder's defaults.yaml
    assert cfg.datasets_cfg.minigpt4_instruction.data_type == "images"
    assert cfg.datasets_cfg.minigpt4_instruction.build_info.annotations.train.storage.endswith("minigpt4_instruction.json")


def test_typo_in_model_key_names_path_and_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        Config(DEMO, ["model.frezee_vit=True"])
    assert "--options model.frezee_vit=True: unknown key; did you mean 'model.freeze_vit'?" in str(info.value)


def test_unknown_arch_dataset_task_and_processor_list_close_matches() -> None:
    user = OmegaConf.merge(
        load_yaml(DEMO),
        OmegaConf.from_dotlist(["model.arch=blip2_qwem", "run.task=image_text_pretrian"]),
        {"datasets": {"llava_instructions": {}}},
    )
    with pytest.raises(ConfigError) as info:
        build_config(user)
    msg = str(info.value)
    assert "model.arch: Unknown model 'blip2_qwem'. Did you mean: 'blip2_qwen'?" in msg
    assert "datasets.llava_instructions: Unknown builder 'llava_instructions'. Did you mean: 'llava_instruction'" in msg
    assert "run.task: Unknown task 'image_text_pretrian'. Did you mean: 'image_text_pretrain'?" in msg
    with pytest.raises(ConfigError, match=r"--options datasets.minigpt4_instruction.vis_processor.train.name=blip2_image_trian: Unknown processor 'blip2_image_trian'"):
        Config(DEMO, ["datasets.minigpt4_instruction.vis_processor.train.name=blip2_image_trian"])
    with pytest.raises(ConfigError, match=r"--options datasets.llava_instruction.text_processor.train.max_lenn=3: unknown key; did you mean '.*max_len'"):
        Config(DEMO, ["datasets.llava_instruction.text_processor.train.max_lenn=3"])


def test_wrong_type_and_bad_model_type_and_top_level() -> None:
    with pytest.raises(ConfigError, match=r"--options run.max_epoch=many: expected an int, got str \('many'\)"):
        Config(DEMO, ["run.max_epoch=many"])
    with pytest.raises(ConfigError, match=r"--options model.model_type=dmeo: unknown model_type 'dmeo'; did you mean 'demo'\?"):
        Config(DEMO, ["model.model_type=dmeo"])
    with pytest.raises(ConfigError, match=r"rnu: unknown top-level section; did you mean 'run'\?"):
        Config(DEMO, ["rnu.x=1"])
    with pytest.raises(ConfigError, match="--options item 'run.seed' must look like key.path=value"):
        Config(DEMO, ["run.seed"])


def test_saved_config_reloads_to_the_same_config(tmp_path: Path) -> None:
    cfg = Config(DEMO, ["run.seed=7"])
    cfg.save(str(tmp_path / "config.yaml"))
    again = Config(str(tmp_path / "config.yaml"))
    assert OmegaConf.to_container(again.config) == OmegaConf.to_container(cfg.config)


def test_load_dataset_config_uses_builder_default() -> None:
    ds = load_dataset_config("llava_instruction")
    assert ds.build_info.annotations.train.storage == "llava/llava_instruct_150k.json"
    assert ds.text_processor.train == {"name": "qwen_chat", **{k: v for k, v in ds.text_processor.train.items() if k != "name"}}
    assert ds.text_processor.train.max_len == 512


def _shipped_yamls() -> list[Path]:
    return sorted(p for d in ("configs", "projects") for p in (REPO / d).rglob("*.yaml"))


def _run_configs() -> list[Path]:
    return [p for p in _shipped_yamls() if set(OmegaConf.load(p)) == {"model", "datasets", "run"}]


def test_every_yaml_is_classified() -> None:
    # Each shipped YAML is a run config, a model default, a dataset default or default.yaml.
    run_cfgs = set(_run_configs())
    for path in _shipped_yamls():
        keys = set(OmegaConf.load(path))
        assert path in run_cfgs or keys in ({"model"}, {"datasets"}, {"cache_root"}), path


@pytest.mark.parametrize("path", _shipped_yamls(), ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_yaml_validates(path: Path) -> None:
    data = OmegaConf.load(path)
    keys = set(data)
    if keys == {"model"}:
        loaded = load_model_config(str(data.model.arch), str(data.model.model_type))
        assert loaded.arch == data.model.arch
    elif keys == {"datasets"}:
        for name in data.datasets:
            assert load_dataset_config(str(name)).data_type
    elif keys == {"model", "datasets", "run"}:
        cfg = Config(str(path))
        assert cfg.run_cfg.task
    else:
        assert keys == {"cache_root"}


def test_deepspeed_optimizer_and_scheduler_are_config_errors_naming_the_run_keys(tmp_path: Path) -> None:
    """Issue 9.8: the runner builds both; DeepSpeed's would be silently ignored."""
    with pytest.raises(ConfigError) as info:
        Config(DEMO, ["run.deepspeed_config.optimizer.type=Adam", "run.deepspeed_config.scheduler.type=WarmupLR"])
    msg = str(info.value)
    assert "run.deepspeed_config: 'optimizer' is not used, the runner builds the optimizer; set run.init_lr, run.weight_decay, run.beta2" in msg
    assert "run.deepspeed_config: 'scheduler' is not used, the runner builds the scheduler; set run.lr_sched, run.init_lr" in msg
    ds_json = tmp_path / "ds.json"
    ds_json.write_text('{"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}')
    with pytest.raises(ConfigError, match=r"run.deepspeed_config_path \(.*ds.json\): 'optimizer' is not used"):
        Config(DEMO, [f"run.deepspeed_config_path={ds_json}"])
    # contradictions are start-up errors too, not failures after the model is built
    with pytest.raises(ConfigError, match=r"run.deepspeed_config.gradient_accumulation_steps = 4 contradicts run.accum_grad_iters = 1"):
        Config(DEMO, ["run.deepspeed_config.gradient_accumulation_steps=4"])


def test_unknown_split_is_an_error_listing_each_datasets_splits() -> None:
    """Issue 9.10: a typo'd split used to evaluate nothing and exit 0."""
    with pytest.raises(ConfigError) as info:
        Config(DEMO, ["run.test_splits=[tets]"], purpose="evaluate")
    msg = str(info.value)
    assert "--options run.test_splits=[tets]: unknown split 'tets'" in msg
    assert "did you mean 'test'? The datasets have: minigpt4_instruction: train; llava_instruction: train; vqav2: val, test." in msg
    with pytest.raises(ConfigError, match=r"--options run.train_splits=\[trian\]: unknown split 'trian'; did you mean 'train'\?"):
        Config(DEMO, ["run.train_splits=[trian]"], purpose="train")
    # without a purpose (the Python API) splits are not checked; known splits pass
    assert Config(DEMO, ["run.test_splits=[tets]"]).run_cfg.test_splits == ["tets"]
    assert Config(DEMO, ["run.test_splits=[train]"], purpose="evaluate").run_cfg.test_splits == ["train"]


def test_eval_processors_make_every_split_deterministic() -> None:
    """Issue 9.11: evaluation reads the train split with the eval processors (no random crop or flip)."""
    import torch

    from lavislite.tasks import setup_task

    cfg = Config(DEMO)
    datasets = setup_task(cfg).build_datasets(cfg, for_evaluation=True)
    train = datasets["minigpt4_instruction"]["train"]
    assert type(train.vis_processor).__name__ == "BlipImageEvalProcessor"
    a, b = train[0], train[0]
    assert torch.equal(a["image"], b["image"])
    assert type(setup_task(cfg).build_datasets(cfg)["minigpt4_instruction"]["train"].vis_processor).__name__ == "Blip2ImageTrainProcessor"


def test_an_options_value_error_names_the_option_not_the_yaml(tmp_path: Path) -> None:
    """Issue 15: ``--options run.max_epoch=x`` was reported as a problem of the YAML file."""
    with pytest.raises(ConfigError) as info:
        Config(DEMO, ["run.seed=3", "run.max_epoch=x"])
    assert info.value.problems == ["--options run.max_epoch=x: expected an int, got str ('x')"]
    assert str(info.value).startswith("Invalid config (--options):") and DEMO not in str(info.value)
    # a later item wins, so it is the one named
    with pytest.raises(ConfigError, match=r"--options run.max_epoch=y: expected an int"):
        Config(DEMO, ["run.max_epoch=x", "run.max_epoch=y"])
    # the same mistake in the YAML names the YAML; both at once name both
    cfg = load_yaml(DEMO)
    cfg.run.max_epoch = "x"
    bad = tmp_path / "bad.yaml"
    bad.write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(ConfigError) as info:
        Config(str(bad))
    assert info.value.problems == ["run.max_epoch: expected an int, got str ('x')"]
    assert str(info.value).startswith(f"Invalid config ({bad}):")
    with pytest.raises(ConfigError) as info:
        Config(str(bad), ["run.seed=s"])
    assert sorted(info.value.problems) == ["--options run.seed=s: expected an int, got str ('s')", "run.max_epoch: expected an int, got str ('x')"]
    assert str(info.value).startswith(f"Invalid config ({bad}, --options):")


def test_a_key_at_the_wrong_level_says_where_it_belongs(tmp_path: Path) -> None:
    """Issue 15: ``freeze_vit:`` at the top level gave no hint that it is a model key."""
    cfg = load_yaml(DEMO)
    for key, value in (("freeze_vit", True), ("init_lr", 1e-4), ("num_query_token", 4), ("frezee_llm", True), ("zzz", 1)):
        cfg[key] = value
    path = tmp_path / "misplaced.yaml"
    path.write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(ConfigError) as info:
        Config(str(path))
    sections = "Sections: model, datasets, run."
    assert info.value.problems == [
        f"freeze_vit: unknown top-level section; did you mean 'model.freeze_vit'? {sections}",
        f"init_lr: unknown top-level section; did you mean 'run.init_lr'? {sections}",
        f"num_query_token: unknown top-level section; did you mean 'model.qformer.num_query_token'? {sections}",
        f"frezee_llm: unknown top-level section; did you mean 'model.freeze_llm'? {sections}",
        f"zzz: unknown top-level section. {sections}",
    ]
    # a dataset's keys are searched too, under each configured builder
    with pytest.raises(ConfigError, match=r"--options build_info.x=1: build_info: unknown top-level section; did you mean 'datasets\.\w+\.build_info'( or|\?)"):
        Config(DEMO, ["build_info.x=1"])


def test_a_key_in_the_wrong_section_says_which_section_has_it() -> None:
    with pytest.raises(ConfigError) as info:
        Config(DEMO, ["model.init_lr=1", "run.freeze_vit=true", "model.frezee_vit=true"])
    assert info.value.problems == [
        "--options model.init_lr=1: unknown key here; did you mean 'run.init_lr'?",
        "--options model.frezee_vit=true: unknown key; did you mean 'model.freeze_vit'?",  # a typo keeps the schema's hint
        "--options run.freeze_vit=true: unknown key here; did you mean 'model.freeze_vit'?",
    ]
