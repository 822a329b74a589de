"""Segmenter weights: bundled names, the explicit request for random weights, who wrote a file.

Shared by the segmenter plugins that read certframe safetensors checkpoints
(:mod:`certframe.checkpoint`): ``monai`` and ``smp``.
"""
from __future__ import annotations

from pathlib import Path

from certframe.interfaces import RANDOM_WEIGHTS

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
RANDOM = RANDOM_WEIGHTS
"""The ``weights`` value that asks for a randomly initialised network on purpose (training)."""


def require_weights(plugin: str, weights) -> None:
    """No segmenter is certified by accident: ``weights`` must be given, or be :data:`RANDOM`."""
    if weights is None or (isinstance(weights, str) and not weights.strip()):
        raise ValueError(f"the {plugin} segmenter needs weights=: a .safetensors file written by certframe "
                         f"(certframe train segmenter) or a bundled name; without it the network would be "
                         f"randomly initialised. Pass weights={RANDOM} to build an untrained network on "
                         f"purpose (training does)")


def check_written_by(path, config: dict, plugin: str) -> None:
    """Refuse a checkpoint that another segmenter plugin wrote (its config names it)."""
    writer = config.get("segmenter", plugin)
    if writer != plugin:
        raise ValueError(f"{path} was written by the {writer!r} segmenter, not {plugin!r}: certify it with "
                         f"--segmenter {writer} --segmenter-option weights={path}")


def resolve_weights(weights: str | Path) -> Path:
    """A path, or the name of a bundled checkpoint (``certframe/plugins/weights/<name>.safetensors``)."""
    p = Path(weights)
    if p.is_file():
        return p
    bundled = WEIGHTS_DIR / f"{weights}.safetensors"
    if bundled.is_file():
        return bundled
    names = sorted(q.stem for q in WEIGHTS_DIR.glob("*.safetensors"))
    raise FileNotFoundError(f"segmenter weights {str(weights)!r} not found: expected a .safetensors "
                            f"path or a bundled name ({', '.join(names) or 'none bundled'})")


def load_state(net, state: dict, path, plugin: str) -> None:
    """``net.load_state_dict(state)``, with one line naming the file when the architecture differs."""
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
        raise ValueError(f"{path}: the weights do not fit the {plugin} network built from its configuration "
                         f"({len(lines) - 1} mismatches; first: {detail[:200]})") from None
