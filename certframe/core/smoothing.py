"""The smoothed segmenter: the core object, in the notation of the papers.

Given a base segmenter f (optionally preceded by a denoiser D), the smoothed
segmenter is ``g(x)_i = argmax_c P_eps(f(D(x + eps))_i = c)``, eps ~ N(0, sigma^2 I),
x in [0, 1]^{C x H x W} (or a volume, [0, 1]^{C x D x H x W}: everything below
holds with "pixel" read as "voxel" and the L2 norm taken over the whole volume).
Certification (Fischer et al., ICML 2021) gives, with probability at least 1 - alpha
over the sampling, a class per pixel (or ABSTAIN) that g keeps for every perturbation
delta with ||delta||_2 < sigma * Phi^-1(tau).
Denoised smoothing: Salman et al. 2020; with a diffusion model: Carlini et al.
ICLR 2023; for medical segmentation: Laousy et al. MICCAI 2023.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from certframe.core.certificate import Certificate
from certframe.core.sampler import NoiseVoter, RecordingVotes
from certframe.core.statistics import check_sigma
from certframe.interfaces import (
    SPATIAL_NAMES,
    Certifier,
    CertifyRequest,
    Denoiser,
    NoiseKey,
    Segmenter,
    VoteSource,
    class_labels,
    model_spatial_dims,
)
from certframe.validation import BatchChecks, ModelOutputError, validate_image


def check_model_spatial_dims(model, kind: str, dims: int, shape: tuple | None = None, where: str = "",
                             name: str | None = None) -> None:
    """Raise ValueError unless ``model`` (a segmenter or denoiser) handles ``dims`` spatial dimensions.

    dims: 2 for images ``[C, H, W]``, 3 for volumes ``[C, D, H, W]``. shape: the input's shape, for
    the message; where: what gave it (e.g. "the dataset 'x'"); name: the plugin's registered name.
    The message says what the model expects and what came, e.g. "the denoiser 'ddpm' (DDPMDenoiser)
    expects inputs of shape [C, H, W] (images), spatial_dims=2; the dataset 'v' gives volumes ...".
    """
    takes = model_spatial_dims(model)
    if dims in takes:
        return
    expected = " or ".join(f"{SPATIAL_NAMES[d][0]} ({SPATIAL_NAMES[d][1]}s)" for d in takes)
    layout, noun = SPATIAL_NAMES.get(dims, (f"{dims + 1}-D", "input"))
    got = f"{where} gives {noun}s" if where else f"got {'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    if shape is not None:
        got += f" of shape {list(shape)} ({layout})"
    declared = takes[0] if len(takes) == 1 else takes
    hint = (" A volume model declares spatial_dims = 3." if dims == 3 else
            " An image model declares spatial_dims = 2 (the default).")
    who = type(model).__name__ if name is None else f"{name!r} ({type(model).__name__})"
    raise ValueError(f"the {kind} {who} expects inputs of shape {expected}, "
                     f"spatial_dims={declared}; {got}.{hint}")


class SmoothedSegmenter:
    """g = smoothing of ``segmenter o denoiser`` at noise level ``sigma``.

    segmenter: :class:`Segmenter` ([B, C, *S] in [0, 1] -> logits [B, K, *S]; S = H, W, or
               D, H, W for a volume segmenter, ``spatial_dims = 3``).
    denoiser:  :class:`Denoiser` or ``None`` (the Gaussian-trained baseline: the
               segmenter sees ``x + eps`` directly).
    sigma:     noise std in [0, 1] pixel units, finite and > 0.

    Every batch is checked (:class:`~certframe.validation.BatchChecks`, see
    :mod:`certframe.core.sampler`): denoiser outputs and logits must be finite and on the
    input's device, logits floating-point ``[B, K, *S]``; the error names the plugin's class and,
    through the voter, the image id.
    """

    def __init__(self, segmenter: Segmenter, denoiser: Denoiser | None, sigma: float):
        self.segmenter = segmenter
        self.denoiser = denoiser
        self.sigma = check_sigma(sigma)
        self.num_classes = int(segmenter.num_classes)
        self.checks = BatchChecks()

    def describe(self) -> str:
        """How errors name the base pipeline: "the segmenter X behind the denoiser Y"."""
        seg = f"the segmenter {type(self.segmenter).__name__}"
        return seg if self.denoiser is None else f"{seg} behind the denoiser {type(self.denoiser).__name__}"

    def base_logits(self, noisy: torch.Tensor) -> torch.Tensor:
        """``f(D(x + eps))``: ``[B, C, *S]`` noisy images -> logits ``[B, K, *S]`` (checked)."""
        x = noisy
        if self.denoiser is not None:
            x = self.denoiser(noisy, self.sigma)
            source = f"the denoiser {type(self.denoiser).__name__}"
            self.checks.same_device(x, noisy, source, "images")
            self.checks.finite(x, source, "images")
        logits = self.segmenter(x)
        source = f"the segmenter {type(self.segmenter).__name__}"
        self.checks.same_device(logits, noisy, source, "logits")
        if isinstance(logits, torch.Tensor) and not logits.is_floating_point():   # metadata: no synchronisation
            axes = "H, W" if noisy.dim() == 4 else "D, H, W"
            raise ModelOutputError(f"{source} returned {str(logits.dtype).removeprefix('torch.')} logits, expected "
                                   f"floating-point scores [B, {self.num_classes}, {axes}] (one score per class; "
                                   f"class labels are not logits)")
        self.checks.finite(logits, source, "logits")
        return logits

    def base_labels(self, noisy: torch.Tensor) -> torch.Tensor:
        """Hard labels ``[B, *S]`` of the base pipeline on noisy images ``[B, C, *S]``."""
        logits = self.base_logits(noisy)
        if logits.dim() != noisy.dim() or logits.shape[1] != self.num_classes:
            axes = "H, W" if noisy.dim() == 4 else "D, H, W"
            raise ModelOutputError(f"the segmenter {type(self.segmenter).__name__} returned shape "
                                   f"{tuple(logits.shape)}, expected [B, {self.num_classes}, {axes}] logits")
        return class_labels(logits)

    def check_spatial_dims(self, x: torch.Tensor) -> None:
        """The segmenter (and denoiser) take ``x``'s kind: an image ``[C, H, W]`` or a volume ``[C, D, H, W]``.

        Read from each model's ``spatial_dims`` (:func:`~certframe.interfaces.model_spatial_dims`);
        a mismatch raises ValueError naming the model, what it takes and what came.
        """
        check_model_spatial_dims(self.segmenter, "segmenter", x.dim() - 1, tuple(x.shape))
        if self.denoiser is not None:
            check_model_spatial_dims(self.denoiser, "denoiser", x.dim() - 1, tuple(x.shape))

    def voter(self, x: torch.Tensor, key: NoiseKey, *, batch_size: int = 32) -> NoiseVoter:
        """A :class:`NoiseVoter` for image ``x`` ``[C, H, W]`` (or volume ``[C, D, H, W]``) in [0, 1] under ``key``."""
        validate_image(x, in_channels=getattr(self.segmenter, "in_channels", None))
        self.check_spatial_dims(x)
        return NoiseVoter(self.base_labels, x, key=key, sigma=self.sigma, num_classes=self.num_classes,
                          batch_size=batch_size, checks=self.checks, model_name=self.describe())

    def certify(self, x: torch.Tensor, certifier: Certifier, *, key: NoiseKey, n0: int, n: int,
                alpha: float, taus: Sequence[float] = (0.75,), batch_size: int = 32) -> list[Certificate]:
        """Certify one image ``x`` ``[C, H, W]`` or volume ``[C, D, H, W]``; one :class:`Certificate` per tau.

        key: the image's :class:`NoiseKey` ``(seed, image_id)`` (required).
        """
        request = CertifyRequest(sigma=self.sigma, n0=n0, n=n, alpha=alpha, taus=taus)
        return self.certify_request(x, certifier, request, key=key, batch_size=batch_size).certificates

    def certify_request(self, x: torch.Tensor, certifier: Certifier, request: CertifyRequest, *, key: NoiseKey,
                        batch_size: int = 32, record: bool = False) -> "Certification":
        """:meth:`certify` under a :class:`CertifyRequest`, with the vote source the certificates came from.

        The one certification path: :meth:`certify` and every run's per-image step
        (:class:`certframe.run.step.CertifyStep`) go through it, so a run certifies with the very
        draws a library call makes. ``request.sigma`` must be this segmenter's sigma. record: hand
        the certifier a :class:`~certframe.core.sampler.RecordingVotes`, which keeps the counts it
        gives (g's majority vote from the certificate's own draws, :meth:`RecordingVotes.majority`).
        The certifier must return one certificate per tau (else ValueError); each certificate's
        ``info["forward_passes"]`` is set unless the certifier set it.
        """
        if float(request.sigma) != self.sigma:
            raise ValueError(f"the request's sigma {request.sigma!r} is not the smoothed segmenter's {self.sigma!r}")
        votes = self.voter(x, key, batch_size=batch_size)
        if record:
            votes = RecordingVotes(votes)
        certs = certifier.certify(votes, request)
        if len(certs) != len(request.taus):
            name = getattr(certifier, "name", type(certifier).__name__)
            raise ValueError(f"certifier {name!r} returned {len(certs)} certificates for {len(request.taus)} taus")
        for cert in certs:
            cert.info.setdefault("forward_passes", votes.forward_passes)
        return Certification(certs, votes)

    def clean_prediction(self, x: torch.Tensor) -> torch.Tensor:
        """The base segmenter's labels ``[*S]`` on the clean ``x`` ``[C, *S]`` (no noise, no denoiser),
        on x's device."""
        with torch.inference_mode():
            return class_labels(self.segmenter(x.unsqueeze(0)))[0]

    def predict(self, x: torch.Tensor, n: int, *, key: NoiseKey, batch_size: int = 32) -> torch.Tensor:
        """Monte-Carlo estimate of g(x) without a certificate: majority of n votes, ``[*S]``."""
        votes = self.voter(x, key, batch_size=batch_size)
        return votes.counts("prediction", n).argmax(dim=0)


class Certification(NamedTuple):
    """What :meth:`SmoothedSegmenter.certify_request` gives: the certificates, one per tau, and the
    vote source they were made from (its ``forward_passes``; with ``record``, its recorded counts)."""

    certificates: list[Certificate]
    votes: VoteSource
