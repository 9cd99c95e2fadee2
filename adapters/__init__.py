"""Adapters: third-party models (PyTorch modules, ONNX files) as :class:`lipcert.Network`.

Import the submodule you need; nothing here imports onnx or traces torch on package import.

* :mod:`lipcert.adapters.files` -- ``read``: a model file by its suffix (what :func:`lipcert.load` uses)
* :mod:`lipcert.adapters.torch` -- ``from_module``, ``analyze_module``, ``to_network``
* :mod:`lipcert.adapters.onnx` -- ``from_onnx``, ``analyze_onnx``, ``to_network``
* :mod:`lipcert.adapters.graph` -- the layer chain, dense materialization and its size check
* :mod:`lipcert.adapters.common` -- prepended normalization, input range, conversion check
* :mod:`lipcert.adapters.modules` -- leaf float64 ``nn.Module`` builders (reshape, scale, convolution)
* :mod:`lipcert.adapters.rebuild` -- ``to_torch``: a model as a float64 ``nn.Sequential``
* :mod:`lipcert.adapters.lirpa` -- auto_LiRPA on the rebuilt model
* :mod:`lipcert.adapters.vnnlib` -- VNN-LIB properties

Most users call :func:`lipcert.load`, which dispatches to these.
"""
