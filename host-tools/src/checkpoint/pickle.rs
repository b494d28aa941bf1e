//! A restricted unpickler for the `data.pkl` of torch zip checkpoints.
//!
//! It builds plain values (ints, strings, tuples, lists, dicts) in an arena and knows exactly the
//! globals a `state_dict` pickle uses: `collections.OrderedDict`, the `torch._utils._rebuild_*`
//! functions, storage classes and dtypes. Any other global is refused by name when the pickle
//! names it, before anything could call it; nothing is executed or emulated. Every length read
//! from the pickle is checked against the bytes left before it is used.

use std::collections::HashMap;

use super::{one_line, DType};

/// A tensor as the pickle describes it: a strided view of a storage file.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TensorRef {
    /// Storage file name under `<archive>/data/`.
    pub key: String,
    pub dtype: DType,
    /// In elements of `dtype`.
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// Index of a value in the arena.
type Id = usize;

/// Longest storage key accepted (torch writes decimal counters).
const MAX_KEY_LEN: usize = 256;
/// Longest tensor name accepted.
const MAX_NAME_LEN: usize = 4096;
/// Most dimensions a tensor may have.
const MAX_DIMS: usize = 64;

/// A tensor inside the arena: ids of its already-validated parts, so that rebuilding the same
/// tensor many times (through the memo) costs a few words each, never a copy of its strings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct TensorSpec {
    /// The `Value::Storage` it views.
    storage: Id,
    dtype: DType,
    offset: usize,
    /// Tuples of non-negative ints of equal length (at most `MAX_DIMS`).
    size: Id,
    stride: Id,
}

/// The globals a state_dict pickle may name. Everything else is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch.FloatStorage` & co. (`Some(dtype)`) or `torch.UntypedStorage` (`None`).
    StorageType(Option<DType>),
    Dtype(DType),
    /// `_codecs.encode(str, "latin1")`: how protocol 2 pickles `bytes`.
    CodecsEncode,
}

impl Global {
    /// The Python name, for error messages.
    fn python_name(self) -> &'static str {
        match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
            Global::RebuildTensorV3 => "torch._utils._rebuild_tensor_v3",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state",
            Global::StorageType(_) => "a torch storage class",
            Global::Dtype(_) => "a torch dtype",
            Global::CodecsEncode => "_codecs.encode",
        }
    }
}

/// A value built by the unpickler. Containers hold ids, so shared and mutated objects behave as
/// in Python without reference counting, and dropping the arena never recurses.
#[derive(Debug, Clone)]
enum Value {
    None,
    // Payloads of values the reader never inspects are kept for Debug output only.
    Bool(#[allow(dead_code)] bool),
    Int(i64),
    Float(#[allow(dead_code)] f64),
    Str(String),
    /// Bytes are never inspected, so their content is not kept.
    Bytes,
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Global(Global),
    /// A persistent id `('storage', type, key, location, numel)`; `key` is a `Value::Str`.
    Storage {
        key: Id,
        dtype: Option<DType>,
    },
    Tensor(TensorSpec),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::Global(_) => "global",
            Value::Storage { .. } => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

#[derive(Debug)]
pub(super) enum PickleError {
    /// A global outside the allow-list (`module.name`).
    Refused(String),
    Bad {
        offset: usize,
        detail: String,
    },
}

/// The decoded pickle: an arena of values and the id of the object STOP returned.
pub(super) struct Unpickled {
    values: Vec<Value>,
    root: Id,
}

fn resolve_global(module: &str, name: &str) -> Result<Global, PickleError> {
    let global = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch" | "torch.storage", "UntypedStorage") => Global::StorageType(None),
        ("_codecs", "encode") => Global::CodecsEncode,
        ("torch", name) => match (storage_dtype(name), dtype_by_name(name)) {
            (Some(d), _) => Global::StorageType(Some(d)),
            (None, Some(d)) => Global::Dtype(d),
            (None, None) => return Err(PickleError::Refused(one_line(&format!("{module}.{name}")))),
        },
        _ => return Err(PickleError::Refused(one_line(&format!("{module}.{name}")))),
    };
    Ok(global)
}

/// `torch.<X>Storage` class names (what torch.save writes for typed storages).
fn storage_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        _ => return None,
    })
}

/// `torch.<dtype>` objects (pickled by name, used by `_rebuild_tensor_v3`).
fn dtype_by_name(name: &str) -> Option<DType> {
    Some(match name {
        "float32" | "float" => DType::F32,
        "float16" | "half" => DType::F16,
        "bfloat16" => DType::BF16,
        "float64" | "double" => DType::F64,
        "int64" | "long" => DType::I64,
        "int32" | "int" => DType::I32,
        "int16" | "short" => DType::I16,
        "int8" => DType::I8,
        "uint8" => DType::U8,
        "uint16" => DType::U16,
        "uint32" => DType::U32,
        "uint64" => DType::U64,
        "bool" => DType::Bool,
        _ => return None,
    })
}

/// Runs the pickle machine over `data` and returns the arena.
pub(super) fn unpickle(data: &[u8]) -> Result<Unpickled, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        values: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    Ok(Unpickled { values: m.values, root })
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the current opcode starts (for error messages).
    op_pos: usize,
    values: Vec<Value>,
    stack: Vec<Id>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

impl Machine<'_> {
    fn bad<T>(&self, detail: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError::Bad { offset: self.op_pos, detail: detail.into() })
    }

    /// The next `n` bytes; errors (before any allocation) if the pickle is shorter.
    fn take(&mut self, n: u64) -> Result<&[u8], PickleError> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return self.bad(format!("needs {n} more bytes, {remaining} left (truncated?)"));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take_array()?))
    }

    /// A text line without its `\n` (text opcodes: GLOBAL, INT, PUT, ...).
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return self.bad("unterminated text argument");
        };
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn string(&mut self, n: u64) -> Result<String, PickleError> {
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => self.bad("string is not UTF-8"),
        }
    }

    fn push(&mut self, v: Value) {
        self.values.push(v);
        self.stack.push(self.values.len() - 1);
    }

    /// Whether the newest MARK is at the top of the stack (nothing above it to pop).
    fn at_mark(&self) -> bool {
        self.marks.last().is_some_and(|&m| m >= self.stack.len())
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        if self.at_mark() {
            return self.bad("stack underflow (pop past a MARK)");
        }
        match self.stack.pop() {
            Some(id) => Ok(id),
            None => self.bad("stack underflow"),
        }
    }

    fn top(&self) -> Result<Id, PickleError> {
        match self.stack.last() {
            Some(&id) if !self.at_mark() => Ok(id),
            _ => self.bad("stack underflow"),
        }
    }

    /// The items pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return self.bad("no MARK on the stack");
        };
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Id>, PickleError> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.pop()?);
        }
        items.reverse();
        Ok(items)
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.bad(format!("memo key {key} was never stored")),
        }
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn run(&mut self) -> Result<Id, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            if op == b'.' {
                let root = self.pop()?;
                return Ok(root);
            }
            self.step(op)?;
        }
    }

    /// Executes one opcode (all but STOP).
    fn step(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            0x80 => {
                let proto = self.u8()?;
                if proto > 5 {
                    return self.bad(format!("pickle protocol {proto} is not supported"));
                }
            }
            // FRAME: a length hint for buffered readers; the frame's opcodes follow inline.
            0x95 => {
                self.u64()?;
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                if self.marks.last() == Some(&self.stack.len()) {
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let id = self.top()?;
                self.stack.push(id);
            }
            _ => return self.step_value(op),
        }
        Ok(())
    }

    /// Opcodes that push scalars, strings and memo entries.
    fn step_value(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.take_array()?);
                self.push(Value::Int(v.into()));
            }
            b'J' => {
                let v = i32::from_le_bytes(self.take_array()?);
                self.push(Value::Int(v.into()));
            }
            0x8a => {
                let n = self.u8()?;
                self.long(n.into())?;
            }
            0x8b => {
                let n = self.u32()?;
                self.long(n.into())?;
            }
            b'I' => self.text_int()?,
            b'G' => {
                let v = f64::from_be_bytes(self.take_array()?);
                self.push(Value::Float(v));
            }
            b'F' => {
                let line = self.line()?;
                let Ok(v) = line.trim().parse::<f64>() else {
                    return self.bad("bad FLOAT text");
                };
                self.push(Value::Float(v));
            }
            b'X' => {
                let n = self.u32()?;
                let s = self.string(n.into())?;
                self.push(Value::Str(s));
            }
            0x8c => {
                let n = self.u8()?;
                let s = self.string(n.into())?;
                self.push(Value::Str(s));
            }
            0x8d => {
                let n = self.u64()?;
                let s = self.string(n)?;
                self.push(Value::Str(s));
            }
            // BINSTRING / SHORT_BINSTRING: Python 2 str; kept as text (lossy) since keys may use it.
            b'T' | b'U' => {
                let n = if op == b'T' { self.u32()?.into() } else { self.u8()?.into() };
                let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                self.push(Value::Str(s));
            }
            b'B' | b'C' | 0x8e | 0x96 => {
                let n = match op {
                    b'B' => self.u32()?.into(),
                    b'C' => self.u8()?.into(),
                    _ => self.u64()?,
                };
                self.take(n)?;
                self.push(Value::Bytes);
            }
            b'q' => {
                let k = self.u8()?;
                self.memo_put(k.into())?;
            }
            b'r' => {
                let k = self.u32()?;
                self.memo_put(k.into())?;
            }
            0x94 => self.memo_put(self.memo.len() as u64)?,
            b'p' => {
                let k = self.text_memo_key()?;
                self.memo_put(k)?;
            }
            b'h' => {
                let k = self.u8()?;
                self.memo_get(k.into())?;
            }
            b'j' => {
                let k = self.u32()?;
                self.memo_get(k.into())?;
            }
            b'g' => {
                let k = self.text_memo_key()?;
                self.memo_get(k)?;
            }
            _ => return self.step_container(op),
        }
        Ok(())
    }

    /// Little-endian two's-complement integer of `n` bytes (LONG1 / LONG4); at most 64 bits.
    fn long(&mut self, n: u64) -> Result<(), PickleError> {
        if n > 8 {
            return self.bad(format!("{n}-byte integer is too large"));
        }
        let bytes = self.take(n)?;
        let mut v: i64 = 0;
        for (i, &b) in bytes.iter().enumerate() {
            v |= i64::from(b) << (8 * i);
        }
        // Sign-extend from the top byte.
        if n > 0 && n < 8 && bytes[n as usize - 1] & 0x80 != 0 {
            v |= -1i64 << (8 * n);
        }
        self.push(Value::Int(v));
        Ok(())
    }

    fn text_int(&mut self) -> Result<(), PickleError> {
        let line = self.line()?;
        let v = match line.trim() {
            "00" => Value::Bool(false),
            "01" => Value::Bool(true),
            t => match t.parse::<i64>() {
                Ok(v) => Value::Int(v),
                Err(_) => return self.bad("bad INT text"),
            },
        };
        self.push(v);
        Ok(())
    }

    fn text_memo_key(&mut self) -> Result<u64, PickleError> {
        let line = self.line()?;
        match line.trim().parse::<u64>() {
            Ok(k) => Ok(k),
            Err(_) => self.bad("bad memo key text"),
        }
    }

    /// Opcodes that build or fill containers.
    fn step_container(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b')' => self.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let items = self.pop_n(usize::from(op - 0x84))?;
                self.push(Value::Tuple(items));
            }
            b']' => self.push(Value::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(items));
            }
            b'}' => self.push(Value::Dict(Vec::new())),
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.push(Value::Dict(pairs));
            }
            0x8f => self.push(Value::Set(Vec::new())),
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Value::Set(items));
            }
            b'a' => {
                let item = self.pop()?;
                self.extend(vec![item])?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.extend(items)?;
            }
            b's' => {
                let items = self.pop_n(2)?;
                self.set_items(items)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            _ => return self.step_object(op),
        }
        Ok(())
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>, PickleError> {
        let chunks = items.chunks_exact(2);
        if !chunks.remainder().is_empty() {
            return self.bad("odd number of dict items");
        }
        Ok(chunks.map(|c| (c[0], c[1])).collect())
    }

    /// APPEND(S) / ADDITEMS onto the list or set now on top of the stack.
    fn extend(&mut self, items: Vec<Id>) -> Result<(), PickleError> {
        let target = self.top()?;
        match &mut self.values[target] {
            Value::List(v) | Value::Set(v) => {
                v.extend(items);
                Ok(())
            }
            other => {
                let kind = other.kind();
                self.bad(format!("cannot append to a {kind}"))
            }
        }
    }

    /// SETITEM(S) onto the dict now on top of the stack.
    fn set_items(&mut self, items: Vec<Id>) -> Result<(), PickleError> {
        let pairs = self.pairs(items)?;
        let target = self.top()?;
        match &mut self.values[target] {
            Value::Dict(d) => {
                d.extend(pairs);
                Ok(())
            }
            other => {
                let kind = other.kind();
                self.bad(format!("cannot set items on a {kind}"))
            }
        }
    }

    /// Globals, calls, persistent ids and BUILD: the opcodes that could run code in Python.
    fn step_object(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = resolve_global(&module, &name)?;
                self.push(Value::Global(g));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (&self.values[module], &self.values[name]) else {
                    return self.bad("STACK_GLOBAL needs two strings");
                };
                let g = resolve_global(module, name)?;
                self.push(Value::Global(g));
            }
            // REDUCE, and NEWOBJ (cls.__new__(cls, *args)) which protocol 2 may use for OrderedDict.
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let result = self.call(callable, args)?;
                self.stack.push(result);
            }
            b'Q' => {
                let pid = self.pop()?;
                let storage = self.persistent_storage(pid)?;
                self.push(storage);
            }
            b'b' => {
                // BUILD sets attributes: an OrderedDict's `_metadata`, a Parameter's state.
                // Neither matters for the weights, so the state is dropped.
                self.pop()?;
                let target = self.top()?;
                if !matches!(self.values[target], Value::Dict(_) | Value::Tensor(_)) {
                    let kind = self.values[target].kind();
                    return self.bad(format!("BUILD on a {kind}"));
                }
            }
            b'P' => return self.bad("text persistent ids are not used by torch.save"),
            _ => return self.bad(format!("unsupported pickle opcode 0x{op:02x}")),
        }
        Ok(())
    }

    fn int_arg(&self, id: Id, what: &str) -> Result<usize, PickleError> {
        match self.values[id] {
            Value::Int(v) if v >= 0 => match usize::try_from(v) {
                Ok(v) => Ok(v),
                Err(_) => self.bad(format!("{what} {v} is too large")),
            },
            ref other => self.bad(format!("{what} must be a non-negative int, got {}", other.kind())),
        }
    }

    /// Checks that `id` is a tuple of at most `MAX_DIMS` non-negative ints; returns its length.
    fn dims_tuple(&self, id: Id, what: &str) -> Result<usize, PickleError> {
        let Value::Tuple(items) = &self.values[id] else {
            return self.bad(format!("{what} must be a tuple"));
        };
        if items.len() > MAX_DIMS {
            return self.bad(format!("{what} has {} dims (at most {MAX_DIMS})", items.len()));
        }
        for &i in items {
            self.int_arg(i, what)?;
        }
        Ok(items.len())
    }

    /// `('storage', storage_type, key, location, numel)` → a storage reference.
    fn persistent_storage(&self, pid: Id) -> Result<Value, PickleError> {
        let Value::Tuple(items) = &self.values[pid] else {
            return self.bad("persistent id is not a tuple");
        };
        let [tag, ty, key, _location, numel] = items[..] else {
            return self.bad(format!("persistent id has {} fields, expected 5", items.len()));
        };
        if !matches!(&self.values[tag], Value::Str(s) if s == "storage") {
            return self.bad("persistent id is not a storage");
        }
        let Value::Global(Global::StorageType(dtype)) = self.values[ty] else {
            return self.bad("persistent id names no storage type");
        };
        match &self.values[key] {
            Value::Str(k) if k.len() <= MAX_KEY_LEN => {}
            _ => return self.bad(format!("storage key is not a string of at most {MAX_KEY_LEN} bytes")),
        }
        self.int_arg(numel, "storage size")?;
        Ok(Value::Storage { key, dtype })
    }

    /// REDUCE on an allowed global; returns the id of the result. Only these functions exist
    /// here: nothing else can be called.
    fn call(&mut self, callable: Id, args: Id) -> Result<Id, PickleError> {
        let Value::Global(g) = self.values[callable] else {
            let kind = self.values[callable].kind();
            return self.bad(format!("cannot call a {kind}"));
        };
        let args: Vec<Id> = match &self.values[args] {
            // No allowed function takes more than 8 arguments; checking first keeps a huge,
            // memoised argument tuple from being copied on every call.
            Value::Tuple(a) if a.len() <= 8 => a.clone(),
            Value::Tuple(a) => return self.bad(format!("{} called with {} arguments", g.python_name(), a.len())),
            _ => return self.bad("call arguments are not a tuple"),
        };
        let value = match (g, args.len()) {
            (Global::OrderedDict, 0) => Value::Dict(Vec::new()),
            (Global::RebuildTensorV2, 6 | 7) => self.rebuild_tensor(&args, None)?,
            (Global::RebuildTensorV3, 7 | 8) => {
                let Value::Global(Global::Dtype(dtype)) = self.values[args[6]] else {
                    return self.bad("_rebuild_tensor_v3 dtype is not a torch dtype");
                };
                self.rebuild_tensor(&args, Some(dtype))?
            }
            // A Parameter is its data tensor here (requires_grad and hooks do not matter).
            (Global::RebuildParameter, 3) | (Global::RebuildParameterWithState, 4) => match &self.values[args[0]] {
                Value::Tensor(_) => return Ok(args[0]),
                other => return self.bad(format!("parameter data is a {}, not a tensor", other.kind())),
            },
            (Global::CodecsEncode, 2) => self.codecs_encode(args[0], args[1])?,
            (g, n) => return self.bad(format!("{} cannot be called with {n} arguments", g.python_name())),
        };
        self.values.push(value);
        Ok(self.values.len() - 1)
    }

    /// `_rebuild_tensor_v2/v3(storage, offset, size, stride, requires_grad, hooks, ...)`.
    fn rebuild_tensor(&self, args: &[Id], dtype: Option<DType>) -> Result<Value, PickleError> {
        let Value::Storage { dtype: storage_dtype, .. } = self.values[args[0]] else {
            return self.bad("tensor storage is not a persistent storage");
        };
        // Typed storages carry the dtype; untyped ones (v3) get it as an argument.
        let Some(dtype) = dtype.or(storage_dtype) else {
            return self.bad("untyped storage without a dtype");
        };
        let offset = self.int_arg(args[1], "storage offset")?;
        let dims = self.dims_tuple(args[2], "size")?;
        if self.dims_tuple(args[3], "stride")? != dims {
            return self.bad("size and stride have different lengths");
        }
        Ok(Value::Tensor(TensorSpec { storage: args[0], dtype, offset, size: args[2], stride: args[3] }))
    }

    /// The bytes are never used, so only the argument types are checked (in constant time:
    /// the same long string may be encoded many times through the memo).
    fn codecs_encode(&self, text: Id, encoding: Id) -> Result<Value, PickleError> {
        match (&self.values[text], &self.values[encoding]) {
            (Value::Str(_), Value::Str(e)) if e == "latin1" || e == "latin-1" => Ok(Value::Bytes),
            _ => self.bad("_codecs.encode needs (str, 'latin1')"),
        }
    }
}

impl Unpickled {
    /// The `(name, tensor)` entries of the state_dict: the top-level dict, or the one nested
    /// under `state_dict` / `model` when the top level holds no tensors itself.
    pub(super) fn state_dict(&self) -> Result<Vec<(&str, TensorSpec)>, String> {
        let Value::Dict(root) = &self.values[self.root] else {
            return Err(format!(
                "the pickled object is a {}, not a dict of tensors (save model.state_dict())",
                self.values[self.root].kind()
            ));
        };
        let direct = self.tensor_entries(root)?;
        if !direct.is_empty() {
            return Ok(direct);
        }
        let mut nested = Vec::new();
        for &(k, v) in root {
            let (Value::Str(key), Value::Dict(inner)) = (&self.values[k], &self.values[v]) else {
                continue;
            };
            if key == "state_dict" || key == "model" {
                let entries = self.tensor_entries(inner)?;
                if !entries.is_empty() {
                    nested.push(entries);
                }
            }
        }
        match nested.len() {
            1 => Ok(nested.pop().unwrap_or_default()),
            0 => Err("no tensors at the top level nor under \"state_dict\" or \"model\"".into()),
            _ => Err("both \"state_dict\" and \"model\" hold tensors: cannot tell which to read".into()),
        }
    }

    /// The tensor-valued entries of a dict; other values (ints, metadata) are skipped.
    fn tensor_entries(&self, dict: &[(Id, Id)]) -> Result<Vec<(&str, TensorSpec)>, String> {
        let mut out = Vec::new();
        for &(k, v) in dict {
            let Value::Tensor(spec) = self.values[v] else {
                continue;
            };
            match &self.values[k] {
                Value::Str(name) if name.len() <= MAX_NAME_LEN => out.push((name.as_str(), spec)),
                Value::Str(name) => return Err(format!("tensor name of {} bytes is too long", name.len())),
                other => return Err(format!("a tensor is stored under a {} key, not a name", other.kind())),
            }
        }
        Ok(out)
    }

    /// The storage file name a tensor views.
    pub(super) fn storage_key(&self, spec: TensorSpec) -> &str {
        // The unpickler only builds specs over a `Storage` whose key is a `Str`.
        match &self.values[spec.storage] {
            Value::Storage { key, .. } => match &self.values[*key] {
                Value::Str(k) => k,
                _ => "",
            },
            _ => "",
        }
    }

    /// The owned description of a tensor; `spec`'s parts were validated by the unpickler.
    pub(super) fn tensor_ref(&self, spec: TensorSpec) -> TensorRef {
        TensorRef {
            key: self.storage_key(spec).to_string(),
            dtype: spec.dtype,
            offset: spec.offset,
            size: self.ints(spec.size),
            stride: self.ints(spec.stride),
        }
    }

    fn ints(&self, tuple: Id) -> Vec<usize> {
        let Value::Tuple(items) = &self.values[tuple] else {
            return Vec::new();
        };
        items
            .iter()
            .map(|&i| match self.values[i] {
                Value::Int(v) => usize::try_from(v).unwrap_or(0),
                _ => 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Read;
    use std::path::Path;

    use zip::ZipArchive;

    use super::*;
    use crate::checkpoint::torch::materialise;

    #[test]
    fn refuses_unknown_globals_before_calling_anything() {
        let pickle = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.";
        match unpickle(pickle) {
            Err(PickleError::Refused(name)) => assert_eq!(name, "posix.system"),
            other => panic!("expected a refusal, got {:?}", other.map(|u| u.root)),
        }
        // Even torch's own helpers are refused unless allow-listed.
        let pickle = b"\x80\x02ctorch\nload\n.";
        assert!(matches!(unpickle(pickle), Err(PickleError::Refused(n)) if n == "torch.load"));
    }

    #[test]
    fn rejects_malformed_pickles_without_panicking() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x80\x02",
            b"X\xff\xff\xff\xff",
            b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff",
            b"h\x07.",
            b"a.",
            b"(u.",
            b"K\x01K\x02s.",
            b"\x8b\x00\x00\x01\x00",
            b"0.",
            b"1.",
            b"R.",
            b"\x93.",
            b"\x82\x01.",
            b"(\x8c\x01a0.",
        ];
        for case in cases {
            assert!(
                unpickle(case).is_err() || unpickle(case).map(|u| u.state_dict().is_err()).unwrap_or(true),
                "{case:?}"
            );
        }
    }

    #[test]
    fn long_integers_are_sign_extended() {
        for (bytes, want) in [(&b"\x8a\x01\xff."[..], -1i64), (b"\x8a\x02\x00\x80.", -32768), (b"\x8a\x00.", 0)] {
            let u = unpickle(bytes).unwrap();
            assert!(matches!(u.values[u.root], Value::Int(v) if v == want), "{bytes:?}");
        }
    }

    /// Reads the fixture's data.pkl, so mutations exercise realistic opcode sequences.
    fn fixture_pickle() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoint/dtypes.pt");
        let mut archive = ZipArchive::new(File::open(path).unwrap()).unwrap();
        let mut entry = archive.by_name("dtypes/data.pkl").unwrap();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        bytes
    }

    /// Runs everything that looks at pickle data; only panics matter here.
    fn exercise(pickle: &[u8]) {
        if let Ok(parsed) = unpickle(pickle) {
            if let Ok(entries) = parsed.state_dict() {
                for (_, spec) in entries {
                    let t = parsed.tensor_ref(spec);
                    let _ = materialise(&t, &[0u8; 64], false);
                }
            }
        }
    }

    #[test]
    fn fixture_pickle_decodes_and_survives_mutation() {
        let pickle = fixture_pickle();
        let parsed = unpickle(&pickle).unwrap();
        let entries = parsed.state_dict().unwrap();
        let transposed = entries.iter().find(|(n, _)| *n == "transposed").map(|&(_, s)| parsed.tensor_ref(s));
        assert_eq!(transposed.map(|t| (t.size, t.stride)), Some((vec![5, 3], vec![1, 5])));
        // Every truncation and a deterministic spray of byte flips must fail cleanly or succeed.
        for len in 0..pickle.len() {
            exercise(&pickle[..len]);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut mutated = pickle.clone();
            let at = (seed % mutated.len() as u64) as usize;
            mutated[at] = (seed >> 32) as u8;
            exercise(&mutated);
        }
    }
}
