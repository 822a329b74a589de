"""An example third-party certframe plugin: one segmenter and one data set.

certframe finds this module through the ``certframe`` entry point declared in this
package's ``pyproject.toml``; pluggy calls the hook functions below with a
``register(name, factory, summary=None)`` callback. Each factory is called later
with the user's ``--segmenter-option`` / ``--dataset-option`` values as keyword
arguments (``weights=model.safetensors`` arrives as ``weights="model.safetensors"``).

* ``example-cnn``  :class:`~certframe_example_plugin.segmenter.TinyCNN`, weights from
  a safetensors file passed with ``--segmenter-option weights=PATH``.
* ``example-csv``  :class:`~certframe_example_plugin.dataset.CSVDataset`, images and
  masks listed in a CSV file under ``--dataset-option root=FOLDER``.

Imports of torch-heavy modules happen inside the hooks, so ``certframe --help``
stays fast and a missing optional dependency is reported by ``certframe plugins``
instead of breaking the tool.
"""
from certframe import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_segmenters(register):
    from .segmenter import TinyCNN

    register("example-cnn", TinyCNN)


@hookimpl
def register_datasets(register):
    from .dataset import CSVDataset

    register("example-csv", CSVDataset)
