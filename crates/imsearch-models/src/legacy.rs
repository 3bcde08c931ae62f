//! Reads legacy (pre-zip) PyTorch checkpoints and converts their f32 tensors to safetensors.
//!
//! The layout, from `torch.serialization._legacy_save` (pickle protocol 2): a pickle of the magic
//! number `0x1950a86a20f9469cfc6c`, a pickle of the protocol version `1001`, a pickle of the
//! sys-info dict, the pickled state dict, a pickle with the list of storage keys, then for each
//! key its storage: an 8-byte little-endian element count and the little-endian elements.
//!
//! In the state dict each tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size,
//! stride, requires_grad, hooks)` and each storage the persistent id `('storage', <XStorage>, key,
//! location, numel, view_metadata)`. Tensors are gathered through offset and stride into
//! contiguous row-major data (the EfficientNet-Lite files store their kernels channels-last);
//! `*.num_batches_tracked` entries are dropped; any other non-f32 tensor is an error. Names are
//! kept exactly as in the file.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, View};

use crate::pickle::{self, PickleError, Value};
use crate::{Error, Result};

/// The little-endian bytes of the legacy magic number `0x1950a86a20f9469cfc6c`.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

/// A contiguous row-major f32 tensor as little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    pub shape: Vec<usize>,
    /// `shape.iter().product() * 4` little-endian bytes.
    pub data: Vec<u8>,
}

impl F32Tensor {
    /// The values, for inspection and tests.
    pub fn to_vec(&self) -> Vec<f32> {
        self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

impl View for &F32Tensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Reads every f32 tensor of a legacy checkpoint, in file order. `origin` names the file in errors.
pub fn read_legacy_checkpoint(bytes: &[u8], origin: &Path) -> Result<Vec<(String, F32Tensor)>> {
    read(bytes).map_err(|e| Error::Checkpoint { path: origin.to_owned(), offset: e.offset as u64, reason: e.reason })
}

/// Converts a legacy checkpoint to the bytes of a safetensors file (f32, names as in the file,
/// no metadata). The output depends only on the input: converting twice gives the same bytes.
pub fn convert_legacy_checkpoint(bytes: &[u8], origin: &Path) -> Result<Vec<u8>> {
    let tensors = read_legacy_checkpoint(bytes, origin)?;
    to_safetensors(&tensors, origin)
}

/// Serialises tensors as safetensors bytes (sorted by name, no metadata).
pub(crate) fn to_safetensors(tensors: &[(String, F32Tensor)], origin: &Path) -> Result<Vec<u8>> {
    safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), &None)
        .map_err(|source| Error::Safetensors { path: origin.to_owned(), source })
}

type PResult<T> = std::result::Result<T, PickleError>;

fn fail<T>(offset: usize, reason: impl Into<String>) -> PResult<T> {
    Err(PickleError { offset, reason: reason.into() })
}

/// A tensor entry of the state dict, before its storage is read.
struct Entry {
    name: String,
    storage: String,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// A storage as the persistent ids describe it.
struct StorageInfo {
    class: String,
    numel: usize,
}

fn read(bytes: &[u8]) -> PResult<Vec<(String, F32Tensor)>> {
    if bytes.starts_with(b"PK\x03\x04") {
        return fail(0, "this is a zip-format checkpoint (PyTorch 1.6+), not a legacy one");
    }
    let (magic, pos) = pickle::load(bytes, 0)?;
    if magic.root != Value::BigInt(MAGIC.to_vec()) {
        return fail(0, "bad magic number: not a legacy PyTorch checkpoint");
    }
    let version_pos = pos;
    let (version, pos) = pickle::load(bytes, pos)?;
    if version.root != Value::Int(PROTOCOL_VERSION) {
        return fail(version_pos, format!("unsupported protocol version {:?} (want 1001)", version.root));
    }
    let sys_pos = pos;
    let (sys, pos) = pickle::load(bytes, pos)?;
    if sys.get(&sys.root, "little_endian") != Some(&Value::Bool(true)) {
        return fail(sys_pos, "the checkpoint was not written on a little-endian machine");
    }
    let dict_pos = pos;
    let (state, pos) = pickle::load(bytes, pos)?;
    let keys_pos = pos;
    let (keys, mut pos) = pickle::load(bytes, pos)?;
    let Some(keys) = keys.list(&keys.root) else { return fail(keys_pos, "the storage keys are not a list") };

    let Some(items) = state.dict(&state.root) else { return fail(dict_pos, "the checkpoint is not a state dict") };
    let mut entries = Vec::with_capacity(items.len());
    let mut storages: HashMap<String, StorageInfo> = HashMap::new();
    for (name, value) in items {
        let Value::Str(name) = name else { return fail(dict_pos, format!("state dict key {name:?} is not a string")) };
        let Some((entry, info)) = tensor_entry(name, value)
            .map_err(|reason| PickleError { offset: dict_pos, reason: format!("tensor `{name}`: {reason}") })?
        else {
            tracing::warn!(name, "skipping a state dict entry that is not a tensor");
            continue;
        };
        match storages.get(&entry.storage) {
            Some(seen) if seen.class != info.class || seen.numel != info.numel => {
                return fail(
                    dict_pos,
                    format!("tensor `{name}`: storage {} is described twice differently", entry.storage),
                );
            }
            Some(_) => {}
            None => {
                storages.insert(entry.storage.clone(), info);
            }
        }
        entries.push(entry);
    }

    // The raw storages, in the order of the key list.
    let mut data: HashMap<&str, &[u8]> = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else { return fail(keys_pos, format!("storage key {key:?} is not a string")) };
        let Some(info) = storages.get(key) else {
            return fail(keys_pos, format!("storage {key} is used by no tensor, so its element size is unknown"));
        };
        let elem = element_size(&info.class).ok_or_else(|| PickleError {
            offset: dict_pos,
            reason: format!("storage {key}: unsupported storage type {}", info.class),
        })?;
        let Some(count) = bytes.get(pos..pos + 8) else { return fail(pos, "truncated storage header") };
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        if count != info.numel as u64 {
            return fail(pos, format!("storage {key} holds {count} elements, the state dict says {}", info.numel));
        }
        let start = pos + 8;
        let end = info.numel.checked_mul(elem).and_then(|n| n.checked_add(start)).filter(|&e| e <= bytes.len());
        let Some(end) = end else { return fail(start, format!("storage {key} is truncated")) };
        data.insert(key.as_str(), &bytes[start..end]);
        pos = end;
    }
    if pos != bytes.len() {
        return fail(pos, format!("{} unexpected bytes after the last storage", bytes.len() - pos));
    }

    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let info = &storages[&e.storage];
        if e.name.ends_with("num_batches_tracked") {
            tracing::trace!(name = e.name, "dropping");
            continue;
        }
        if info.class != "FloatStorage" {
            return fail(dict_pos, format!("tensor `{}`: {} is not supported (only f32)", e.name, info.class));
        }
        let Some(storage) = data.get(e.storage.as_str()) else {
            return fail(keys_pos, format!("tensor `{}`: storage {} is not in the key list", e.name, e.storage));
        };
        let tensor = gather_f32(storage, info.numel, e.offset, &e.size, &e.stride)
            .map_err(|reason| PickleError { offset: dict_pos, reason: format!("tensor `{}`: {reason}", e.name) })?;
        out.push((e.name, tensor));
    }
    Ok(out)
}

/// Interprets one state dict value: `Ok(None)` if it is not a tensor.
fn tensor_entry(name: &str, value: &Value) -> std::result::Result<Option<(Entry, StorageInfo)>, String> {
    let Value::Call { callable, args } = value else { return Ok(None) };
    let (callable, args) = match (&**callable, &**args) {
        // `_rebuild_parameter(tensor, requires_grad, hooks)` wraps the tensor of an nn.Parameter.
        (Value::Global { module, name: f }, Value::Tuple(a))
            if module == "torch._utils" && f == "_rebuild_parameter" =>
        {
            match a.first() {
                Some(Value::Call { callable, args }) => (&**callable, &**args),
                _ => return Err("malformed _rebuild_parameter".into()),
            }
        }
        (c, a) => (c, a),
    };
    match callable {
        Value::Global { module, name: f } if module == "torch._utils" && f == "_rebuild_tensor_v2" => {}
        Value::Global { module, name: f } => return Err(format!("unsupported tensor constructor {module}.{f}")),
        _ => return Ok(None),
    }
    let Value::Tuple(args) = args else { return Err("_rebuild_tensor_v2 arguments are not a tuple".into()) };
    let [Value::PersistentId(pid), offset, size, stride, ..] = args.as_slice() else {
        return Err(format!("unexpected _rebuild_tensor_v2 arguments {args:?}"));
    };
    let Value::Tuple(pid) = &**pid else { return Err(format!("unexpected persistent id {pid:?}")) };
    let [Value::Str(tag), Value::Global { name: class, .. }, Value::Str(key), _location, numel, view] = pid.as_slice()
    else {
        return Err(format!("unexpected persistent id {pid:?}"));
    };
    if tag != "storage" {
        return Err(format!("unexpected persistent id tag {tag:?}"));
    }
    if *view != Value::None {
        return Err("storage views (view_metadata) are not supported".into());
    }
    let entry = Entry {
        name: name.to_owned(),
        storage: key.clone(),
        offset: non_negative(offset, "offset")?,
        size: dims(size, "size")?,
        stride: dims(stride, "stride")?,
    };
    if entry.size.len() != entry.stride.len() {
        return Err(format!("size {:?} and stride {:?} differ in rank", entry.size, entry.stride));
    }
    Ok(Some((entry, StorageInfo { class: class.clone(), numel: non_negative(numel, "numel")? })))
}

fn non_negative(v: &Value, what: &str) -> std::result::Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("negative {what} {i}")),
        other => Err(format!("{what} is not an integer: {other:?}")),
    }
}

fn dims(v: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) => items.iter().map(|i| non_negative(i, what)).collect(),
        other => Err(format!("{what} is not a tuple: {other:?}")),
    }
}

/// Bytes per element of a PyTorch storage class.
fn element_size(class: &str) -> Option<usize> {
    Some(match class {
        "DoubleStorage" | "LongStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
        _ => return None,
    })
}

/// Gathers the f32 view `(offset, size, stride)` of a storage of `numel` elements (little-endian
/// bytes) into a contiguous row-major tensor.
fn gather_f32(
    storage: &[u8],
    numel: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
) -> std::result::Result<F32Tensor, String> {
    const E: usize = 4;
    let n = size.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or("size overflows")?;
    let shape = size.to_vec();
    if n == 0 {
        return Ok(F32Tensor { shape, data: Vec::new() });
    }
    let last = size
        .iter()
        .zip(stride)
        .try_fold(offset, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| x.checked_add(acc)))
        .ok_or("strides overflow")?;
    if last >= numel || storage.len() != numel * E {
        return Err(format!(
            "view (offset {offset}, size {size:?}, stride {stride:?}) reaches element {last} of a storage of {numel}"
        ));
    }
    let contiguous = {
        let mut expected = 1;
        size.iter().zip(stride).rev().all(|(&d, &s)| {
            let ok = d == 1 || s == expected;
            expected *= d;
            ok
        })
    };
    if contiguous {
        return Ok(F32Tensor { shape, data: storage[offset * E..(offset + n) * E].to_vec() });
    }
    let mut data = Vec::with_capacity(n * E);
    let mut index = vec![0usize; size.len()];
    let mut src = offset;
    for _ in 0..n {
        data.extend_from_slice(&storage[src * E..src * E + E]);
        // Odometer step over the dims, last fastest.
        for d in (0..size.len()).rev() {
            index[d] += 1;
            src += stride[d];
            if index[d] < size[d] {
                break;
            }
            src -= stride[d] * size[d];
            index[d] = 0;
        }
    }
    Ok(F32Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by `tests/data/make_tiny_legacy.py` (Python's pickle, no torch).
    const TINY: &[u8] = include_bytes!("../tests/data/tiny_legacy.pth");

    fn tiny() -> Vec<(String, F32Tensor)> {
        read_legacy_checkpoint(TINY, Path::new("tiny_legacy.pth")).unwrap()
    }

    #[track_caller]
    fn check(name: &str, shape: &[usize], values: &[f32]) {
        let tensors = tiny();
        let (_, t) = tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}"));
        assert_eq!(t.shape, shape, "{name}");
        let got = t.to_vec();
        assert_eq!(got.len(), values.len(), "{name}");
        for (g, v) in got.iter().zip(values) {
            assert!((g - v).abs() < 1e-6, "{name}: {got:?} != {values:?}");
        }
    }

    #[test]
    fn tiny_checkpoint_tensors() {
        check("a.weight", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        check("a.view", &[3], &[4.0, 5.0, 6.0]);
        check("a.bias", &[3], &[0.5, 0.25, 0.125]);
        check("b.weight", &[2, 3], &[11.0, 13.0, 15.0, 12.0, 14.0, 16.0]);
        check("b.kernel", &[3, 1, 2], &[11.0, 14.0, 12.0, 15.0, 13.0, 16.0]);
        check("c.scale", &[], &[3.5]);
    }

    #[test]
    fn tiny_checkpoint_keeps_order_and_drops_num_batches_tracked() {
        let names: Vec<_> = tiny().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a.weight", "a.view", "a.bias", "b.weight", "b.kernel", "c.scale"]);
    }

    #[test]
    fn conversion_round_trips_through_safetensors_and_is_deterministic() {
        let origin = Path::new("tiny_legacy.pth");
        let bytes = convert_legacy_checkpoint(TINY, origin).unwrap();
        assert_eq!(bytes, convert_legacy_checkpoint(TINY, origin).unwrap());
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names = st.names();
        names.sort();
        assert_eq!(names, ["a.bias", "a.view", "a.weight", "b.kernel", "b.weight", "c.scale"]);
        let kernel = st.tensor("b.kernel").unwrap();
        assert_eq!((kernel.dtype(), kernel.shape()), (Dtype::F32, &[3usize, 1, 2][..]));
        let want: Vec<u8> = [11.0f32, 14.0, 12.0, 15.0, 13.0, 16.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(kernel.data(), &want[..]);
    }

    #[track_caller]
    fn check_err(bytes: &[u8], reason: &str) {
        let err = read_legacy_checkpoint(bytes, Path::new("bad.pth")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Checkpoint { .. }), "{err:?}");
        assert!(msg.contains("bad.pth") && msg.contains(reason), "{msg}");
    }

    #[test]
    fn malformed_checkpoints_are_errors() {
        check_err(b"PK\x03\x04rest", "zip-format");
        check_err(b"\x80\x02K\x07.", "bad magic number");
        check_err(&TINY[..TINY.len() - 3], "truncated");
        check_err(&TINY[..200], "truncated pickle");
        let mut longer = TINY.to_vec();
        longer.push(0);
        check_err(&longer, "1 unexpected bytes");
    }

    #[test]
    fn gather_checks_bounds_and_follows_strides() {
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = gather_f32(&storage, 6, 0, &[3, 2], &[1, 3]).unwrap();
        assert_eq!(t.to_vec(), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let t = gather_f32(&storage, 6, 1, &[2, 2], &[3, 1]).unwrap();
        assert_eq!(t.to_vec(), [1.0, 2.0, 4.0, 5.0]);
        let t = gather_f32(&storage, 6, 0, &[0, 4], &[4, 1]).unwrap();
        assert!(t.data.is_empty());
        let err = gather_f32(&storage, 6, 1, &[2, 3], &[3, 1]).unwrap_err();
        assert!(err.contains("reaches element 6"), "{err}");
    }
}
