"""Loaded at start-up by every process `gpu_check.py --cpu-smoke` starts (this folder is first on PYTHONPATH).

- GPU_CHECK_BLOCK=a,b: those modules cannot be imported, as on the GPU machine, where they are not installed. The
  rows prove on this CPU that they never need them.
- GPU_CHECK_COMPILE_BACKEND=aot_eager (what gpu_check.py sets): torch.compile traces with TorchDynamo and
  AOTAutograd, as on the GPU (the joint forward and backward graphs, functionalized and partitioned, that inductor
  gets there), but runs those graphs as ATen ops instead of generating kernels (inductor needs a C++ compiler and
  about a minute per graph on a small CPU). Modes (CUDA graphs, autotuning) belong to inductor and are dropped;
  every other argument (dynamic=False, fullgraph) is passed on.
"""

import importlib.abc
import importlib.util
import os
import sys

for _name in filter(None, os.environ.get("GPU_CHECK_BLOCK", "").split(",")):
    sys.modules[_name] = None  # `import _name` now raises ImportError


class _CompileBackendOnImport(importlib.abc.MetaPathFinder):
    """Sets torch.compile's backend once torch is imported, so processes that never import torch do not pay for it."""

    def __init__(self, backend: str):
        self.backend = backend

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        exec_module = spec.loader.exec_module
        backend = self.backend

        def exec_then_patch(module):
            exec_module(module)
            compile_ = module.compile

            def compile_with_backend(model=None, **kwargs):
                kwargs.pop("mode", None)
                return compile_(model, **{**kwargs, "backend": backend})

            module.compile = compile_with_backend

        spec.loader.exec_module = exec_then_patch
        return spec


if os.environ.get("GPU_CHECK_COMPILE_BACKEND"):
    sys.meta_path.insert(0, _CompileBackendOnImport(os.environ["GPU_CHECK_COMPILE_BACKEND"]))
