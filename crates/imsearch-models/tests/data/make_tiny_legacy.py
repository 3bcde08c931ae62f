"""Writes tiny_legacy.pth: a legacy (pre-zip) PyTorch checkpoint made without torch.

It mirrors `torch.serialization._legacy_save` (protocol 2): the magic number, the
protocol version, the sys-info dict, the state dict (an OrderedDict with `_metadata`,
tensors pickled as `torch._utils._rebuild_tensor_v2` calls whose storages are
persistent ids), the list of storage keys, then each storage as an 8-byte
little-endian element count followed by its little-endian elements.

Run from this folder: `python3 make_tiny_legacy.py` (deterministic output).
"""

import collections
import io
import pickle
import struct
import sys
import types

torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils


def _rebuild_tensor_v2(*args):
    raise NotImplementedError


_rebuild_tensor_v2.__module__ = "torch._utils"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class FloatStorage:
    fmt, elem = "<f", 4


class LongStorage:
    fmt, elem = "<q", 8


for cls in (FloatStorage, LongStorage):
    cls.__module__ = "torch"
    setattr(torch, cls.__name__, cls)


class Storage:
    def __init__(self, kind, key, values):
        self.kind, self.key, self.values = kind, key, values


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce_ex__(self, protocol):
        storage, offset, size, stride = self.args
        return (_rebuild_tensor_v2, (storage, offset, size, stride, False, collections.OrderedDict()))


class LegacyPickler(pickle.Pickler):
    def __init__(self, f):
        super().__init__(f, protocol=2)
        self.keys = []

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            if obj.key not in self.keys:
                self.keys.append(obj.key)
            return ("storage", obj.kind, obj.key, "cpu", len(obj.values), None)
        return None


s0 = Storage(FloatStorage, "140001", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
s1 = Storage(FloatStorage, "140002", [-1.0, -2.0, 0.5, 0.25, 0.125, 8.0, 9.0, 10.0])
s2 = Storage(FloatStorage, "140003", [11.0, 12.0, 13.0, 14.0, 15.0, 16.0])
s3 = Storage(LongStorage, "140004", [7])
s4 = Storage(FloatStorage, "140005", [3.5])

state = collections.OrderedDict()
state["a.weight"] = Tensor(s0, 0, (2, 3), (3, 1))  # contiguous
state["a.view"] = Tensor(s0, 3, (3,), (1,))  # shares s0, offset 3
state["a.bias"] = Tensor(s1, 2, (3,), (1,))  # offset into a longer storage
state["b.weight"] = Tensor(s2, 0, (2, 3), (1, 2))  # transposed (channels-last style)
state["b.kernel"] = Tensor(s2, 0, (3, 1, 2), (1, 6, 3))  # size-1 dim with an odd stride
state["bn.num_batches_tracked"] = Tensor(s3, 0, (), ())  # long, dropped
state["c.scale"] = Tensor(s4, 0, (), ())  # 0-dim float
state._metadata = collections.OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])

out = io.BytesIO()
pickle.dump(0x1950A86A20F9469CFC6C, out, protocol=2)
pickle.dump(1001, out, protocol=2)
pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, out, protocol=2)
pickler = LegacyPickler(out)
pickler.dump(state)
pickle.dump(pickler.keys, out, protocol=2)
storages = {s.key: s for s in (s0, s1, s2, s3, s4)}
for key in pickler.keys:
    s = storages[key]
    out.write(struct.pack("<q", len(s.values)))
    for v in s.values:
        out.write(struct.pack(s.kind.fmt, v))

with open("tiny_legacy.pth", "wb") as f:
    f.write(out.getvalue())
