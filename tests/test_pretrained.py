"""Wan2.2 folders (5B- and A14B-shaped, tiny), Mirage folders and LoRA round trips, through from_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    AutoencoderTiny,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)

from mirage_gym.geometry import intrinsics_from_fov, pose_from_position_yaw_pitch
from mirage_gym.model.depth_head import DepthHead
from mirage_gym.model.generator import MirageGenerator
from mirage_gym.model.pretrained import LORA_WEIGHTS, LORA_WEIGHTS_2, MIRAGE_CONFIG, PATCH_EMBEDDING, add_lora
from mirage_gym.model.transformer import build_transformer, predict_flow, token_timesteps
from mirage_gym.model.vae import VideoVAE
from test_model import tiny_wan


def tiny_transformer(channels: int, num_layers: int = 2, seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return tiny_wan(channels, channels, num_layers)


def wan_folder(path: Path, *, a14b: bool, num_layers: int = 2, vae_z: int | None = None) -> Path:
    """A tiny random Wan2.2 checkpoint in the diffusers layout: TI2V-5B (z=48, 16x) or A14B (z=16, 2 experts)."""
    torch.manual_seed(0)
    if a14b:  # Wan2.1 VAE layout, two experts with the MoE boundary
        z = vae_z or 16
        vae = AutoencoderKLWan(
            base_dim=8, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * z, latents_std=[1.0] * z
        )
        experts = dict(
            transformer=tiny_transformer(16, num_layers),
            transformer_2=tiny_transformer(16, num_layers, 1),
            boundary_ratio=0.875,
        )
    else:  # Wan2.2 VAE layout: z=48, patchified 2x, 16x spatial; expand_timesteps
        z = vae_z or 48
        vae = AutoencoderKLWan(
            base_dim=8,
            decoder_base_dim=8,
            z_dim=z,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_spatial=16,
            latents_mean=[0.0] * z,
            latents_std=[1.0] * z,
        )
        experts = dict(transformer=tiny_transformer(48, num_layers), expand_timesteps=True)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, **experts).save_pretrained(path)
    return path


def start_inputs(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (1, size, size, 3), generator=g, dtype=torch.uint8)
    poses = pose_from_position_yaw_pitch(torch.tensor([[1.0, 2.0, 1.2]]), torch.tensor([0.4]), torch.zeros(1))
    return images, poses, intrinsics_from_fov(80.0, size, size)


def run_chunk(gen: MirageGenerator, size: int, frames: int = 5) -> torch.Tensor:
    images, poses, k = start_inputs(size)
    gen.start(images, poses, k)
    return gen.step(poses[:, None].repeat(1, frames, 1, 1), [torch.Generator().manual_seed(0)]).latents


def flow(transformer: WanTransformer3DModel, channels: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, channels, 2, 4, 4, generator=g)
    cond = torch.randn(1, channels + 7, 2, 4, 4, generator=g)
    with torch.no_grad():
        return predict_flow(transformer, latents, cond, torch.tensor([[0.0, 600.0]]), torch.zeros(1, 1, 16))


def randomise_trainables(gen: MirageGenerator) -> None:
    """Stand-in for fine-tuning: LoRA B matrices, the widened channels and the depth head get non-zero values."""
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for transformer in (gen.transformer, gen.transformer_2):
            if transformer is None:
                continue
            for name, param in transformer.named_parameters():
                if "lora_B" in name or name.startswith("patch_embedding.weight"):
                    param.add_(torch.randn(param.shape, generator=g) * 0.1)
        for param in gen.depth_head.parameters():
            param.add_(torch.randn(param.shape, generator=g) * 0.01)


@pytest.fixture(scope="module")
def wan_5b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wan_folder(tmp_path_factory.mktemp("wan5b"), a14b=False)


@pytest.fixture(scope="module")
def wan_a14b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wan_folder(tmp_path_factory.mktemp("wana14b"), a14b=True)


# ---------------------------------------------------------------------- Wan2.2 folders


def test_5b_folder_loads_widened_and_unchanged(wan_5b: Path) -> None:
    gen = MirageGenerator.from_pretrained(wan_5b, num_inference_steps=2)
    assert gen.vae.latent_channels == 48 and gen.vae.spatial_factor == 16 and gen.vae.temporal_factor == 4
    assert gen.transformer.config.in_channels == 2 * 48 + 7 and gen.transformer_2 is None
    assert isinstance(gen.scheduler, UniPCMultistepScheduler) and gen.base_model_path == wan_5b.resolve()
    # The pretrained behaviour is untouched: same output as the checkpoint, bit for bit.
    original = WanTransformer3DModel.from_pretrained(wan_5b / "transformer").eval()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 48, 2, 4, 4, generator=g)
    frame_t = torch.tensor([[0.0, 600.0]])
    with torch.no_grad():
        expected = original(latents, token_timesteps(original, frame_t, 4, 4), torch.zeros(1, 1, 16)).sample
        got = predict_flow(
            gen.transformer, latents, torch.randn(1, 48 + 7, 2, 4, 4, generator=g), frame_t, torch.zeros(1, 1, 16)
        )
    assert torch.equal(got, expected)
    latents = run_chunk(gen, 64)
    assert latents.shape == (1, 48, 2, 4, 4) and torch.isfinite(latents).all()


def test_a14b_folder_loads_both_experts(wan_a14b: Path) -> None:
    gen = MirageGenerator.from_pretrained(wan_a14b, num_inference_steps=2, memory="none")
    assert gen.transformer_2 is not None and gen.boundary_ratio == 0.875
    assert gen.vae.latent_channels == 16 and gen.vae.spatial_factor == 8
    assert gen.transformer_2.config.in_channels == 2 * 16 + 7
    assert not torch.equal(flow(gen.transformer, 16), flow(gen.transformer_2, 16))
    assert run_chunk(gen, 32).shape == (1, 16, 2, 4, 4)


def test_torch_dtype_and_stored_settings(wan_5b: Path) -> None:
    gen = MirageGenerator.from_pretrained(wan_5b, torch_dtype=torch.bfloat16, memory="pixel", context_frames=1)
    assert gen.transformer.dtype == torch.bfloat16 and gen.vae.vae.dtype == torch.float32
    assert gen.memory == "pixel" and gen.context_frames == 1


def test_prompt_through_the_folders_text_encoder(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    folder = wan_folder(tmp_path / "wan", a14b=False)
    with pytest.raises(ValueError, match="has no text_encoder: pass prompt_embeds"):
        MirageGenerator.from_pretrained(folder, prompt="a red room")
    words = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "room": 5}, "<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    encoder = UMT5EncoderModel(UMT5Config(vocab_size=6, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    pipe = WanPipeline.from_pretrained(folder, text_encoder=encoder, tokenizer=tokenizer, transformer_2=None)
    pipe.save_pretrained(folder)

    gen = MirageGenerator.from_pretrained(folder, prompt="a red room", num_inference_steps=1)
    embeds = gen.prompt_embeds
    assert embeds.shape == (1, 512, 16)
    assert embeds[0, :3].abs().sum(-1).gt(0).all() and embeds[0, 3:].eq(0).all()  # 3 words, then zero padding
    assert run_chunk(gen, 64).shape == (1, 48, 2, 4, 4)
    empty = MirageGenerator.from_pretrained(folder, num_inference_steps=1)
    assert not torch.equal(run_chunk(empty, 64), run_chunk(gen, 64))


# ---------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("a14b", [False, True], ids=["5b", "a14b"])
def test_lora_save_load_gives_identical_outputs(tmp_path: Path, wan_5b: Path, wan_a14b: Path, a14b: bool) -> None:
    base = wan_a14b if a14b else wan_5b
    size, channels = (32, 16) if a14b else (64, 48)
    gen = MirageGenerator.from_pretrained(base, num_inference_steps=2, voxel_size=0.1, cache_interpolation="bilinear")
    for transformer in (gen.transformer, gen.transformer_2):
        if transformer is not None:
            add_lora(transformer, rank=4, ffn=True)
    randomise_trainables(gen)
    out = gen.save_pretrained(tmp_path / "lora")
    assert (out / LORA_WEIGHTS).is_file() and (out / PATCH_EMBEDDING).is_file()
    assert (out / LORA_WEIGHTS_2).is_file() == a14b
    assert (out / "depth_head" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (out / "transformer").exists()  # only the difference from the base is written

    loaded = MirageGenerator.from_pretrained(base, lora=out, num_inference_steps=2)
    assert loaded.voxel_size == 0.1 and loaded.cache_interpolation == "bilinear"
    for mine, theirs in ((gen.transformer, loaded.transformer), (gen.transformer_2, loaded.transformer_2)):
        if mine is not None:
            assert torch.equal(flow(mine, channels), flow(theirs, channels))
    assert torch.equal(run_chunk(gen, size), run_chunk(loaded, size))
    # The folder alone finds its base through mirage_config.json.
    assert torch.equal(
        run_chunk(MirageGenerator.from_pretrained(out, num_inference_steps=2), size), run_chunk(loaded, size)
    )
    # The LoRA file is in diffusers' format: the stock Wan pipeline loads it too.
    pipe = WanPipeline.from_pretrained(
        base, text_encoder=None, tokenizer=None, **({} if a14b else {"transformer_2": None})
    )
    pipe.load_lora_weights(out, weight_name=LORA_WEIGHTS)
    assert pipe.transformer.peft_config


def test_lora_for_another_base_is_rejected(tmp_path: Path, wan_5b: Path, wan_a14b: Path) -> None:
    gen = MirageGenerator.from_pretrained(wan_5b)
    add_lora(gen.transformer, rank=4)
    lora = gen.save_pretrained(tmp_path / "lora")
    other = wan_folder(tmp_path / "deeper", a14b=False, num_layers=3)
    with pytest.raises(ValueError, match=r"mirage_config\.json.*another transformer.*num_layers: LoRA 2 vs base 3"):
        MirageGenerator.from_pretrained(other, lora=lora)
    with pytest.raises(ValueError, match="without transformer_2"):
        MirageGenerator.from_pretrained(wan_a14b, lora=lora)
    # A corrupt or missing LoRA file is named.
    (lora / LORA_WEIGHTS).write_bytes((lora / LORA_WEIGHTS).read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{LORA_WEIGHTS} is not a valid safetensors file"):
        MirageGenerator.from_pretrained(wan_5b, lora=lora)
    (lora / LORA_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=f"{LORA_WEIGHTS} is missing"):
        MirageGenerator.from_pretrained(wan_5b, lora=lora)


# ---------------------------------------------------------------------- Mirage full folders


def test_full_model_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = VideoVAE(
        AutoencoderTiny(
            encoder_block_out_channels=(8,) * 4,
            decoder_block_out_channels=(8,) * 4,
            num_encoder_blocks=(1,) * 4,
            num_decoder_blocks=(1,) * 4,
            latent_channels=4,
        )
    )
    transformer = build_transformer(
        4, num_layers=2, num_attention_heads=2, attention_head_dim=8, text_dim=16, freq_dim=16
    )
    with torch.no_grad():
        transformer.patch_embedding.weight[:, 4:].normal_()
    head = DepthHead(latent_channels=4, spatial_factor=8, hidden_channels=8, num_blocks=1)
    gen = MirageGenerator(
        transformer,
        vae,
        head,
        FlowMatchEulerDiscreteScheduler(shift=2.0),
        memory="none",
        num_inference_steps=3,
        shift=4.0,
        anchor_depth=True,
        filter_history=6,
        cache_footprint=3,
    ).eval()
    folder = gen.save_pretrained(tmp_path / "tiny")
    config = json.loads((folder / MIRAGE_CONFIG).read_text())
    assert config["format"] == "mirage" and config["vae_class"] == "AutoencoderTiny"
    assert all(p.suffix != ".bin" for p in folder.rglob("*"))  # safetensors only
    loaded = MirageGenerator.from_pretrained(folder)
    assert loaded.memory == "none" and loaded.num_inference_steps == 3 and loaded.scheduler.config.shift == 4.0
    assert loaded.anchor_depth is True and loaded.filter_history == 6 and loaded.cache_footprint == 3
    saved, restored = gen.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    # Same weights bit for bit; outputs agree up to BLAS rounding (freshly loaded storage may take other kernels).
    torch.testing.assert_close(run_chunk(gen, 32, frames=4), run_chunk(loaded, 32, frames=4), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- errors


def test_missing_and_corrupt_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MirageGenerator.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither mirage_config.json nor model_index.json"):
        MirageGenerator.from_pretrained(tmp_path / "empty")
    folder = wan_folder(tmp_path / "wan", a14b=False)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(ValueError, match=r"transformer/diffusion_pytorch_model\.safetensors is not a valid"):
        MirageGenerator.from_pretrained(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights in .*transformer"):
        MirageGenerator.from_pretrained(folder)
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="model_index.json is not valid JSON"):
        MirageGenerator.from_pretrained(folder)


def test_wrong_channel_counts_are_named(tmp_path: Path) -> None:
    folder = wan_folder(tmp_path / "wan", a14b=False, vae_z=16)  # a 48-channel transformer over a z=16 VAE
    message = r"transformer/config\.json: .*48-channel latents but the VAE has z=16 \(.*vae/config\.json\)"
    with pytest.raises(ValueError, match=message):
        MirageGenerator.from_pretrained(folder)
    # A Mirage folder whose transformer does not follow the widened layout.
    good = wan_folder(tmp_path / "wan_ok", a14b=False)
    gen = MirageGenerator.from_pretrained(good)
    gen.base_model_path = None  # save it as a full model
    full = gen.save_pretrained(tmp_path / "full")
    config_file = full / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["in_channels"] = 60
    config_file.write_text(json.dumps(config))
    message = (r"full/transformer/config\.json does not match .*"
               r"patch_embedding\.weight is \[16, 103, 1, 2, 2\] in the weights")
    with pytest.raises(ValueError, match=message):
        MirageGenerator.from_pretrained(full)


# ---------------------------------------------------------------------- broken Mirage folders name their file


def _edit_json(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _tiny_mirage_folder(tmp_path: Path) -> Path:
    from tiny_generator import save_tiny_generator

    return save_tiny_generator(tmp_path / "tiny")


def _one_more_layer(folder: Path) -> None:
    path = folder / "transformer" / "config.json"
    _edit_json(path, num_layers=json.loads(path.read_text())["num_layers"] + 1)


def _one_layer_less(folder: Path) -> None:
    path = folder / "transformer" / "config.json"
    _edit_json(path, num_layers=json.loads(path.read_text())["num_layers"] - 1)


def _weights_of(component: str, into: str):
    def swap(folder: Path) -> None:
        weights = "diffusion_pytorch_model.safetensors"
        (folder / into / weights).write_bytes((folder / component / weights).read_bytes())
    return swap


@pytest.mark.parametrize(("name", "damage", "message"), [
    ("one more layer", _one_more_layer,
     r"transformer/config\.json does not match .*transformer/diffusion_pytorch_model\.safetensors: 27 tensor\(s\) the "
     r"config needs are not in the weights \(e\.g\. \['blocks\.1\."),
    ("one layer less", _one_layer_less,
     r"transformer/config\.json does not match .*: 27 tensor\(s\) in the weights are not in the config's model"),
    ("depth head weights as the transformer's", _weights_of("depth_head", "transformer"),
     r"transformer/config\.json does not match .*transformer/diffusion_pytorch_model\.safetensors: .*another "
     r"component's weights"),
    ("depth head weights as the VAE's", _weights_of("depth_head", "vae"),
     r"vae/config\.json does not match .*vae/diffusion_pytorch_model\.safetensors"),
    ("a wider depth head", lambda f: _edit_json(f / "depth_head" / "config.json", hidden_channels=16),
     r"depth_head/config\.json does not match .*conv_in\.bias is \[8\] in the weights, \[16\] by the config"),
    ("cache_capacity 'x'", lambda f: _edit_json(f / "mirage_config.json", cache_capacity="x"),
     r"mirage_config\.json: 'cache_capacity' must be an integer >= 1 \(voxels\), got \"x\""),
    ("cache_capacity 0", lambda f: _edit_json(f / "mirage_config.json", cache_capacity=0),
     r"mirage_config\.json: 'cache_capacity' must be an integer >= 1"),
    ("voxel_size -1", lambda f: _edit_json(f / "mirage_config.json", voxel_size=-1),
     r"mirage_config\.json: 'voxel_size' must be a number > 0"),
    ("cache_interpolation 'cubic'", lambda f: _edit_json(f / "mirage_config.json", cache_interpolation="cubic"),
     r"mirage_config\.json: 'cache_interpolation' must be one of 'nearest', 'bilinear', got \"cubic\""),
    ("cache_guidance 2", lambda f: _edit_json(f / "mirage_config.json", cache_guidance=2),
     r"mirage_config\.json: 'cache_guidance' must be a number in \[0, 1\]"),
    ("num_inference_steps 2.5", lambda f: _edit_json(f / "mirage_config.json", num_inference_steps=2.5),
     r"mirage_config\.json: 'num_inference_steps' must be an integer >= 1, got 2\.5"),
    ("memory 'voxels'", lambda f: _edit_json(f / "mirage_config.json", memory="voxels"),
     r"mirage_config\.json: 'memory' must be one of"),
    ("rewrite_cached 'yes'", lambda f: _edit_json(f / "mirage_config.json", rewrite_cached="yes"),
     r"mirage_config\.json: 'rewrite_cached' must be true or false"),
    ("observed_margin -0.1", lambda f: _edit_json(f / "mirage_config.json", observed_margin=-0.1),
     r"mirage_config\.json: 'observed_margin' must be null or a number >= 0, got -0\.1"),
    ("anchor_depth 1", lambda f: _edit_json(f / "mirage_config.json", anchor_depth=1),
     r"mirage_config\.json: 'anchor_depth' must be true or false, got 1"),
    ("cache_footprint 0", lambda f: _edit_json(f / "mirage_config.json", cache_footprint=0),
     r"mirage_config\.json: 'cache_footprint' must be an integer >= 1 \(cells\), got 0"),
    ("filter_history -1", lambda f: _edit_json(f / "mirage_config.json", filter_history=-1),
     r"mirage_config\.json: 'filter_history' must be an integer >= 0 \(frames\), got -1"),
    ("boundary_ratio without transformer_2", lambda f: _edit_json(f / "mirage_config.json", boundary_ratio=0.5),
     r"mirage_config\.json: 'boundary_ratio' must be set exactly when the folder has transformer_2/"),
    ("num_layers 'two'", lambda f: _edit_json(f / "transformer" / "config.json", num_layers="two"),
     r"transformer/config\.json: 'num_layers' must be an integer \(as 40\), got \"two\""),
    ("patch_size a number", lambda f: _edit_json(f / "transformer" / "config.json", patch_size=2),
     r"transformer/config\.json: 'patch_size' must be a list"),
    ("hidden_channels 'x'", lambda f: _edit_json(f / "depth_head" / "config.json", hidden_channels="x"),
     r"depth_head/config\.json: 'hidden_channels' must be an integer"),
    ("scheduler shift 'x'", lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", shift="x"),
     r"scheduler/scheduler_config\.json: 'shift' must be a number"),
    ("scheduler class 7", lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", _class_name=7),
     r"scheduler/scheduler_config\.json: scheduler 7 is not one of"),
])
def test_a_broken_mirage_folder_is_a_value_error_naming_file_and_key(tmp_path: Path, name, damage, message) -> None:
    folder = _tiny_mirage_folder(tmp_path)
    damage(folder)
    with pytest.raises(ValueError, match=message):
        MirageGenerator.from_pretrained(folder)


def test_the_tiny_folder_itself_loads(tmp_path: Path) -> None:
    """The damaged folders above differ from a folder that loads only by their damage."""
    assert MirageGenerator.from_pretrained(_tiny_mirage_folder(tmp_path)).cache_capacity == 4000
