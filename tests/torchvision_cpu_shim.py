"""Let the PyPI (CUDA-linked) torchvision import on a CPU-only torch.

torchvision's _C extension needs libtorch_cuda.so, so it fails to load on torch+cpu; torchvision swallows that, but
_meta_registrations.py then calls torch.library.register_fake("torchvision::nms"/"qnms") unconditionally and the import
dies with "operator torchvision::nms does not exist". This hook defines the two schemas (no kernels) just before that
module runs, only when the extension did not load. torchvision.ops.nms stays unusable; nothing MONAI Label's bundle
path needs uses it.
"""

import importlib.abc
import sys


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torchvision._meta_registrations":
            return None
        try:
            import torch
            import torchvision.extension as ext

            if not ext._has_ops():
                lib = torch.library.Library("torchvision", "FRAGMENT")
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                _keep.append(lib)
        except Exception:  # never break an import because of the shim
            pass
        return None


_keep = []
sys.meta_path.insert(0, _Finder())
