"""Training: the segmenter and DDPM trainers' shared machinery.

=============  ======================================================================
module         what it owns
=============  ======================================================================
``segmenter``  :func:`train_segmenter` (Dice + cross-entropy, Adam, early stopping)
``state``      resumable training states (atomic, refuses a clash of settings)
``device``     data on the device, draws by step from the Philox stream, precision
``tuning``     validation-driven schedules (early stopping, LR plateau)
=============  ======================================================================

The DDPM trainer is the ``ddpm`` denoiser plugin's (``certframe.plugins.denoisers.ddpm_training``)
and uses the same ``state`` and ``device`` modules.
"""
from certframe.training.segmenter import TrainResult, train_segmenter

__all__ = ["TrainResult", "train_segmenter"]
