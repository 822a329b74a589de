"""The contracts every plugin honours.

The core of certframe knows no concrete model: it talks to these four kinds of
object only. Shapes use B = batch, C = image channels, K = classes, H x W = size.
Everything also holds for volumes: wherever ``H, W`` appears, the spatial dimensions
``S`` may be ``H, W`` (images) or ``D, H, W`` (volumes), e.g. images ``[C, D, H, W]``,
masks ``[D, H, W]``, logits ``[B, K, D, H, W]``, votes ``[K, D, H, W]``
(:func:`spatial_shape`, :data:`SPATIAL_DIMS`). A model says which it handles with a
``spatial_dims`` attribute (:func:`model_spatial_dims`; 2 when it says nothing).

* :class:`Segmenter`  images ``[B, C, H, W]`` float in ``[0, 1]`` -> logits ``[B, K, H, W]``.
* :class:`Denoiser`   noisy images ``[B, C, H, W]`` (``x + eps``, NOT clipped, so values
  fall outside ``[0, 1]``) and the noise level ``sigma`` -> images ``[B, C, H, W]``
  (in ``[0, 1]`` for a real denoiser; the ``none`` denoiser passes the noisy input on).
* :class:`Certifier`  draws votes through a :class:`VoteSource` and returns one
  :class:`~certframe.core.certificate.Certificate` per threshold ``tau``.
* :class:`SegmentationDataset` yields :class:`Sample` (image, mask, id) plus metadata
  (class names, channels).

Noise is always added in the ``[0, 1]`` pixel space of the data set, after resizing
and before any normalisation: normalisation belongs inside the segmenter or denoiser.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import nn

ABSTAIN = -1
"""Label of a pixel the certifier refuses to certify (int64 label maps)."""

RANDOM_WEIGHTS = "random"
"""The ``weights`` option value that builds a trainable segmenter untrained, on purpose (training
does; a segmenter built without ``weights`` is refused, so none is certified by accident)."""

SPATIAL_DIMS = (2, 3)
"""The spatial dimensionalities certframe handles: images ``[C, H, W]`` and volumes ``[C, D, H, W]``."""

SPATIAL_NAMES = {2: ("[C, H, W]", "image"), 3: ("[C, D, H, W]", "volume")}
"""Per spatial dimensionality: the layout of one input and its name (for error messages)."""


def spatial_shape(image: torch.Tensor) -> tuple[int, ...]:
    """The spatial size ``S`` of one image ``[C, *S]``: ``(H, W)`` or ``(D, H, W)``."""
    return tuple(image.shape[1:])


def model_spatial_dims(model) -> tuple[int, ...]:
    """The spatial dimensionalities a model (segmenter, denoiser) handles, from its ``spatial_dims``.

    ``spatial_dims`` may be an int (2: images ``[B, C, H, W]``; 3: volumes
    ``[B, C, D, H, W]``) or a tuple of them (a model that takes both, e.g. a voxel-wise
    one); a model without the attribute (every plugin written before volumes) handles 2.
    """
    value = getattr(model, "spatial_dims", 2)
    dims = (value,) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if not dims or any(isinstance(d, bool) or d not in SPATIAL_DIMS for d in dims):
        raise ValueError(f"{type(model).__name__}.spatial_dims must be 2, 3 or a tuple of them, got {value!r}")
    return dims


@dataclass(frozen=True)
class Sample:
    """One item of a segmentation data set.

    image: float32 ``[C, H, W]`` (or a volume ``[C, D, H, W]``) in ``[0, 1]``.
    mask:  int64 ``[H, W]`` (``[D, H, W]``) with labels in ``range(len(class_names))``.
    id:    a stable, unique string (file stem, index); it seeds the noise draws.
    """

    image: torch.Tensor
    mask: torch.Tensor
    id: str


class SegmentationDataset(abc.ABC):
    """A finite, indexable set of :class:`Sample`.

    Subclasses set ``class_names`` (index = label; class 0 is background) and
    ``in_channels`` (1 for grey, 3 for RGB) and implement ``__len__`` and
    ``__getitem__``. Resizing and cropping happen here, before any noise: the
    certificate is about the image the model sees.
    """

    class_names: Sequence[str] = ("background", "foreground")
    in_channels: int = 1
    default_hierarchy: dict | None = None
    """A label hierarchy over ``class_names`` (a table with ``root`` and ``groups``, see
    :mod:`certframe.core.hierarchy`) that the ``hierarchical`` certifier uses when given none;
    None when the data set declares none."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def identity(self) -> dict:
        """A JSON-able description that identifies the data (for run manifests)."""
        return {"class": type(self).__name__, "len": len(self)}

    def item_ids(self) -> list[str]:
        """The ids of all items, in index order (hashed into run manifests).

        The default loads every item; data sets that know their ids without
        reading the files should override it.
        """
        return [self[i].id for i in range(len(self))]


def class_labels(logits: torch.Tensor) -> torch.Tensor:
    """Hard labels ``[B, *S]`` int64 from scores ``[B, K, *S]``: the first largest class.

    Identical to ``logits.argmax(dim=1)`` (ties to the lowest class, NaN counts as the
    maximum, the first NaN wins), computed without it: on CPU, torch's argmax over a
    dimension that is not the innermost is about 17x slower than ``max(dim=1)`` (0.16 s
    for a 32 x 2 x 256 x 256 batch, most of the UNet's forward pass; see
    ``benchmarks/core.py overhead``). Two classes take one comparison (10x faster again),
    for any number of spatial axes (``[B, 2, H, W]``, ``[B, 2, D, H, W]``, ...).
    """
    if logits.dim() >= 4 and logits.shape[1] == 2:
        first, second = logits[:, 0], logits[:, 1]
        # second wins where it is larger or NaN (b <= a is False for either NaN), unless first is NaN
        return (~(second <= first) & ~first.isnan()).long()
    return logits.max(dim=1).indices


class Segmenter(nn.Module, abc.ABC):
    """A base segmentation model: ``forward([B, C, H, W] in [0, 1]) -> logits [B, K, H, W]``.

    Subclasses set ``num_classes`` (K) and ``in_channels`` (C). Any input
    normalisation the network needs happens inside ``forward``. A volume segmenter
    sets ``spatial_dims = 3`` (``[B, C, D, H, W] -> [B, K, D, H, W]``); the run checks it
    against the data set before sampling (:func:`model_spatial_dims`). The smoothed
    classifier only uses ``argmax`` over K, so logits, probabilities or
    log-probabilities all work.
    """

    num_classes: int = 2
    in_channels: int = 1
    spatial_dims: int | tuple[int, ...] = 2

    @abc.abstractmethod
    def forward(self, images: torch.Tensor) -> torch.Tensor: ...

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Hard labels ``[B, *S]`` int64."""
        return class_labels(self(images))


class Denoiser(nn.Module, abc.ABC):
    """Removes Gaussian noise of known std ``sigma`` from images in ``[0, 1]`` space.

    ``forward(noisy [B, C, H, W], sigma: float) -> [B, C, H, W]``; ``noisy = x + eps``
    with ``eps ~ N(0, sigma^2 I)`` and ``x`` in ``[0, 1]``. ``spatial_dims`` as for
    :class:`Segmenter` (2 by default; a volume denoiser sets 3).
    """

    spatial_dims: int | tuple[int, ...] = 2

    @abc.abstractmethod
    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor: ...


@runtime_checkable
class VoteSource(Protocol):
    """Where a certifier gets its Monte-Carlo votes from (see :mod:`certframe.core.sampler`).

    ``counts(phase, n, start=0)`` returns int64 ``[K, *S]`` (``[K, H, W]`` or ``[K, D, H, W]``) class counts of the
    draws ``start .. start + n - 1`` of the named phase ("selection",
    "estimation", or any other name). Draws of different phases are independent;
    the same (phase, index) is the same draw every time it is asked for.
    """

    num_classes: int

    def counts(self, phase: str, n: int, start: int = 0) -> torch.Tensor: ...


@dataclass(frozen=True)
class NoiseKey:
    """Which noise an image gets: every draw of :class:`~certframe.core.sampler.NoiseVoter` is
    a function of ``(seed, image_id, phase, draw index)`` and nothing else.

    seed: the run's seed, an int in ``[0, 2**64)``.
    image_id: the image's stable id (:attr:`Sample.id`), a non-empty string. Two images
        with the same key get the same noise, so there is no default: a caller who
        forgets the id gets an error, not one noise for every image.
    """

    seed: int
    image_id: str

    def __post_init__(self):
        from certframe.validation import check_seed

        check_seed(self.seed, "NoiseKey.seed")
        if not isinstance(self.image_id, str) or not self.image_id:
            raise ValueError(f"NoiseKey.image_id must be a non-empty string (the image's id), "
                             f"got {self.image_id!r}")


@dataclass(frozen=True)
class CertifyRequest:
    """What a certifier is asked: noise level, sample sizes, error level, thresholds.

    Validated once, here (every certifier and the run layer can rely on it):
    sigma: finite float > 0 (noise std in [0, 1] pixel units);
    n0, n: positive ints (selection and estimation draws);
    alpha: float in (0, 1) (family-wise error level per image and tau);
    taus: a non-empty tuple of distinct floats in (0.5, 1) (a single number is taken as one tau;
    a repeated tau is refused: each tau gives one certificate, one row per image).
    Bad values raise ValueError naming the parameter, what was expected and what came.
    A valid request can still be one that certifies nothing (``tau**n > alpha``): :meth:`warnings`.
    """

    sigma: float
    n0: int
    n: int
    alpha: float
    taus: Sequence[float] = (0.75,)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        from certframe.core.statistics import check_alpha, check_count, check_sigma, check_tau

        taus = self.taus
        if isinstance(taus, (int, float)) and not isinstance(taus, bool):
            taus = (taus,)
        try:
            taus = () if isinstance(taus, (str, bytes)) else tuple(taus)
        except TypeError:
            taus = ()
        if not taus:
            raise ValueError(f"taus must be a non-empty sequence of thresholds in (0.5, 1), got {self.taus!r}")
        object.__setattr__(self, "sigma", check_sigma(self.sigma))
        object.__setattr__(self, "n0", check_count("n0", self.n0))
        object.__setattr__(self, "n", check_count("n", self.n))
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        taus = tuple(check_tau(t) for t in taus)
        repeated = sorted({t for t in taus if taus.count(t) > 1}, key=taus.index)
        if repeated:
            counts = ", ".join(f"{t:g} is given {taus.count(t)} times" for t in repeated)
            raise ValueError(f"taus must be distinct (each tau gives one row per image): {counts} in {list(taus)}")
        object.__setattr__(self, "taus", taus)

    def warnings(self) -> list[str]:
        """One message per tau at which no pixel can be certified with ``n`` draws at level ``alpha``.

        The best a pixel can do is k = n votes of n, whose p-value ``P(Binomial(n, tau) >= n)`` is
        ``tau**n``: with ``tau**n > alpha`` nothing is certified, whatever the model
        (:func:`certframe.core.statistics.smallest_certifying_n` gives the smallest n that could). The
        bound is necessary, not sufficient: Holm or Bonferroni over the image's pixels asks for more.
        """
        from certframe.core.statistics import smallest_certifying_n

        out = []
        for tau in self.taus:
            if tau ** self.n > self.alpha:
                out.append(f"n={self.n} cannot certify any pixel at tau={tau:g} and alpha={self.alpha:g}: even "
                           f"{self.n} votes of {self.n} give the p-value {tau:g}^{self.n} = {tau ** self.n:.2g} > "
                           f"alpha, so every pixel abstains; n >= {smallest_certifying_n(tau, self.alpha)} is "
                           f"needed (necessary, not sufficient: the correction over the image's pixels asks "
                           f"for more)")
        return out


class Certifier(abc.ABC):
    """Turns Monte-Carlo votes into certificates (one per ``tau``).

    Every implementation states its guarantee in its docstring. ``certify`` must
    draw every sample it uses through ``votes`` so the engine can count and
    reproduce them.
    """

    name: str = "certifier"
    correction: str = "unstated"
    """The multiple-testing correction over the pixels of an image (``"holm"``,
    ``"bonferroni"``, ``"none"``, ...), recorded with every run. ``"none"`` means only
    each pixel's error is bounded, not the image's; a certifier that does not say keeps
    ``"unstated"``."""

    @abc.abstractmethod
    def certify(self, votes: VoteSource, request: CertifyRequest) -> list:
        """Return a list of :class:`~certframe.core.certificate.Certificate`, one per tau, in order."""
