"""Convert OpenAI guided-diffusion (ADM) checkpoints into local diffusers folders for ``ddpm`` / ``ddim``.

Paper: Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis",
NeurIPS 2021 (the ADM architecture, code ``openai/guided-diffusion``). Laousy et
al. (MICCAI 2023) and Carlini et al. (ICLR 2023) denoise with its unconditional
256x256 model: learned sigma, 1000 linear-beta steps, flags ``--attention_resolutions
32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True
--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2
--resblock_updown True --use_fp16 True --use_scale_shift_norm True`` (the defaults of
:class:`ADMConfig`).

What the conversion does (:func:`convert_state_dict`, :func:`convert_guided_diffusion`):

* **Input**: a ``.pt`` state dict read with ``torch.load(weights_only=True)``; a
  file that needs arbitrary unpickling, or holds anything but ``{name: tensor}``,
  is refused. fp16 weights (``use_fp16`` only changes the run-time dtype; the
  released files are fp32) are stored as fp32.
* **Complete key map**: every ADM key is consumed exactly once and every key of
  the diffusers ``UNet2DModel`` is produced exactly once; otherwise a ValueError
  lists the missing and the unused keys (a class-conditional checkpoint's
  ``label_emb.weight``, for instance).
* **Learned sigma**: with ``learn_sigma`` the final conv has ``2C`` outputs: the
  first ``C`` are the noise prediction epsilon, the last ``C`` the interpolation
  ``v`` of the learned variance (Nichol & Dhariwal 2021, eq. 15), which one-shot
  and DDIM denoising never use. A convolution's output channel ``k`` depends only
  on row ``k`` of its weight and bias, so keeping rows ``0..C-1`` of
  ``out.2.weight`` / ``out.2.bias`` gives a model whose output IS the first ``C``
  channels of ADM's output, exactly. The scheduler gets ``variance_type="fixed_small"``.
* **Timesteps**: ADM's ``timestep_embedding(t, dim)`` is ``[cos(t f_i), sin(t f_i)]``
  with ``f_i = exp(-ln(10000) i / (dim/2))``, i = 0..dim/2-1; diffusers'
  ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`` computes the
  same frequencies (``/(half - shift)``) and, flipped, the same ``[cos, sin]`` order:
  the config sets ``flip_sin_to_cos=True, freq_shift=0``. ADM is called with the
  integer timestep index (``rescale_timesteps=False``), like diffusers' DDPMScheduler.
* **Schedule**: guided-diffusion's linear betas ``linspace(1e-4 s, 0.02 s, T)``,
  ``s = 1000 / T``, (float64) become ``DDPMScheduler(beta_schedule="linear",
  beta_start=1e-4 s, beta_end=0.02 s)`` (float32: ``abar_t`` agrees to about 1e-6
  relative); ``cosine`` becomes ``squaredcos_cap_v2`` (the same
  ``betas_for_alpha_bar`` with ``max_beta = 0.999``).

Architecture correspondence (ADM module -> diffusers ``UNet2DModel``):

* ``input_blocks.0.0`` -> ``conv_in``; ``time_embed.{0,2}`` -> ``time_embedding.linear_{1,2}``.
* Each level: ``num_res_blocks`` ``ResBlock`` (+ ``AttentionBlock`` where the
  resolution is in ``attention_resolutions``) -> ``down_blocks.i.resnets.j``
  (+ ``attentions.j``); the level's downsampler (``ResBlock(down=True)`` with
  ``resblock_updown``, a strided conv ``op`` otherwise) -> ``downsamplers.0``.
  Block types: ``AttnDownBlock2D`` / ``ResnetDownsampleBlock2D`` (``DownBlock2D``
  without resblock_updown), ``downsample_type="resnet"`` (or ``"conv"``); the up
  path mirrors it (``num_res_blocks + 1`` resnets per level, skip concatenation
  ``[h, skip]`` in both).
* ResBlock: ``in_layers.{0,2}`` -> ``norm1``/``conv1``, ``emb_layers.1`` ->
  ``time_emb_proj``, ``out_layers.{0,3}`` -> ``norm2``/``conv2``,
  ``skip_connection`` (1x1) -> ``conv_shortcut``; ``use_scale_shift_norm`` ->
  ``resnet_time_scale_shift="scale_shift"`` (``norm2(h) (1 + scale) + shift``,
  scale first in both); up/down inside the block after ``norm1 + SiLU`` and before
  ``conv1`` (avg-pool 2x2 / nearest x2) in both.
* AttentionBlock: ``norm`` -> ``group_norm``, ``qkv`` (a 1x1 conv of ``3C``
  outputs) -> ``to_q``/``to_k``/``to_v``, ``proj_out`` -> ``to_out.0``; heads of
  ``num_head_channels`` -> ``attention_head_dim``. With the default
  ``use_new_attention_order=False`` (QKVAttentionLegacy) the ``3C`` rows are laid
  out per head ``[head][q|k|v][d]``; with True ``[q|k|v][head][d]``: both are
  reordered. The middle block's attention keeps its GroupNorm
  (``attn_norm_num_groups=32``; diffusers drops it by default for scale-shift
  models). GroupNorm: 32 groups, eps 1e-5, as ADM's ``GroupNorm32`` (which
  computes in float32; identical in fp32).

What diffusers' ``UNet2DModel`` cannot express (refused with a message):
``channel_mult[0] != 1`` (ADM embeds timesteps with ``num_channels`` features and
the first level may be narrower; diffusers ties both to ``block_out_channels[0]``),
a fixed ``num_heads`` (``num_head_channels=-1``) over attention levels of
different widths (diffusers has one head dimension), and ``class_cond`` (the
denoiser is unconditional). ``dropout`` is irrelevant at inference.

Numerically (not structurally) different, within float32 rounding: ADM scales q
and k by ``d^(-1/4)`` each before their product, diffusers scales the product by
``d^(-1/2)`` (scaled-dot-product attention); the schedule is float32 in diffusers,
float64 in guided-diffusion. The tests bound the difference of the whole network
at 1e-4 on a small model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from certframe.files import file_sha256

GROUPS = 32
CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


@dataclass
class ADMConfig:
    """guided-diffusion's ``create_model`` flags (``script_util.py``); defaults: the 256x256 unconditional model."""

    image_size: int = 256
    in_channels: int = 3
    num_channels: int = 256
    num_res_blocks: int = 2
    channel_mult: tuple | None = None  # None: guided-diffusion's choice for image_size
    attention_resolutions: tuple = (32, 16, 8)
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    learn_sigma: bool = True
    class_cond: bool = False
    resblock_updown: bool = True
    use_scale_shift_norm: bool = True
    use_new_attention_order: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    predict_xstart: bool = False
    use_fp16: bool = True  # run-time dtype only: weights are stored as they come

    def mult(self) -> tuple:
        if self.channel_mult:
            return tuple(self.channel_mult)
        if self.image_size not in CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size {self.image_size}; give channel_mult "
                             f"(guided-diffusion knows {sorted(CHANNEL_MULT)})")
        return CHANNEL_MULT[self.image_size]

    def attention_ds(self) -> set[int]:
        """Downsampling factors with attention (``image_size // resolution``, as script_util does)."""
        return {self.image_size // int(r) for r in self.attention_resolutions}

    def heads(self, ch: int, upsample: bool = False) -> int:
        if self.num_head_channels != -1:
            return ch // self.num_head_channels
        return self.num_heads_upsample if upsample and self.num_heads_upsample != -1 else self.num_heads


def _attention_widths(cfg: ADMConfig) -> list[tuple[int, int]]:
    """(channels, heads) of every attention block, down, middle and up."""
    mult, ds_attn = cfg.mult(), cfg.attention_ds()
    out, ds = [], 1
    for level, m in enumerate(mult):
        if ds in ds_attn:
            ch = int(m * cfg.num_channels)
            out.append((ch, cfg.heads(ch)))
        ds *= 2
    top = int(mult[-1] * cfg.num_channels)
    out.append((top, cfg.heads(top)))
    ds //= 2
    for level, m in list(enumerate(mult))[::-1]:
        if ds in ds_attn:
            ch = int(m * cfg.num_channels)
            out.append((ch, cfg.heads(ch, upsample=True)))
        ds //= 2
    return out


def diffusers_config(cfg: ADMConfig) -> dict:
    """The ``UNet2DModel`` config that reproduces ``cfg``'s ADM (ValueError where none can)."""
    mult = cfg.mult()
    if cfg.class_cond:
        raise ValueError("class_cond=True: a class-conditional ADM needs labels at every call; the denoisers "
                         "are unconditional (convert the unconditional model)")
    if mult[0] != 1:
        raise ValueError(f"channel_mult {mult} starts with {mult[0]}, not 1: ADM embeds timesteps with "
                         f"num_channels features while its first level has {mult[0]} x that; diffusers' "
                         f"UNet2DModel ties both to block_out_channels[0] and cannot express it")
    widths = [int(m * cfg.num_channels) for m in mult]
    if any(w % GROUPS for w in widths):
        raise ValueError(f"every level's width must be a multiple of {GROUPS} (ADM's GroupNorm32), got {widths}")
    head_dims = {ch // heads for ch, heads in _attention_widths(cfg)}
    if any(ch % heads for ch, heads in _attention_widths(cfg)) or len(head_dims) != 1:
        raise ValueError(f"attention (channels, heads) {_attention_widths(cfg)} do not share one head dimension; "
                         f"diffusers' UNet2DModel has a single attention_head_dim")
    ds_attn, ds, down = cfg.attention_ds(), 1, []
    for _ in mult:
        plain = "ResnetDownsampleBlock2D" if cfg.resblock_updown else "DownBlock2D"
        down.append("AttnDownBlock2D" if ds in ds_attn else plain)
        ds *= 2
    up = [("AttnUpBlock2D" if d.startswith("Attn") else ("ResnetUpsampleBlock2D" if cfg.resblock_updown
                                                          else "UpBlock2D")) for d in reversed(down)]
    kind = "resnet" if cfg.resblock_updown else "conv"
    out_channels = cfg.in_channels
    return dict(sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=out_channels,
                center_input_sample=False, time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
                down_block_types=tuple(down), up_block_types=tuple(up), mid_block_type="UNetMidBlock2D",
                block_out_channels=tuple(widths), layers_per_block=cfg.num_res_blocks, mid_block_scale_factor=1,
                downsample_padding=1, downsample_type=kind, upsample_type=kind, dropout=0.0, act_fn="silu",
                attention_head_dim=head_dims.pop(), norm_num_groups=GROUPS, attn_norm_num_groups=GROUPS,
                norm_eps=1e-5, add_attention=True,
                resnet_time_scale_shift="scale_shift" if cfg.use_scale_shift_norm else "default")


class _Mapper:
    """Consumes ADM keys, produces diffusers keys; remembers what is missing."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state, self.out, self.used, self.missing = state, {}, set(), []

    def take(self, key: str):
        if key not in self.state:
            self.missing.append(key)
            return None
        self.used.add(key)
        return self.state[key]

    def put(self, key: str, value) -> None:
        if value is not None:
            self.out[key] = value.detach().to(torch.float32).contiguous()

    def pair(self, old: str, new: str) -> None:
        for p in ("weight", "bias"):
            self.put(f"{new}.{p}", self.take(f"{old}.{p}"))

    def resnet(self, old: str, new: str, has_skip: bool) -> None:
        for a, b in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                     ("out_layers.0", "norm2"), ("out_layers.3", "conv2")):
            self.pair(f"{old}.{a}", f"{new}.{b}")
        if has_skip:
            self.pair(f"{old}.skip_connection", f"{new}.conv_shortcut")

    def attention(self, old: str, new: str, heads: int, legacy: bool) -> None:
        self.pair(f"{old}.norm", f"{new}.group_norm")
        for p in ("weight", "bias"):
            qkv = self.take(f"{old}.qkv.{p}")
            if qkv is not None:
                c = qkv.shape[0] // 3
                rows = qkv.reshape(3 * c, -1)
                # legacy: rows [head][q|k|v][d]; new order: [q|k|v][head][d]
                split = (rows.reshape(heads, 3, c // heads, -1).transpose(0, 1) if legacy
                         else rows.reshape(3, heads, c // heads, -1)).reshape(3, c, -1)
                for i, name in enumerate(("to_q", "to_k", "to_v")):
                    self.put(f"{new}.{name}.{p}", split[i].squeeze(-1) if p == "bias" else split[i])
            proj = self.take(f"{old}.proj_out.{p}")
            self.put(f"{new}.to_out.0.{p}", proj.reshape(proj.shape[0], -1).squeeze(-1) if proj is not None
                     else None)


def convert_state_dict(state: dict[str, torch.Tensor], cfg: ADMConfig) -> dict[str, torch.Tensor]:
    """ADM state dict -> ``UNet2DModel`` state dict for :func:`diffusers_config` (see the module docstring).

    Raises ValueError listing the ADM keys the map needed but did not find and the
    keys it left unused, when either set is non-empty.
    """
    mult, ds_attn, legacy = cfg.mult(), cfg.attention_ds(), not cfg.use_new_attention_order
    m = _Mapper(state)
    m.pair("time_embed.0", "time_embedding.linear_1")
    m.pair("time_embed.2", "time_embedding.linear_2")
    m.pair("input_blocks.0.0", "conv_in")
    ch = int(mult[0] * cfg.num_channels)
    chans, layer, ds = [ch], 1, 1
    for level, mu in enumerate(mult):
        out = int(mu * cfg.num_channels)
        for j in range(cfg.num_res_blocks):
            m.resnet(f"input_blocks.{layer}.0", f"down_blocks.{level}.resnets.{j}", has_skip=ch != out)
            ch = out
            if ds in ds_attn:
                m.attention(f"input_blocks.{layer}.1", f"down_blocks.{level}.attentions.{j}", cfg.heads(ch), legacy)
            chans.append(ch)
            layer += 1
        if level != len(mult) - 1:
            if cfg.resblock_updown:
                m.resnet(f"input_blocks.{layer}.0", f"down_blocks.{level}.downsamplers.0", has_skip=False)
            else:
                m.pair(f"input_blocks.{layer}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            chans.append(ch)
            layer += 1
            ds *= 2
    m.resnet("middle_block.0", "mid_block.resnets.0", has_skip=False)
    m.attention("middle_block.1", "mid_block.attentions.0", cfg.heads(ch), legacy)
    m.resnet("middle_block.2", "mid_block.resnets.1", has_skip=False)
    layer = 0
    for i, (level, mu) in enumerate(list(enumerate(mult))[::-1]):
        out = int(mu * cfg.num_channels)
        for j in range(cfg.num_res_blocks + 1):
            skip = chans.pop()
            m.resnet(f"output_blocks.{layer}.0", f"up_blocks.{i}.resnets.{j}", has_skip=ch + skip != out)
            ch, sub = out, 1
            if ds in ds_attn:
                m.attention(f"output_blocks.{layer}.1", f"up_blocks.{i}.attentions.{j}",
                            cfg.heads(ch, upsample=True), legacy)
                sub = 2
            if level and j == cfg.num_res_blocks:
                if cfg.resblock_updown:
                    m.resnet(f"output_blocks.{layer}.{sub}", f"up_blocks.{i}.upsamplers.0", has_skip=False)
                else:
                    m.pair(f"output_blocks.{layer}.{sub}.conv", f"up_blocks.{i}.upsamplers.0.conv")
                ds //= 2
            layer += 1
    m.pair("out.0", "conv_norm_out")
    c = cfg.in_channels
    for p in ("weight", "bias"):
        w = m.take(f"out.2.{p}")
        if w is not None:
            expected = 2 * c if cfg.learn_sigma else c
            if w.shape[0] != expected:
                raise ValueError(f"out.2.{p} has {w.shape[0]} output channels; learn_sigma={cfg.learn_sigma} with "
                                 f"{c} image channels expects {expected}")
            m.put(f"conv_out.{p}", w[:c])  # the first C channels: epsilon (see the module docstring)
    unused = sorted(set(state) - m.used)
    if m.missing or unused:
        raise ValueError(f"the ADM key map is incomplete for this checkpoint and flags {cfg_summary(cfg)}: "
                         f"{len(m.missing)} missing {m.missing[:20]}{' ...' if len(m.missing) > 20 else ''}, "
                         f"{len(unused)} unused {unused[:20]}{' ...' if len(unused) > 20 else ''}; check the flags "
                         f"(image_size, num_channels, num_res_blocks, attention_resolutions, resblock_updown, "
                         f"learn_sigma, class_cond)")
    return m.out


def cfg_summary(cfg: ADMConfig) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(cfg).items())


def _load_detail(err: Exception) -> str:
    """What torch.load's error says about the file, without its advice to unpickle (never followed here)."""
    import re

    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if found:                               # a pickle of some class: name the class, nothing more
        return f"it pickles a {found.group(1)} object"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    advice = ("weights_only" in first or "arbitrary code" in first or "Weights only load failed" in first)
    return "" if advice else first[:200]


def load_adm_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` from a guided-diffusion ``.pt`` with ``torch.load(weights_only=True)``; refuses the rest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        if path.suffix == ".safetensors":   # safetensors' own reader: torch.load would try to unpickle it
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (not a zip / pickle), EOFError, SafetensorError
        expected = "expected the state dict {name: tensor} of a guided-diffusion model"
        if path.suffix == ".safetensors" or type(err).__name__ == "SafetensorError":
            said = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{str(path)!r} is not a readable safetensors file (safetensors said: {said}); "
                             f"{expected} (.pt or .safetensors)") from None
        detail = _load_detail(err)
        raise ValueError(f"{str(path)!r} cannot be read as a state dict of tensors ({type(err).__name__}"
                         f"{': ' + detail if detail else ''}); {expected} (.pt written by "
                         f"torch.save(model.state_dict()), or .safetensors); certframe reads it with "
                         f"torch.load(weights_only=True) and never unpickles other objects") from None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, expected a state dict {{name: tensor}}")
    bad = sorted(k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v))
    if bad:
        raise ValueError(f"{str(path)!r} is not a flat state dict of tensors: entries {bad[:10]} are not tensors "
                         f"(a training checkpoint? extract the model's state_dict first)")
    return state


def build_scheduler(cfg: ADMConfig):
    """guided-diffusion's schedule as a ``DDPMScheduler`` (see the module docstring)."""
    from diffusers import DDPMScheduler

    if cfg.noise_schedule == "linear":
        scale = 1000 / cfg.diffusion_steps
        kw = dict(beta_schedule="linear", beta_start=1e-4 * scale, beta_end=0.02 * scale)
    elif cfg.noise_schedule == "cosine":
        kw = dict(beta_schedule="squaredcos_cap_v2")
    else:
        raise ValueError(f"noise_schedule must be linear or cosine, got {cfg.noise_schedule!r}")
    return DDPMScheduler(num_train_timesteps=cfg.diffusion_steps, prediction_type="sample" if cfg.predict_xstart
                         else "epsilon", clip_sample=True, variance_type="fixed_small", **kw)


def convert_guided_diffusion(checkpoint: str | Path, output: str | Path, config: ADMConfig | dict | None = None,
                             *, overwrite: bool = False) -> Path:
    """Write a diffusers ``DDPMPipeline`` folder (safetensors) for a guided-diffusion checkpoint.

    The folder loads with ``--denoiser ddpm --denoiser-option model=OUTPUT``; its
    ``certframe.json`` records the source file (absolute path, sha256), the flags
    and the learned-sigma split, and no trained range (the released models are
    trained on all timesteps). Validate it with ``certframe evaluate denoiser``
    (docs/diffusion.md).
    """
    from diffusers import UNet2DModel

    from .ddpm_training import save_diffusion_folder

    cfg = config if isinstance(config, ADMConfig) else ADMConfig(**(config or {}))
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{str(output)!r} exists; choose another folder or overwrite it")
    unet_config = diffusers_config(cfg)  # refuses what diffusers cannot express, before reading 2 GB
    state = load_adm_checkpoint(checkpoint)
    converted = convert_state_dict(state, cfg)
    unet = UNet2DModel(**unet_config)
    expected = unet.state_dict()
    missing, extra = sorted(set(expected) - set(converted)), sorted(set(converted) - set(expected))
    shapes = [f"{k}: {tuple(converted[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in converted and converted[k].shape != v.shape]
    if missing or extra or shapes:
        raise ValueError(f"the converted weights do not fit UNet2DModel({unet_config}): not produced {missing[:20]}, "
                         f"not expected {extra[:20]}, shape mismatches {shapes[:10]}; check the flags")
    unet.load_state_dict(converted, strict=True)
    flags = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    info = {"converted_from": {"format": "guided-diffusion", "file": str(Path(checkpoint).resolve()),
                               "sha256": file_sha256(checkpoint, prefix=""),  # the bare hex digest
                               "flags": flags},
            "learned_sigma": ("the checkpoint's last conv had 2C outputs (epsilon, variance); only the first C "
                              "(epsilon) are kept" if cfg.learn_sigma else "none"),
            "trained_range": "not recorded: assumed trained on all timesteps"}
    save_diffusion_folder(output, unet.eval(), build_scheduler(cfg), info)
    return output


__all__ = ["ADMConfig", "convert_guided_diffusion", "convert_state_dict", "diffusers_config", "load_adm_checkpoint"]
