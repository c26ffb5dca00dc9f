"""Diffusion pipelines with random weights, built from their configurations (no hub, no download),
for `jouletrace serve diffusion --pipeline benchmarks/diffusion_models.py:NAME`.

- `sd35_medium`: Stable Diffusion 3.5 Medium's shapes: the 2.5B MMDiT (24 layers, hidden 1536,
  dual attention in layers 0-12, RMS QK norm), its 16-channel VAE, CLIP-L, CLIP-G and T5-XXL.
- `cogvideox_2b`: CogVideoX-2b's shapes: the 30-layer 3D transformer (30 heads of 64), its causal
  3D VAE (4x in time, 8x in space) and T5-XXL; the VAE decodes one video at a time (slicing).
- `cogvideox_5b_i2v`: CogVideoX-5b-I2V's shapes, image-to-video: the 42-layer 3D transformer (48
  heads of 64) taking the noise and the image's latents (32 channels in), rotary and learned
  positional embeddings (so 720x480 only, as the published model), its VAE (scaling 0.7) encoding
  the image and decoding the video one at a time, and T5-XXL.
- `wan21_t2v_1_3b`: Wan2.1-T2V-1.3B's shapes: the 30-layer DiT (12 heads of 128, FFN 8960, (1, 2, 2)
  patches, RoPE, cross-attention to the text), its causal 3D VAE (4x in time, 8x in space, decoding
  one video at a time), umT5-XXL (512 tokens), UniPC flow-matching steps (shift 3, its 480p setting).
- `tiny_image`, `tiny_video`, `tiny_i2v`: the same pipelines a few channels wide, for the CPU test.

Tokenizers are word-level over `t0 t1 ...` (any other word is the unknown token): the compute per
prompt is the padded length the pipeline asks for (77 CLIP, 256 or 226 T5 tokens), as with the real
ones. Random weights make noise images; the arithmetic is the model's."""

from __future__ import annotations

SD35_MEDIUM = dict(
    transformer=dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                     attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                     caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                     dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
    vae=dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             layers_per_block=2, norm_num_groups=32, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
             use_quant_conv=False, use_post_quant_conv=False),
    clip_l=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                projection_dim=768, vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu"),
    clip_g=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                projection_dim=1280, vocab_size=49408, max_position_embeddings=77, hidden_act="gelu"),
    t5=dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
            feed_forward_proj="gated-gelu"),
)
TINY_IMAGE = dict(
    transformer=dict(sample_size=32, patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
                     num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
                     pooled_projection_dim=64, pos_embed_max_size=64, dual_attention_layers=(0,), qk_norm="rms_norm"),
    vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4,), layers_per_block=1,
             down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), norm_num_groups=1,
             sample_size=32, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
             use_post_quant_conv=False),
    clip_l=dict(hidden_size=16, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, projection_dim=32,
                vocab_size=1000, max_position_embeddings=77, bos_token_id=0, eos_token_id=1),
    clip_g=dict(hidden_size=16, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, projection_dim=32,
                vocab_size=1000, max_position_embeddings=77, bos_token_id=0, eos_token_id=1),
    t5=dict(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, vocab_size=1000),
)
COGVIDEOX_2B = dict(
    transformer=dict(num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16,
                     time_embed_dim=512, text_embed_dim=4096, num_layers=30, sample_width=90, sample_height=60,
                     sample_frames=49, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
                     use_rotary_positional_embeddings=False),
    vae=dict(latent_channels=16, scaling_factor=1.15258426),
    t5=SD35_MEDIUM["t5"],
)
COGVIDEOX_5B_I2V = dict(
    transformer=dict(num_attention_heads=48, attention_head_dim=64, in_channels=32, out_channels=16,
                     time_embed_dim=512, text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60,
                     sample_frames=49, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
                     use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    vae=dict(latent_channels=16, scaling_factor=0.7),
    t5=SD35_MEDIUM["t5"],
)
WAN21_T2V_1_3B = dict(
    transformer=dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                     out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                     qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
    vae=dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]),
    umt5=dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=256384,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32),
)
TINY_VIDEO = dict(
    transformer=dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
                     text_embed_dim=32, num_layers=1, sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
                     temporal_compression_ratio=4, max_text_seq_length=226),
    vae=dict(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
             up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
             layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4),
    t5=TINY_IMAGE["t5"],
)
TINY_I2V = dict(TINY_VIDEO, transformer=dict(TINY_VIDEO["transformer"], in_channels=8))  # noise + image latents


def tokenizer(vocab_size: int, max_length: int):
    """A word-level tokenizer over `t0 ... t{vocab_size - 3}`, padding with id 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, **{f"t{i}": i + 2 for i in range(vocab_size - 2)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   model_max_length=max_length)


def _built(cls, device, dtype, **config):
    """`cls(**config)` on `device` in `dtype`, its `_keep_in_fp32_modules` in float32 as
    `from_pretrained` leaves them (Wan's norms, RoPE and time embedder)."""
    import torch

    with torch.device(device):
        model = cls(**config).to(dtype).eval()
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.to(torch.float32)
    return model


def _t5(dims, device, dtype):
    from transformers import T5Config, T5EncoderModel

    return _built(T5EncoderModel, device, dtype, config=T5Config(**dims))


def _sd3(dims: dict, device, dtype):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    clip = {k: _built(CLIPTextModelWithProjection, device, dtype, config=CLIPTextConfig(**dims[k]))
            for k in ("clip_l", "clip_g")}
    return StableDiffusion3Pipeline(
        transformer=_built(SD3Transformer2DModel, device, dtype, **dims["transformer"]),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_built(AutoencoderKL, device, dtype, **dims["vae"]),
        text_encoder=clip["clip_l"], tokenizer=tokenizer(dims["clip_l"]["vocab_size"], 77),
        text_encoder_2=clip["clip_g"], tokenizer_2=tokenizer(dims["clip_g"]["vocab_size"], 77),
        text_encoder_3=_t5(dims["t5"], device, dtype), tokenizer_3=tokenizer(dims["t5"]["vocab_size"], 256))


def _cogvideox(dims: dict, device, dtype, image: bool = False):
    """CogVideoX's text-to-video pipeline, or its image-to-video one (`image`)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    vae = _built(AutoencoderKLCogVideoX, device, dtype, **dims["vae"])
    vae.enable_slicing()
    scheduler = CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       snr_shift_scale=3.0, timestep_spacing="trailing", set_alpha_to_one=True,
                                       clip_sample=False)
    cls = CogVideoXImageToVideoPipeline if image else CogVideoXPipeline
    return cls(tokenizer=tokenizer(dims["t5"]["vocab_size"], 226), text_encoder=_t5(dims["t5"], device, dtype),
               vae=vae, transformer=_built(CogVideoXTransformer3DModel, device, dtype, **dims["transformer"]),
               scheduler=scheduler)


def _wan(dims: dict, device, dtype):
    """Wan2.1's text-to-video pipeline."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    vae = _built(AutoencoderKLWan, device, dtype, **dims["vae"])
    vae.enable_slicing()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    return WanPipeline(tokenizer=tokenizer(dims["umt5"]["vocab_size"], 512),
                       text_encoder=_built(UMT5EncoderModel, device, dtype, config=UMT5Config(**dims["umt5"])),
                       vae=vae, transformer=_built(WanTransformer3DModel, device, dtype, **dims["transformer"]),
                       scheduler=scheduler)


def sd35_medium(device, dtype):
    return _sd3(SD35_MEDIUM, device, dtype)


def cogvideox_2b(device, dtype):
    return _cogvideox(COGVIDEOX_2B, device, dtype)


def cogvideox_5b_i2v(device, dtype):
    return _cogvideox(COGVIDEOX_5B_I2V, device, dtype, image=True)


def wan21_t2v_1_3b(device, dtype):
    return _wan(WAN21_T2V_1_3B, device, dtype)


def tiny_image(device, dtype):
    return _sd3(TINY_IMAGE, device, dtype)


def tiny_video(device, dtype):
    return _cogvideox(TINY_VIDEO, device, dtype)


def tiny_i2v(device, dtype):
    return _cogvideox(TINY_I2V, device, dtype, image=True)
