"""Contract checks for certframe plugins, to call from a plugin's own test suite.

A plugin is only as trustworthy as the certificates computed through it, and the
guarantee of randomized smoothing (Cohen et al. 2019; Fischer et al. 2021 for
segmentation) silently breaks if, for instance, a segmenter's output depends on
the batch it came in, a denoiser draws from the global random state, or a
certifier re-uses its selection draws for estimation. These helpers check the
contract of :mod:`certframe.interfaces` on a real object and raise
:class:`ContractError` (an ``AssertionError``, so pytest shows it as a failure)
naming the plugin, the violated rule and what came instead of what was expected::

    from certframe.contract import check_segmenter

    def test_my_unet_honours_the_certframe_contract(tmp_path):
        check_segmenter(MyUNet, options={"weights": "tests/data/tiny.safetensors"})

Each ``check_*`` takes either an instance or a factory (the class or function the
plugin registers; it is called with ``options`` as keyword arguments, twice, to
check that building is deterministic under a seed). :func:`check_plugin` does
the same for a *registered* name, going through the registry exactly as
``certframe certify`` does. Every check returns a :class:`ContractReport` of the
rules that passed and those that could not be checked here, with the reason
(for instance ``device cuda: CUDA is not available``).

The rules, by kind (``RULES`` holds them with one sentence each):

* segmenter: images ``[B, C, H, W]`` float in ``[0, 1]`` -> logits ``[B, K, H, W]``
  (non-square H x W, so swapped axes are caught), floating point and finite, also
  on noisy inputs outside ``[0, 1]``; the input is not modified in place; each
  item's output does not depend on the rest of the batch; forward is a function
  of its input (the sampler promises that a draw gives the same votes every time)
  and building under one ``torch.manual_seed`` gives the same model; the module
  follows ``.to(device)`` (CPU; the ``meta`` device, which catches tensors kept
  outside parameters/buffers or created without ``device=``; CUDA when
  available); a wrong channel count or a missing batch axis raises ``ValueError``.
* denoiser: the same, with output ``[B, C, H, W]`` in ``output_range`` (``[0, 1]``
  by default; ``None`` for a pass-through such as ``none``) at every sigma.
* dataset: ``len >= 1``; items are :class:`~certframe.interfaces.Sample` with
  image float32 ``[C, H, W]`` in ``[0, 1]`` (C = ``in_channels``), mask int64
  ``[H, W]`` with declared labels only, on the CPU, unique non-empty string ids
  equal to ``item_ids()``; reading (and building under the same options) is
  deterministic; ``dataset[len(dataset)]`` raises ``IndexError``; ``identity()``
  is JSON.
* certifier: one :class:`~certframe.core.certificate.Certificate` per tau, in order, with
  ``labels`` int64 ``[H, W]`` in ``{ABSTAIN} u {0..K-1}`` on the votes' device and
  ``radius == sigma * Phi^-1(tau)``; every draw comes through the
  :class:`~certframe.interfaces.VoteSource` (nothing else of it is touched, no
  draw is used twice, ``num_samples`` counts them); the same votes give the same
  certificate; pixels whose votes are unanimous may be certified only as the
  voted class (and some must be), pixels whose top class has probability 0.5 (below
  every tau) must abstain.

``bad_options`` (every kind): option dicts the factory must refuse with a clear
``ValueError``, ``TypeError``, ``KeyError`` or ``FileNotFoundError``.

The package keeps one module per kind (``segmenter``, ``denoiser``, ``dataset``,
``certifier`` with :class:`ContractVotes`), ``plugin`` for :func:`check_plugin`, and
``_common`` for the rules and what the checks share.
"""
from certframe.contract._common import RULES, ContractError, ContractReport
from certframe.contract.certifier import ContractVotes, check_certifier
from certframe.contract.dataset import check_dataset
from certframe.contract.denoiser import check_denoiser
from certframe.contract.plugin import check_plugin
from certframe.contract.segmenter import check_segmenter

__all__ = ["ContractError", "ContractReport", "ContractVotes", "RULES", "check_certifier", "check_dataset",
           "check_denoiser", "check_plugin", "check_segmenter"]
