//! A minimal pickle reader for the opcodes that PyTorch's legacy checkpoints use (protocol 2).
//!
//! Lists and dicts live in an arena so that memoised references share them as Python does.
//! Callables are never run: `REDUCE` yields a [`Value::Call`] the caller interprets, except
//! `collections.OrderedDict()`, which becomes an empty dict. `BUILD` on a dict (the
//! `_metadata` attribute of a state dict) is accepted and its state dropped.
//!
//! candle's `pickle::Stack` is not used: it panics on the 10-byte `LONG1` of the legacy magic
//! number in builds with overflow checks and reports errors without a byte offset.

use std::collections::HashMap;

/// A failure to read a pickle: the byte offset (from the start of the whole buffer) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PickleError {
    pub(crate) offset: usize,
    pub(crate) reason: String,
}

type PResult<T> = std::result::Result<T, PickleError>;

/// A Python value as far as this reader understands it.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum Value {
    #[default]
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits: little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Str(String),
    /// A `GLOBAL` reference, e.g. `torch._utils` / `_rebuild_tensor_v2`.
    Global {
        module: String,
        name: String,
    },
    Tuple(Vec<Value>),
    /// Index into [`Unpickled::lists`].
    List(usize),
    /// Index into [`Unpickled::dicts`].
    Dict(usize),
    /// `callable(*args)`, not evaluated.
    Call {
        callable: Box<Value>,
        args: Box<Value>,
    },
    /// A persistent id (`BINPERSID`): the storage reference of a PyTorch checkpoint.
    PersistentId(Box<Value>),
    /// The `MARK` sentinel; never escapes a well-formed pickle.
    Mark,
}

/// The result of one pickle: its root value and the containers it refers to.
#[derive(Debug, Default)]
pub(crate) struct Unpickled {
    pub(crate) root: Value,
    pub(crate) lists: Vec<Vec<Value>>,
    pub(crate) dicts: Vec<Vec<(Value, Value)>>,
}

impl Unpickled {
    /// The entries of `value` if it is a dict, in insertion order.
    pub(crate) fn dict<'a>(&'a self, value: &Value) -> Option<&'a [(Value, Value)]> {
        match value {
            Value::Dict(i) => self.dicts.get(*i).map(Vec::as_slice),
            _ => None,
        }
    }

    /// The items of `value` if it is a list.
    pub(crate) fn list<'a>(&'a self, value: &Value) -> Option<&'a [Value]> {
        match value {
            Value::List(i) => self.lists.get(*i).map(Vec::as_slice),
            _ => None,
        }
    }

    /// Looks up a string key in a dict value.
    pub(crate) fn get<'a>(&'a self, dict: &Value, key: &str) -> Option<&'a Value> {
        self.dict(dict)?.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v)
    }
}

/// Reads one pickle starting at `start` in `data`; returns it and the offset just past `STOP`.
pub(crate) fn load(data: &[u8], start: usize) -> PResult<(Unpickled, usize)> {
    let mut m =
        Machine { data, pos: start, op_pos: start, stack: Vec::new(), memo: HashMap::new(), out: Unpickled::default() };
    m.run()?;
    Ok((m.out, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for errors.
    op_pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    out: Unpickled,
}

impl Machine<'_> {
    fn err<T>(&self, reason: impl Into<String>) -> PResult<T> {
        Err(PickleError { offset: self.op_pos, reason: reason.into() })
    }

    fn take(&mut self, n: usize) -> PResult<&[u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                let bytes = &self.data[self.pos..end];
                self.pos = end;
                Ok(bytes)
            }
            _ => Err(PickleError { offset: self.pos, reason: format!("truncated pickle: needed {n} more bytes") }),
        }
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("truncated pickle: unterminated GLOBAL name");
        };
        let text = match std::str::from_utf8(&rest[..n]) {
            Ok(s) => s.to_owned(),
            Err(_) => return self.err("GLOBAL name is not UTF-8"),
        };
        self.pos += n + 1;
        Ok(text)
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> PResult<Value> {
        match self.stack.pop() {
            Some(Value::Mark) => self.err("unexpected MARK on the stack"),
            Some(v) => Ok(v),
            None => self.err("pop from an empty stack"),
        }
    }

    fn top(&mut self) -> PResult<&mut Value> {
        match self.stack.last_mut() {
            Some(v) => Ok(v),
            None => Err(PickleError { offset: self.op_pos, reason: "empty stack".into() }),
        }
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let Some(mark) = self.stack.iter().rposition(|v| matches!(v, Value::Mark)) else {
            return self.err("no MARK on the stack");
        };
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top_list(&mut self) -> PResult<usize> {
        match self.top()? {
            Value::List(i) => Ok(*i),
            other => {
                let other = format!("{other:?}");
                self.err(format!("APPEND to a non-list {other}"))
            }
        }
    }

    fn top_dict(&mut self) -> PResult<usize> {
        match self.top()? {
            Value::Dict(i) => Ok(*i),
            other => {
                let other = format!("{other:?}");
                self.err(format!("SETITEM on a non-dict {other}"))
            }
        }
    }

    fn memo_put(&mut self, idx: u32) -> PResult<()> {
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> PResult<()> {
        match self.memo.get(&idx) {
            Some(v) => {
                let v = v.clone();
                self.push(v);
                Ok(())
            }
            None => self.err(format!("memo entry {idx} was never stored")),
        }
    }

    fn new_dict(&mut self) -> Value {
        self.out.dicts.push(Vec::new());
        Value::Dict(self.out.dicts.len() - 1)
    }

    fn run(&mut self) -> PResult<()> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                // STOP
                b'.' => {
                    let root = self.pop()?;
                    if !self.stack.is_empty() {
                        return self.err(format!("{} values left on the stack at STOP", self.stack.len()));
                    }
                    self.out.root = root;
                    return Ok(());
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v.into()))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()))
                }
                // LONG1
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let bytes = self.take(n)?.to_vec();
                    self.push(long_from_le(bytes))
                }
                // BINUNICODE
                b'X' => {
                    let n = self.u32()? as usize;
                    let bytes = self.take(n)?;
                    match std::str::from_utf8(bytes) {
                        Ok(s) => {
                            let s = s.to_owned();
                            self.push(Value::Str(s))
                        }
                        Err(_) => return self.err("BINUNICODE string is not UTF-8"),
                    }
                }
                // GLOBAL
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global { module, name })
                }
                b'(' => self.push(Value::Mark),
                b')' => self.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items))
                }
                b']' => {
                    self.out.lists.push(Vec::new());
                    self.push(Value::List(self.out.lists.len() - 1))
                }
                b'a' => {
                    let v = self.pop()?;
                    let i = self.top_list()?;
                    self.out.lists[i].push(v)
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let i = self.top_list()?;
                    self.out.lists[i].extend(items)
                }
                b'}' => {
                    let d = self.new_dict();
                    self.push(d)
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let i = self.top_dict()?;
                    self.out.dicts[i].push((k, v))
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.err("SETITEMS with an odd number of values");
                    }
                    let i = self.top_dict()?;
                    let mut items = items.into_iter();
                    while let (Some(k), Some(v)) = (items.next(), items.next()) {
                        self.out.dicts[i].push((k, v));
                    }
                }
                // BINPUT, LONG_BINPUT, BINGET, LONG_BINGET
                b'q' => {
                    let idx = self.u8()?;
                    self.memo_put(idx.into())?
                }
                b'r' => {
                    let idx = self.u32()?;
                    self.memo_put(idx)?
                }
                b'h' => {
                    let idx = self.u8()?;
                    self.memo_get(idx.into())?
                }
                b'j' => {
                    let idx = self.u32()?;
                    self.memo_get(idx)?
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::PersistentId(Box::new(pid)))
                }
                // REDUCE
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = match (&callable, &args) {
                        (Value::Global { module, name }, Value::Tuple(a))
                            if module == "collections" && name == "OrderedDict" && a.is_empty() =>
                        {
                            self.new_dict()
                        }
                        _ => Value::Call { callable: Box::new(callable), args: Box::new(args) },
                    };
                    self.push(v)
                }
                // BUILD: only `obj.__dict__.update(state)` on a dict, whose state is dropped.
                b'b' => {
                    let _state = self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        return self.err("BUILD is only supported on dicts");
                    }
                }
                other => return self.err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }
}

/// Decodes a little-endian two's complement integer of any width.
fn long_from_le(bytes: Vec<u8>) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(bytes);
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut buf = if negative { [0xff; 8] } else { [0; 8] };
    buf[..bytes.len()].copy_from_slice(&bytes);
    Value::Int(i64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(bytes: &[u8], expected: Value) {
        let (u, end) = load(bytes, 0).unwrap();
        assert_eq!(u.root, expected);
        assert_eq!(end, bytes.len());
    }

    #[track_caller]
    fn check_err(bytes: &[u8], offset: usize, reason: &str) {
        let e = load(bytes, 0).unwrap_err();
        assert_eq!(e.offset, offset, "{e:?}");
        assert!(e.reason.contains(reason), "{e:?}");
    }

    #[test]
    fn scalars() {
        check(b"\x80\x02K\x07.", Value::Int(7));
        check(b"\x80\x02M\xe9\x03.", Value::Int(1001));
        check(b"\x80\x02J\xff\xff\xff\xff.", Value::Int(-1));
        check(b"\x80\x02\x8a\x02\xff\x7f.", Value::Int(0x7fff));
        check(b"\x80\x02\x8a\x01\xff.", Value::Int(-1));
        check(b"\x80\x02\x8a\x00.", Value::Int(0));
        check(b"\x80\x02X\x03\x00\x00\x00cpu.", Value::Str("cpu".into()));
        check(b"\x80\x02\x88.", Value::Bool(true));
        check(b"N.", Value::None);
    }

    #[test]
    fn legacy_magic_number_is_a_big_int() {
        // `pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)`
        let bytes = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        check(bytes, Value::BigInt(vec![0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]));
    }

    #[test]
    fn tuples_and_memo() {
        let t = |v: Vec<i64>| Value::Tuple(v.into_iter().map(Value::Int).collect());
        check(b"\x80\x02(K\x01K\x02K\x03t.", t(vec![1, 2, 3]));
        check(b"K\x01K\x02\x86.", t(vec![1, 2]));
        check(b"K\x01\x85q\x00h\x00\x86.", Value::Tuple(vec![t(vec![1]), t(vec![1])]));
        check(b"K\x01r\x05\x00\x00\x00j\x05\x00\x00\x00\x86.", t(vec![1, 1]));
    }

    #[test]
    fn memoised_containers_are_shared() {
        // l = []; d = {'k': l}; l.append(5) -> the dict sees the appended item.
        let bytes = b"\x80\x02(}q\x00X\x01\x00\x00\x00k]q\x01sh\x01K\x05ah\x00t.";
        let (u, _) = load(bytes, 0).unwrap();
        let Value::Tuple(items) = &u.root else { panic!("{:?}", u.root) };
        let d = &items[2];
        let l = u.get(d, "k").unwrap();
        assert_eq!(u.list(l).unwrap(), &[Value::Int(5)]);
    }

    #[test]
    fn ordered_dict_reduce_and_build() {
        // OrderedDict() with one item and a `_metadata` state, as torch writes state dicts.
        let bytes = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aK\x01s}X\x09\x00\x00\x00_metadatah\x00)Rsb.";
        let (u, _) = load(bytes, 0).unwrap();
        assert_eq!(u.dict(&u.root).unwrap(), &[(Value::Str("a".into()), Value::Int(1))]);
    }

    #[test]
    fn errors_carry_offsets() {
        check_err(b"\x80\x02K", 3, "truncated");
        check_err(b"\x80\x02X\xff\x00\x00\x00ab", 7, "truncated");
        check_err(b"\x80\x02K\x01\x00", 4, "unsupported pickle opcode 0x00");
        check_err(b"\x80\x02h\x03.", 2, "memo entry 3");
        check_err(b"\x80\x02K\x01K\x02.", 6, "left on the stack");
        check_err(b"\x80\x02K\x00K\x01K\x02s.", 8, "non-dict");
        check_err(b"\x80\x02t.", 2, "no MARK");
        check_err(b"\x80\x09.", 0, "protocol 9");
    }
}
