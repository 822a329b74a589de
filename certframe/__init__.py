"""certframe: certify medical image segmentation models with randomized smoothing."""
from certframe.core.certificate import Certificate
from certframe.core.smoothing import SmoothedSegmenter
from certframe.hookspecs import hookimpl
from certframe.interfaces import (
                                  ABSTAIN,
                                  Certifier,
                                  CertifyRequest,
                                  Denoiser,
                                  NoiseKey,
                                  Sample,
                                  SegmentationDataset,
                                  Segmenter,
                                  VoteSource,
                                  class_labels,
)

__version__ = "0.1.0"
__all__ = ["ABSTAIN", "Certificate", "Certifier", "CertifyRequest", "Denoiser", "NoiseKey", "Sample",
           "SegmentationDataset", "Segmenter", "SmoothedSegmenter", "VoteSource", "class_labels",
           "hookimpl", "__version__"]
