"""`certframe convert guided-diffusion`: a small randomly initialised ADM, converted, must compute the same thing.

The reference below re-expresses openai/guided-diffusion's ``guided_diffusion/unet.py``
(UNetModel, ResBlock, AttentionBlock with QKVAttentionLegacy / QKVAttention,
Downsample, Upsample, timestep_embedding) at small widths: it produces an
ADM-layout state dict with ADM's exact key names and a reference forward pass.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

from certframe.plugins.denoisers.guided_diffusion import (
    ADMConfig,
    convert_guided_diffusion,
    convert_state_dict,
    diffusers_config,
    load_adm_checkpoint,
)


# ------------------------------------------------------- the ADM reference
def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def norm(ch):
    return nn.GroupNorm(32, ch)


class Sequential(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Up(nn.Module):
    def __init__(self, ch, use_conv):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Down(nn.Module):
    def __init__(self, ch, use_conv):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, out_ch, scale_shift, up=False, down=False):
        super().__init__()
        self.in_layers = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.updown = up or down
        self.h_upd = self.x_upd = (Up(ch, False) if up else Down(ch, False) if down else nn.Identity())
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch))
        self.out_layers = nn.Sequential(norm(out_ch), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)
        self.scale_shift = scale_shift

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb)[..., None, None]
        if self.scale_shift:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch, heads, new_order):
        super().__init__()
        self.norm = norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)
        self.heads, self.new_order = heads, new_order

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        bs, width, length = qkv.shape
        ch = width // (3 * self.heads)
        if self.new_order:  # QKVAttention
            q, k, v = (t.reshape(bs * self.heads, ch, length) for t in qkv.chunk(3, dim=1))
        else:  # QKVAttentionLegacy
            q, k, v = qkv.reshape(bs * self.heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
        h = torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class ADM(nn.Module):
    """guided-diffusion's UNetModel for a :class:`ADMConfig` (dims 2, no class conditioning)."""

    def __init__(self, cfg: ADMConfig):
        super().__init__()
        mc, mult, attn = cfg.num_channels, cfg.mult(), cfg.attention_ds()
        out_channels = cfg.in_channels * (2 if cfg.learn_sigma else 1)
        emb = mc * 4
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([Sequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        ss, ud, new = cfg.use_scale_shift_norm, cfg.resblock_updown, cfg.use_new_attention_order
        for level, m in enumerate(mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb, int(m * mc), ss)]
                ch = int(m * mc)
                if ds in attn:
                    layers.append(AttentionBlock(ch, cfg.heads(ch), new))
                self.input_blocks.append(Sequential(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(Sequential(ResBlock(ch, emb, ch, ss, down=True) if ud else Down(ch, True)))
                chans.append(ch)
                ds *= 2
        self.middle_block = Sequential(ResBlock(ch, emb, ch, ss), AttentionBlock(ch, cfg.heads(ch), new),
                                       ResBlock(ch, emb, ch, ss))
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb, int(mc * m), ss)]
                ch = int(mc * m)
                if ds in attn:
                    layers.append(AttentionBlock(ch, cfg.heads(ch, upsample=True), new))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb, ch, ss, up=True) if ud else Up(ch, True))
                    ds //= 2
                self.output_blocks.append(Sequential(*layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x, t):
        emb = self.time_embed(timestep_embedding(t, self.mc))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def random_adm(cfg: ADMConfig, seed=0) -> ADM:
    """Random weights everywhere (ADM zero-initialises some convs; a test must not lean on zeros)."""
    torch.manual_seed(seed)
    model = ADM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # GroupNorm scales
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 / math.sqrt(max(1, p[0].numel()))) if p.dim() > 1
                        else 0.1 * torch.randn_like(p))
    return model


TINY = dict(image_size=16, in_channels=3, num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
            attention_resolutions=(8,), num_head_channels=16)  # attention at 8x8 (ds 2): 64 channels, 4 heads
VARIANTS = {
    "paper-flags": ADMConfig(**TINY),  # learn_sigma, resblock_updown, scale-shift norm, legacy attention
    "conv-resample": ADMConfig(**{**TINY, "num_head_channels": -1, "num_heads": 2}, resblock_updown=False,
                               use_scale_shift_norm=False, use_new_attention_order=True, learn_sigma=False),
}


def diffusers_model(cfg, state):
    from diffusers import UNet2DModel

    unet = UNet2DModel(**diffusers_config(cfg)).eval()
    unet.load_state_dict(convert_state_dict(state, cfg), strict=True)
    return unet


# -------------------------------------------------------------------- tests
def test_timestep_conventions_agree():
    from diffusers.models.embeddings import Timesteps

    t = torch.tensor([0, 1, 17, 258, 999])
    ours = Timesteps(64, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    assert torch.equal(ours, timestep_embedding(t, 64))
    # the other settings give something else: the config must be exactly these
    assert not torch.allclose(Timesteps(64, flip_sin_to_cos=False, downscale_freq_shift=0)(t), ours)
    assert not torch.allclose(Timesteps(64, flip_sin_to_cos=True, downscale_freq_shift=1)(t), ours)
    config = diffusers_config(ADMConfig())
    assert (config["flip_sin_to_cos"], config["freq_shift"]) == (True, 0)


def test_the_paper_model_config():
    config = diffusers_config(ADMConfig())  # the 256x256 unconditional model's flags
    assert config["block_out_channels"] == (256, 256, 512, 512, 1024, 1024)
    assert config["down_block_types"] == ("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3
    assert config["up_block_types"] == ("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3
    assert (config["attention_head_dim"], config["layers_per_block"], config["resnet_time_scale_shift"]) == (
        64, 2, "scale_shift")
    assert (config["downsample_type"], config["upsample_type"], config["out_channels"]) == ("resnet", "resnet", 3)
    assert config["attn_norm_num_groups"] == 32  # the middle attention keeps ADM's GroupNorm


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_converted_model_computes_the_reference_forward(variant):
    cfg = VARIANTS[variant]
    adm = random_adm(cfg)
    state = adm.state_dict()
    converted = convert_state_dict(state, cfg)  # raises if any key is missing or unused
    unet = diffusers_model(cfg, state)
    assert set(converted) == set(unet.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        ref = adm(x, t)
        out = unet(x, t).sample
    c = cfg.in_channels
    assert ref.shape == (2, 2 * c if cfg.learn_sigma else c, 16, 16) and out.shape == (2, c, 16, 16)
    torch.testing.assert_close(out, ref[:, :c], rtol=1e-4, atol=1e-4)
    assert ref[:, :c].abs().mean() > 0.1  # not a trivially small output
    if cfg.learn_sigma:  # the dropped channels are the variance ones, not the noise prediction
        assert not torch.allclose(out, ref[:, c:], atol=1e-2)


def test_head_layout_matters():
    """Control: reading the legacy [head][q|k|v] rows as [q|k|v][head] changes the output."""
    cfg = VARIANTS["paper-flags"]
    adm = random_adm(cfg)
    wrong = ADMConfig(**{**TINY, "use_new_attention_order": True})
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([100])
    with torch.no_grad():
        ref = adm(x, t)[:, :3]
        bad = diffusers_model(wrong, adm.state_dict())(x, t).sample
    assert not torch.allclose(bad, ref, atol=1e-3)


def test_incomplete_key_maps_are_listed():
    cfg = VARIANTS["paper-flags"]
    state = random_adm(cfg).state_dict()
    gone = dict(state)
    del gone["middle_block.1.qkv.weight"]
    with pytest.raises(ValueError, match=r"1 missing \['middle_block.1.qkv.weight'\], 0 unused \[\]"):
        convert_state_dict(gone, cfg)
    extra = {**state, "label_emb.weight": torch.zeros(10, 128)}  # a class-conditional checkpoint
    with pytest.raises(ValueError, match=r"0 missing \[\], 1 unused \['label_emb.weight'\]"):
        convert_state_dict(extra, cfg)
    # wrong flags: two res blocks per level where the checkpoint has one
    with pytest.raises(ValueError, match="missing.*input_blocks"):
        convert_state_dict(state, ADMConfig(**{**TINY, "num_res_blocks": 2}))
    with pytest.raises(ValueError, match="out.2.weight has 6 output channels; learn_sigma=False"):
        convert_state_dict(state, ADMConfig(**TINY, learn_sigma=False))


def test_what_diffusers_cannot_express_is_refused():
    with pytest.raises(ValueError, match="class_cond"):
        diffusers_config(ADMConfig(class_cond=True))
    with pytest.raises(ValueError, match="starts with 0.5"):
        diffusers_config(ADMConfig(image_size=512))
    with pytest.raises(ValueError, match="one head dimension"):
        diffusers_config(ADMConfig(**{**TINY, "channel_mult": (1, 2, 4), "attention_resolutions": (8, 4),
                                      "num_head_channels": -1, "num_heads": 4}))


def test_file_conversion_and_refusals(tmp_path):
    from certframe.plugins.denoisers.ddpm import DDPMDenoiser

    cfg = VARIANTS["paper-flags"]
    adm = random_adm(cfg)
    pt = tmp_path / "adm.pt"
    torch.save(adm.state_dict(), pt)
    out = convert_guided_diffusion(pt, tmp_path / "converted", cfg)
    den = DDPMDenoiser(model=str(out))
    assert den.trained_t_max is None and den.max_sigma == math.inf  # all 1000 timesteps assumed
    torch.testing.assert_close(den.diffusion.alphas_cumprod,
                               torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float())
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([258])
    with torch.no_grad():
        torch.testing.assert_close(den.diffusion.unet(x, t).sample, adm(x, t)[:, :3], rtol=1e-4, atol=1e-4)
        assert den(torch.rand(2, 3, 16, 16), 0.5).shape == (2, 3, 16, 16)
    import hashlib
    import json

    record = json.loads((out / "certframe.json").read_text())["converted_from"]
    assert record["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest() and record["file"] == str(pt.resolve())
    assert record["flags"]["attention_resolutions"] == [8] and "training" not in record
    with pytest.raises(FileExistsError):
        convert_guided_diffusion(pt, tmp_path / "converted", cfg)
    # refused inputs
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": adm}, pickled)  # a whole module: needs arbitrary unpickling
    with pytest.raises(ValueError, match=r"\(UnpicklingError: it pickles a [\w.]+ object\); .*weights_only=True\) and "
                                         r"never unpickles other objects$"):
        load_adm_checkpoint(pickled)
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": adm.state_dict(), "step": 3}, nested)
    with pytest.raises(ValueError, match=r"not a flat state dict of tensors: entries \['state_dict', 'step'\]"):
        load_adm_checkpoint(nested)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot be read as a state dict of tensors \(UnpicklingError\)"):
        load_adm_checkpoint(junk)
    with pytest.raises(FileNotFoundError):
        load_adm_checkpoint(tmp_path / "missing.pt")


def test_convert_command(tmp_path):
    from certframe.cli import main

    cfg = VARIANTS["paper-flags"]
    pt = tmp_path / "adm.pt"
    torch.save(random_adm(cfg).state_dict(), pt)
    flags = ["--image-size", "16", "--num-channels", "32", "--num-res-blocks", "1", "--channel-mult", "1,2",
             "--attention-resolutions", "8", "--num-head-channels", "16"]
    result = CliRunner().invoke(main, ["convert", "guided-diffusion", str(pt), str(tmp_path / "out")] + flags)
    assert result.exit_code == 0, result.output
    assert "--denoiser ddpm --denoiser-option model=" in result.output and "evaluate denoiser" in result.output
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    wrong = CliRunner().invoke(main, ["convert", "guided-diffusion", str(pt), str(tmp_path / "out2")])
    assert wrong.exit_code != 0 and "missing" in wrong.output and "unused" in wrong.output
    assert "Traceback" not in wrong.output
