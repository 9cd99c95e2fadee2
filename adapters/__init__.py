"""Adapters: third-party models (PyTorch modules, ONNX files) as :class:`lipcert.Network`.

Import the submodule you need; nothing here imports onnx or traces torch on package import.

* :mod:`lipcert.adapters.torch` -- ``from_module``, ``from_file``, ``analyze_module``
* :mod:`lipcert.adapters.onnx` -- ``from_onnx``, ``analyze_onnx``
* :mod:`lipcert.adapters.graph` -- the layer chain, dense materialization and its size check
* :mod:`lipcert.adapters.common` -- prepended normalization, input range, conversion check

Most users call :func:`lipcert.load`, which dispatches to these.
"""
