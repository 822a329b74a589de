"""The certifier contract: :func:`check_certifier` (rules in ``RULES["certifier"]``) and
:class:`ContractVotes`, the vote source with known class probabilities it runs certifiers on.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from scipy.stats import norm

from certframe.contract._common import ContractError, ContractReport, _begin, _check_bad_options, _shape
from certframe.core.sampler import draw_seed
from certframe.interfaces import ABSTAIN, Certifier, CertifyRequest


class ContractVotes:
    """A :class:`~certframe.interfaces.VoteSource` with known per-pixel class probabilities.

    probs: float ``[K, H, W]``, each pixel a distribution over the K classes. Draw
    ``i`` of ``phase`` is a label map sampled from ``probs`` with a generator seeded
    from ``(seed, phase, i)``, so asking again gives the same draw. Every call is
    recorded (``calls``: ``(phase, start, n)``), and touching anything but
    ``counts`` and ``num_classes`` is recorded in ``misuse`` and raises.
    """

    def __init__(self, probs: torch.Tensor, seed: int = 0, device: str | torch.device = "cpu"):
        object.__setattr__(self, "_probs", probs.double())
        object.__setattr__(self, "_cum", probs.double().cumsum(0).to(device))
        object.__setattr__(self, "num_classes", int(probs.shape[0]))
        object.__setattr__(self, "_seed", int(seed))
        object.__setattr__(self, "_device", torch.device(device))
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "misuse", [])

    def counts(self, phase: str, n: int, start: int = 0) -> torch.Tensor:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not isinstance(start, int) or start < 0:
            self.misuse.append(f"counts({phase!r}, n={n!r}, start={start!r})")
            raise ValueError(f"counts needs int n >= 1 and int start >= 0, got n={n!r}, start={start!r}")
        self.calls.append((str(phase), start, n))
        K, H, W = self._probs.shape
        gen = torch.Generator().manual_seed(draw_seed(self._seed, "contract", str(phase), 0))
        u = torch.rand((start + n, H, W), generator=gen, dtype=torch.float64)[start:].to(self._device)
        labels = (u.unsqueeze(1) >= self._cum.unsqueeze(0)).sum(dim=1).clamp_(max=K - 1)  # [n, H, W]
        return torch.stack([(labels == k).sum(dim=0) for k in range(K)]).to(torch.int64)

    def __getattr__(self, item):
        self.misuse.append(item)
        raise AttributeError(f"the VoteSource contract offers only counts(phase, n, start) and num_classes; "
                             f"the certifier asked for {item!r}")

    def __setattr__(self, key, value):
        self.misuse.append(f"set {key}")
        raise AttributeError(f"a certifier must not modify the VoteSource (tried to set {key!r})")

    def draws(self) -> int:
        return sum(n for _, _, n in self.calls)

    def reused(self) -> str | None:
        """A description of the first draw asked for twice, or None."""
        seen: dict[str, list[tuple[int, int]]] = {}
        for phase, start, n in self.calls:
            for a, b in seen.get(phase, []):
                if start < b and a < start + n:
                    return (f"draws {max(a, start)}..{min(b, start + n) - 1} of phase {phase!r} were asked for "
                            f"twice (calls: {self.calls})")
            seen.setdefault(phase, []).append((start, start + n))
        return None


def _scenario(K: int, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel probabilities: left half unanimous for a class map M, right half split
    ``(0.5, 0.3, 0.2, 0, ...)`` (top class 0.5, below any tau). Returns (probs, M, unanimous)."""
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    M = ((yy // 2 + xx // 3) % K).to(torch.int64)
    unanimous = xx < W // 2
    probs = torch.zeros((K, H, W), dtype=torch.float64)
    probs.scatter_(0, M.unsqueeze(0), 1.0)
    split = torch.zeros(K, dtype=torch.float64)
    split[:3] = torch.tensor([0.5, 0.5] if K == 2 else [0.5, 0.3, 0.2], dtype=torch.float64)
    rolled = torch.stack([split.roll(int(k)) for k in range(K)])  # top class varies with M
    probs[:, ~unanimous] = rolled[M[~unanimous]].T
    return probs, M, unanimous


def _false_certification(n: int, tau: float, alpha: float) -> float:
    """P(a pixel with top-class probability 0.5 passes the uncorrected one-sided binomial test
    of H0: p <= tau at level alpha with n draws): 9e-8 at n=200, tau=0.6, alpha=0.01."""
    from scipy.stats import binom

    k = torch.arange(n + 2).double().numpy()
    passing = k[binom.sf(k - 1, n, tau) <= alpha]
    return float(binom.sf(passing.min() - 1, n, 0.5)) if passing.size else 0.0


def check_certifier(certifier, *, options: dict | None = None, name: str | None = None,
                    num_classes: int = 3, image_size: tuple[int, int] = (12, 16), sigma: float = 0.5,
                    n0: int = 20, n: int = 200, alpha: float = 0.01, taus: Sequence[float] = (0.6, 0.75, 0.9),
                    seed: int = 0, bad_options: Iterable[dict] = (),
                    devices: str | Sequence[str] = "auto") -> ContractReport:
    """Check a :class:`~certframe.interfaces.Certifier` (instance or factory) against the contract.

    The certifier is run on a :class:`ContractVotes` whose left half votes unanimously
    for a class map and whose right half has top-class probability 0.5 (below every tau).
    With the default n = 200 and alpha = 0.01 a sound certifier certifies none of the
    right half except with probability < 1e-5 (9e-8 per pixel at tau = 0.6 even without a
    multiple-testing correction), and every correct test (Cohen's
    Clopper-Pearson, SegCertify's binomial test) certifies the left half at every tau.
    """
    ck, factory, cert, options = _begin("certifier", certifier, name, options, seed, Certifier)
    if not isinstance(getattr(cert, "name", None), str) or not cert.name:
        ck.fail("type", f"name must be a non-empty str (it labels result rows), got {getattr(cert, 'name', None)!r}")
    ck.ok("type")
    K = int(num_classes)
    H, W = image_size
    request = CertifyRequest(sigma=float(sigma), n0=int(n0), n=int(n), alpha=float(alpha), taus=tuple(taus))
    probs, M, unanimous = _scenario(K, H, W)

    def run(device: str = "cpu", vote_seed: int = seed):
        votes = ContractVotes(probs, seed=vote_seed, device=device)
        try:
            certs = cert.certify(votes, request)
        except ContractError:
            raise
        except Exception as err:
            if votes.misuse:
                ck.fail("votes only", f"the certifier used {votes.misuse[0]!r} of the vote source ({err}); only "
                                      f"counts(phase, n, start) and num_classes are part of VoteSource")
            ck.fail("certificates", f"certify on a {device} vote source raised {type(err).__name__}: {err}")
        if votes.misuse:
            ck.fail("votes only", f"the certifier used {votes.misuse[0]!r} of the vote source; only "
                                  f"counts(phase, n, start) and num_classes are part of VoteSource")
        return votes, certs

    votes, certs = run()
    if not isinstance(certs, (list, tuple)) or len(certs) != len(request.taus):
        got = len(certs) if isinstance(certs, (list, tuple)) else type(certs).__name__
        ck.fail("certificates", f"expected a list of {len(request.taus)} certificates (one per tau "
                                f"{list(request.taus)}), got {got}")
    from certframe.core.certificate import Certificate

    for tau, c in zip(request.taus, certs):
        if not isinstance(c, Certificate):
            ck.fail("certificates", f"expected certframe.core.certificate.Certificate, got {type(c).__name__}")
        if not math.isclose(c.tau, tau, rel_tol=0, abs_tol=1e-12):
            ck.fail("certificates", f"certificates must follow the request's taus {list(request.taus)} in order; "
                                    f"got tau {c.tau} where {tau} was expected")
        if not math.isclose(c.sigma, request.sigma) or not math.isclose(c.alpha, request.alpha):
            ck.fail("certificates", f"certificate at tau={tau} carries sigma={c.sigma}, alpha={c.alpha}; "
                                    f"the request has sigma={request.sigma}, alpha={request.alpha}")
    ck.ok("certificates")
    for tau, c in zip(request.taus, certs):
        lab = c.labels
        if not isinstance(lab, torch.Tensor) or lab.dtype != torch.int64 or tuple(lab.shape) != (H, W):
            ck.fail("labels", f"at tau={tau}: expected int64 [{H}, {W}] labels, got "
                              f"{getattr(lab, 'dtype', type(lab).__name__)} {_shape(lab)}")
        if lab.device.type != "cpu":
            ck.fail("labels", f"at tau={tau}: votes on the CPU gave labels on {lab.device}")
        values = set(torch.unique(lab).tolist())
        allowed = {ABSTAIN, *range(K)}
        if not values <= allowed:
            ck.fail("labels", f"at tau={tau}: labels {sorted(values)} include {sorted(values - allowed)}; "
                              f"allowed are ABSTAIN ({ABSTAIN}) and the classes 0..{K - 1}")
    ck.ok("labels")
    for tau, c in zip(request.taus, certs):
        expected = request.sigma * float(norm.ppf(tau))
        if not math.isclose(float(c.radius), expected, rel_tol=1e-9, abs_tol=1e-12):
            ck.fail("radius", f"at sigma={request.sigma}, tau={tau} the radius must be sigma * Phi^-1(tau) "
                              f"= {expected:.6g}, got {float(c.radius):.6g}")
    ck.ok("radius")
    reused = votes.reused()
    if reused:
        ck.fail("votes only", f"{reused}: selection and estimation need independent draws, else the "
                              f"test is biased and the guarantee void")
    if votes.draws() == 0:
        ck.fail("votes only", "the certifier took no draws from the vote source: certificates must come "
                              "from the votes")
    for tau, c in zip(request.taus, certs):
        if c.num_samples != votes.draws():
            ck.fail("votes only", f"at tau={tau}: num_samples is {c.num_samples}, but {votes.draws()} draws were "
                                  f"taken from the vote source ({votes.calls})")
    ck.ok("votes only")
    _, again = run()
    for tau, a, b in zip(request.taus, certs, again):
        if not torch.equal(a.labels, b.labels) or a.radius != b.radius:
            diff = int((a.labels != b.labels).sum())
            ck.fail("determinism", f"at tau={tau}, two runs on the same votes differ in {diff} pixel(s): "
                                   f"draw nothing outside the vote source (no torch.rand, no numpy random)")
    ck.ok("determinism")
    for tau, c in zip(request.taus, certs):
        left = c.labels[unanimous]
        certified = left != ABSTAIN
        wrong = int((left[certified] != M[unanimous][certified]).sum())
        if wrong:
            ck.fail("follows votes", f"at tau={tau}: {wrong} pixel(s) whose {request.n0 + request.n} draws all "
                                     f"voted one class were certified as another class")
        if not bool(certified.any()):
            ck.fail("follows votes", f"at tau={tau}: every pixel abstains although all "
                                     f"{request.n0 + request.n} draws of half the image voted one class "
                                     f"(n={request.n}, alpha={request.alpha})")
        right = c.labels[~unanimous]
        bad = int((right != ABSTAIN).sum())
        if bad:
            bound = _false_certification(request.n, tau, request.alpha)
            ck.fail("abstains without majority", f"at tau={tau}: {bad} of {right.numel()} pixel(s) whose top class "
                                                 f"has probability 0.5 were certified; even an uncorrected "
                                                 f"binomial test at level alpha={request.alpha} certifies such a "
                                                 f"pixel with probability {bound:.2g} at n={request.n}")
    ck.ok("follows votes")
    ck.ok("abstains without majority")
    for tau, c in zip(request.taus, certs):
        if c.pvalues is not None:
            p = c.pvalues
            if tuple(p.shape) != (H, W) or not bool(((p >= 0) & (p <= 1)).all()):
                ck.fail("extras", f"at tau={tau}: pvalues must be [H, W] in [0, 1], got {_shape(p)} "
                                  f"in [{float(p.min()):.3g}, {float(p.max()):.3g}]")
        if c.pixel_radius is not None:
            r = c.pixel_radius.double().cpu()
            if tuple(r.shape) != (H, W) or not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
                ck.fail("extras", f"at tau={tau}: pixel_radius must be finite, >= 0, [H, W]; got {_shape(r)}")
            short = (c.labels.cpu() != ABSTAIN) & (r < float(c.radius) - 1e-9)
            if bool(short.any()):
                ck.fail("extras", f"at tau={tau}: {int(short.sum())} certified pixel(s) have pixel_radius below "
                                  f"the certificate's radius {float(c.radius):.4g}")
    ck.ok("extras")
    want_cuda = (devices == "auto" and torch.cuda.is_available()) or (devices != "auto" and "cuda" in devices)
    if want_cuda:
        _, cuda_certs = run("cuda")
        for tau, a, b in zip(request.taus, certs, cuda_certs):
            if b.labels.device.type != "cuda":
                ck.fail("device", f"at tau={tau}: votes on CUDA gave labels on {b.labels.device}")
            if not torch.equal(a.labels, b.labels.cpu()):
                ck.fail("device", f"at tau={tau}: the same votes on CUDA gave other labels than on the CPU")
        ck.ok("device cuda")
        ck.ok("device")
    else:
        ck.skip("device cuda", "CUDA is not available" if not torch.cuda.is_available() else "not asked for")
    _check_bad_options(ck, factory, options, bad_options)
    return ck.report
