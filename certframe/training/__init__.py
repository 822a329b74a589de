"""Training: the segmenter and DDPM trainers' shared machinery.

=============  ======================================================================
module         what it owns
=============  ======================================================================
``segmenter``  :func:`train_segmenter` (Dice + cross-entropy, Adam, early stopping)
``resume``     resuming bit for bit: the state folder (atomic, refuses a clash of settings),
               optimizer and generator states, the clock, Ctrl-C deferred to a step's end
``device``     data on the device, draws by step from the Philox stream, precision
``tuning``     validation-driven schedules (early stopping, LR plateau)
=============  ======================================================================

The DDPM trainer is the ``ddpm`` denoiser plugin's (``certframe.plugins.denoisers.ddpm_training``)
and uses the same ``resume`` and ``device`` modules.
"""
from certframe.training.segmenter import TrainResult, train_segmenter

__all__ = ["TrainResult", "train_segmenter"]
