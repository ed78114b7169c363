//! Request bodies in Kubernetes protobuf (`application/vnd.kubernetes.protobuf`), decoded into
//! the JSON a JSON client would have sent for the same object.
//!
//! A body is `k8s\0` followed by a `runtime.Unknown` {typeMeta, raw, contentEncoding,
//! contentType}; `raw` is the object's message, decoded with the tables in `pb_schema`
//! (generated from the Kubernetes `generated.proto` files by `api/gen/pbschema.py`).
//!
//! JSON shape, following Go's JSON encoding of the same struct (typed clients put every
//! non-pointer field on the wire, zero or not):
//! - Scalars whose Go field is a non-pointer tagged `omitempty` (`OMIT` in the tables) are
//!   omitted when zero (`""`, `false`, `0`), as Go's JSON encoder does. Other scalars are kept:
//!   Go writes untagged ones always and pointers whenever set (they are only on the wire then).
//! - Nested objects are kept even when empty (`omitempty` never drops a Go struct); an empty
//!   list (only an empty packed field can make one) is omitted, as Go decodes it to nil.
//! - Fields absent from the wire stay absent, and zero times are omitted (Go writes `null`
//!   for them unless tagged `omitzero`, as `creationTimestamp` is).
//! - `bytes` become standard base64; `RawExtension` and `FieldsV1` become the JSON they hold.
//! - Protobuf merge semantics: a singular message seen several times is merged (decoded as the
//!   concatenation of its occurrences), a scalar's last occurrence wins, repeated fields append
//!   and a repeated map key keeps its last value. Unknown fields are skipped.

use std::fmt;

use serde_json::{Map, Number, Value};

use crate::pb_schema::{self, F, INL, K, MAP, Msg, OMIT, R};

const MAGIC: &[u8] = b"k8s\0";
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// Deep enough for any built-in kind (about a dozen levels); bounds the recursion of nested
/// messages and of objects embedded in `RawExtension`s.
const MAX_DEPTH: usize = 64;
const MAX_TAG: u64 = (1 << 29) - 1;
/// Range Go's JSON encoding of a time accepts: years 0000 to 9999.
const MIN_SECS: i64 = -62_167_219_200;
const MAX_SECS: i64 = 253_402_300_799;
/// `time.Time{}`: what Go decodes an empty time message to, and encodes as `null`.
const GO_ZERO_SECS: i64 = -62_135_596_800;

/// Why a protobuf body could not be decoded: a message and the JSON path it was found at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbError {
    path: String,
    message: String,
}

impl PbError {
    fn new(message: impl Into<String>) -> Self {
        PbError {
            path: String::new(),
            message: message.into(),
        }
    }

    /// Prefixes the path with the field the error happened in (inlined fields have no name).
    fn at(mut self, field: &str) -> Self {
        if !field.is_empty() {
            self.path = if self.path.is_empty() {
                field.to_owned()
            } else {
                format!("{field}.{}", self.path)
            };
        }
        self
    }
}

impl fmt::Display for PbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "invalid protobuf body: {}", self.message)
        } else {
            write!(
                f,
                "invalid protobuf body at {}: {}",
                self.path, self.message
            )
        }
    }
}

impl std::error::Error for PbError {}

type Result<T> = std::result::Result<T, PbError>;

/// Decodes a `k8s\0`-prefixed protobuf request body into its JSON object, with `apiVersion`
/// and `kind` from the envelope's TypeMeta (inserted first; serde_json keeps keys sorted unless
/// its `preserve_order` feature is on).
pub fn decode_request(body: &[u8]) -> std::result::Result<Value, PbError> {
    decode_envelope(body, 0).map(Value::Object)
}

fn decode_envelope(body: &[u8], depth: usize) -> Result<Map<String, Value>> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| PbError::new("missing the k8s\\0 prefix"))?;
    let mut type_meta = Vec::new();
    let (mut raw, mut encoding, mut content_type): (&[u8], &str, &str) = (&[], "", "");
    scan(&[rest], |tag, wire| {
        match (tag, wire) {
            (1, Wire::Len(b)) => type_meta.push(b),
            (2, Wire::Len(b)) => raw = b,
            (3, Wire::Len(b)) => encoding = utf8(b)?,
            (4, Wire::Len(b)) => content_type = utf8(b)?,
            (1..=4, _) => return Err(PbError::new("wrong wire type in runtime.Unknown")),
            _ => {}
        }
        Ok(())
    })?;
    let (mut api_version, mut kind) = ("", "");
    scan(&type_meta, |tag, wire| {
        match (tag, wire) {
            (1, Wire::Len(b)) => api_version = utf8(b)?,
            (2, Wire::Len(b)) => kind = utf8(b)?,
            (1 | 2, _) => return Err(PbError::new("wrong wire type in runtime.TypeMeta")),
            _ => {}
        }
        Ok(())
    })?;
    if !encoding.is_empty() {
        return Err(PbError::new(format!(
            "unsupported contentEncoding {encoding:?}"
        )));
    }
    if !content_type.is_empty() && content_type != PROTOBUF {
        return Err(PbError::new(format!(
            "unsupported contentType {content_type:?}"
        )));
    }
    if kind.is_empty() {
        return Err(PbError::new("the envelope has no kind"));
    }
    let msg = pb_schema::message_for(api_version, kind).ok_or_else(|| {
        PbError::new(format!(
            "kind {kind:?} of apiVersion {api_version:?} is not supported in protobuf"
        ))
    })?;
    let mut out = Map::new();
    if !api_version.is_empty() {
        out.insert("apiVersion".into(), api_version.into());
    }
    out.insert("kind".into(), kind.into());
    out.extend(decode_msg(msg, &[raw], depth + 1)?);
    Ok(out)
}

/// One field read off the wire.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| PbError::new("truncated varint"))?;
            self.buf = rest;
            if i == 9 && b > 1 {
                return Err(PbError::new("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(PbError::new("varint overflows 64 bits"))
    }

    /// The next `n` bytes; checks `n` against what is left, so nothing is sized by it.
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        match usize::try_from(n) {
            Ok(n) if n <= self.buf.len() => {
                let (head, rest) = self.buf.split_at(n);
                self.buf = rest;
                Ok(head)
            }
            _ => Err(PbError::new("truncated field")),
        }
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.take(N as u64)?;
        b.try_into().map_err(|_| PbError::new("truncated field"))
    }

    /// The next field, skipping groups (no Kubernetes message has any).
    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let key = self.varint()?;
            let tag = key >> 3;
            if tag == 0 || tag > MAX_TAG {
                return Err(PbError::new(format!("invalid field number {tag}")));
            }
            let wire = match key & 7 {
                0 => Wire::Varint(self.varint()?),
                1 => Wire::Fixed64(u64::from_le_bytes(self.fixed()?)),
                2 => {
                    let n = self.varint()?;
                    Wire::Len(self.take(n)?)
                }
                3 => {
                    self.skip_group(tag)?;
                    continue;
                }
                5 => Wire::Fixed32(u32::from_le_bytes(self.fixed()?)),
                w => return Err(PbError::new(format!("invalid wire type {w}"))),
            };
            return Ok(Some((tag as u32, wire)));
        }
    }

    /// Skips to the end-group matching `tag`, through nested groups.
    fn skip_group(&mut self, tag: u64) -> Result<()> {
        let mut open = vec![tag];
        while let Some(&top) = open.last() {
            let key = self.varint()?;
            match key & 7 {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let n = self.varint()?;
                    self.take(n)?;
                }
                3 if open.len() < MAX_DEPTH => open.push(key >> 3),
                3 => return Err(PbError::new("groups nested too deeply")),
                4 if key >> 3 == top => {
                    open.pop();
                }
                5 => {
                    self.take(4)?;
                }
                _ => return Err(PbError::new("malformed group")),
            }
        }
        Ok(())
    }
}

/// Calls `f` with every field of a message given as the concatenation of `chunks`.
fn scan<'a>(chunks: &[&'a [u8]], mut f: impl FnMut(u32, Wire<'a>) -> Result<()>) -> Result<()> {
    for chunk in chunks {
        let mut r = Reader { buf: chunk };
        while let Some((tag, wire)) = r.next()? {
            f(tag, wire)?;
        }
    }
    Ok(())
}

/// A field's occurrences so far.
enum Slot<'a> {
    Empty,
    /// Singular scalar: the last one.
    Val(Value),
    /// Singular message: all occurrences, merged when decoded.
    Chunks(Vec<&'a [u8]>),
    List(Vec<Value>),
    Obj(Map<String, Value>),
}

/// Decodes the message made of `chunks` (several when it occurred more than once).
fn decode_msg<'a>(
    msg: &'static Msg,
    chunks: &[&'a [u8]],
    depth: usize,
) -> Result<Map<String, Value>> {
    if depth > MAX_DEPTH {
        return Err(PbError::new(format!("{} nested too deeply", msg.name)));
    }
    let mut slots: Vec<Slot<'a>> = msg.fields.iter().map(|_| Slot::Empty).collect();
    scan(chunks, |tag, wire| {
        // Fields are few (PodSpec has the most, ~45); a linear search is fine.
        let found = msg
            .fields
            .iter()
            .zip(slots.iter_mut())
            .find(|(f, _)| f.0 == tag);
        match found {
            Some((f, slot)) => read_field(f, wire, slot, depth),
            None => Ok(()),
        }
    })?;
    let mut out = Map::new();
    for (f, slot) in msg.fields.iter().zip(slots) {
        let value = match slot {
            Slot::Empty => continue,
            Slot::Val(v) if f.3 & OMIT != 0 && is_zero(&v) => continue,
            Slot::Val(v) => v,
            Slot::Chunks(chunks) => {
                match message_value(f.2, &chunks, depth).map_err(|e| e.at(f.1))? {
                    Some(Value::Object(inner)) if f.3 & INL != 0 => {
                        out.extend(inner);
                        continue;
                    }
                    Some(v) => v,
                    None => continue,
                }
            }
            Slot::List(items) if items.is_empty() => continue,
            Slot::List(items) => Value::Array(items),
            Slot::Obj(map) => Value::Object(map),
        };
        out.insert(f.1.to_owned(), value);
    }
    Ok(out)
}

fn read_field<'a>(f: &F, wire: Wire<'a>, slot: &mut Slot<'a>, depth: usize) -> Result<()> {
    let F(_, name, kind, flags) = *f;
    if flags & MAP != 0 {
        let Wire::Len(entry) = wire else {
            return Err(PbError::new("wrong wire type for a map entry").at(name));
        };
        let (key, value) = map_entry(kind, entry, depth).map_err(|e| e.at(name))?;
        if !matches!(slot, Slot::Obj(_)) {
            *slot = Slot::Obj(Map::new());
        }
        if let Slot::Obj(map) = slot {
            map.insert(key, value);
        }
    } else if flags & R != 0 {
        if !matches!(slot, Slot::List(_)) {
            *slot = Slot::List(Vec::new());
        }
        let Slot::List(items) = slot else {
            return Ok(());
        };
        let index = items.len();
        let at = |e: PbError| e.at(&format!("{name}[{index}]"));
        match (is_message(kind), wire) {
            (true, Wire::Len(b)) => {
                let v = message_value(kind, &[b], depth).map_err(at)?;
                items.push(v.unwrap_or(Value::Null));
            }
            (true, _) => return Err(at(PbError::new("wrong wire type for a message"))),
            // Packed numbers and bools.
            (false, Wire::Len(b)) if !matches!(kind, K::Str | K::Bytes) => {
                let mut r = Reader { buf: b };
                while !r.buf.is_empty() {
                    let w = match kind {
                        K::F64 => r.fixed().map(|b| Wire::Fixed64(u64::from_le_bytes(b))),
                        K::F32 => r.fixed().map(|b| Wire::Fixed32(u32::from_le_bytes(b))),
                        _ => r.varint().map(Wire::Varint),
                    };
                    items.push(w.and_then(|w| scalar(kind, w)).map_err(at)?);
                }
            }
            (false, w) => {
                let v = scalar(kind, w).map_err(at)?;
                items.push(v);
            }
        }
    } else if is_message(kind) {
        let Wire::Len(b) = wire else {
            return Err(PbError::new("wrong wire type for a message").at(name));
        };
        match slot {
            Slot::Chunks(chunks) => chunks.push(b),
            _ => *slot = Slot::Chunks(vec![b]),
        }
    } else {
        *slot = Slot::Val(scalar(kind, wire).map_err(|e| e.at(name))?);
    }
    Ok(())
}

/// A `map<string, kind>` entry {key = 1, value = 2}; a missing value is the kind's default.
fn map_entry(kind: K, entry: &[u8], depth: usize) -> Result<(String, Value)> {
    let mut key = "";
    let mut value = None;
    let mut chunks = Vec::new();
    scan(&[entry], |tag, wire| {
        match (tag, wire) {
            (1, Wire::Len(b)) => key = utf8(b)?,
            (1, _) => return Err(PbError::new("wrong wire type for a map key")),
            (2, Wire::Len(b)) if is_message(kind) => chunks.push(b),
            (2, w) => value = Some(scalar(kind, w)?),
            _ => {}
        }
        Ok(())
    })?;
    let value = match value {
        Some(v) => v,
        None if is_message(kind) => message_value(kind, &chunks, depth)
            .map_err(|e| e.at(key))?
            .unwrap_or(Value::Null),
        None => default_scalar(kind),
    };
    Ok((key.to_owned(), value))
}

/// Go's `omitempty` test for the scalars (`-0.0` counts as zero there too).
fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn is_message(kind: K) -> bool {
    !matches!(
        kind,
        K::Str | K::Bytes | K::Bool | K::I32 | K::I64 | K::F64 | K::F32
    )
}

fn default_scalar(kind: K) -> Value {
    match kind {
        K::Bool => Value::Bool(false),
        K::I32 | K::I64 => Value::from(0),
        K::F64 | K::F32 => Value::from(0.0),
        _ => Value::String(String::new()),
    }
}

fn scalar(kind: K, wire: Wire<'_>) -> Result<Value> {
    Ok(match (kind, wire) {
        (K::Str, Wire::Len(b)) => Value::String(utf8(b)?.to_owned()),
        (K::Bytes, Wire::Len(b)) => Value::String(base64(b)),
        (K::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        // Truncation is protobuf's int32 rule: negatives arrive sign-extended to 64 bits.
        (K::I32, Wire::Varint(v)) => Value::from(v as i32),
        (K::I64, Wire::Varint(v)) => Value::from(v as i64),
        (K::F64, Wire::Fixed64(v)) => float(f64::from_bits(v))?,
        (K::F32, Wire::Fixed32(v)) => float(f64::from(f32::from_bits(v)))?,
        _ => return Err(PbError::new("wrong wire type")),
    })
}

fn float(v: f64) -> Result<Value> {
    Number::from_f64(v)
        .map(Value::Number)
        .ok_or_else(|| PbError::new("non-finite number"))
}

fn utf8(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).map_err(|_| PbError::new("string is not UTF-8"))
}

/// The JSON of a message-typed value; `None` when it is omitted (a zero time).
fn message_value(kind: K, chunks: &[&[u8]], depth: usize) -> Result<Option<Value>> {
    let v = match kind {
        K::Ref(msg) => Value::Object(decode_msg(msg, chunks, depth + 1)?),
        K::Time | K::MicroTime => {
            let (mut secs, mut nanos) = (0i64, 0i32);
            scan(chunks, |tag, wire| {
                match (tag, wire) {
                    (1, Wire::Varint(v)) => secs = v as i64,
                    (2, Wire::Varint(v)) => nanos = v as i32,
                    (1 | 2, _) => return Err(PbError::new("wrong wire type in a time")),
                    _ => {}
                }
                Ok(())
            })?;
            return time(secs, nanos, matches!(kind, K::MicroTime));
        }
        K::Duration => {
            let mut nanos = 0i64;
            scan(chunks, |tag, wire| {
                match (tag, wire) {
                    (1, Wire::Varint(v)) => nanos = v as i64,
                    (1, _) => return Err(PbError::new("wrong wire type in a duration")),
                    _ => {}
                }
                Ok(())
            })?;
            Value::String(go_duration(nanos))
        }
        K::IntStr => {
            let (mut typ, mut int, mut string) = (0i64, 0i32, "");
            scan(chunks, |tag, wire| {
                match (tag, wire) {
                    (1, Wire::Varint(v)) => typ = v as i64,
                    (2, Wire::Varint(v)) => int = v as i32,
                    (3, Wire::Len(b)) => string = utf8(b)?,
                    (1..=3, _) => return Err(PbError::new("wrong wire type in an IntOrString")),
                    _ => {}
                }
                Ok(())
            })?;
            match typ {
                0 => Value::from(int),
                1 => Value::String(string.to_owned()),
                t => return Err(PbError::new(format!("invalid IntOrString type {t}"))),
            }
        }
        K::Quantity => {
            let mut s = "";
            scan(chunks, |tag, wire| {
                match (tag, wire) {
                    (1, Wire::Len(b)) => s = utf8(b)?,
                    (1, _) => return Err(PbError::new("wrong wire type in a quantity")),
                    _ => {}
                }
                Ok(())
            })?;
            // An unset Quantity is zero, which Go writes as "0".
            Value::String(if s.is_empty() { "0" } else { s }.to_owned())
        }
        K::RawExt | K::FieldsV1 => {
            let mut raw: &[u8] = &[];
            scan(chunks, |tag, wire| {
                match (tag, wire) {
                    (1, Wire::Len(b)) => raw = b,
                    (1, _) => return Err(PbError::new("wrong wire type in raw bytes")),
                    _ => {}
                }
                Ok(())
            })?;
            raw_json(raw, depth)?
        }
        K::Str | K::Bytes | K::Bool | K::I32 | K::I64 | K::F64 | K::F32 => {
            return Err(PbError::new("scalar decoded as a message"));
        }
    };
    Ok(Some(v))
}

/// The JSON an embedded object holds: JSON itself, or (rarely) a nested protobuf envelope.
fn raw_json(raw: &[u8], depth: usize) -> Result<Value> {
    if raw.is_empty() {
        // Go writes a nil RawExtension or FieldsV1 as null.
        return Ok(Value::Null);
    }
    if raw.starts_with(MAGIC) {
        return decode_envelope(raw, depth + 1).map(Value::Object);
    }
    serde_json::from_slice(raw).map_err(|e| PbError::new(format!("embedded JSON: {e}")))
}

/// RFC 3339 in UTC as Go's metav1.Time (whole seconds; it drops nanos) and MicroTime
/// (microseconds) write it; `None` for the zero time, which Kubernetes clients omit.
fn time(secs: i64, nanos: i32, micro: bool) -> Result<Option<Value>> {
    if (secs == 0 && nanos == 0) || (secs == GO_ZERO_SECS && (nanos == 0 || !micro)) {
        return Ok(None);
    }
    // Normalize out-of-range nanos the way Go's time.Unix does.
    let (secs, nanos) = if micro {
        let n = i64::from(nanos);
        (
            secs.saturating_add(n.div_euclid(1_000_000_000)),
            n.rem_euclid(1_000_000_000),
        )
    } else {
        (secs, 0)
    };
    if !(MIN_SECS..=MAX_SECS).contains(&secs) {
        return Err(PbError::new(format!(
            "time {secs}s is outside years 0-9999"
        )));
    }
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
    let s = if micro {
        format!(
            "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:06}Z",
            nanos / 1000
        )
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    };
    Ok(Some(Value::String(s)))
}

/// (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Go's `time.Duration.String`: `1h2m3s`, `1.5s`, `300ms`, `0s`.
fn go_duration(d: i64) -> String {
    let sign = if d < 0 { "-" } else { "" };
    let u = d.unsigned_abs();
    if u == 0 {
        return "0s".into();
    }
    if u < 1_000_000_000 {
        let (unit, scale) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", decimal(u, scale));
    }
    let secs = decimal(u % 60_000_000_000, 1_000_000_000);
    let mins = u / 60_000_000_000;
    match (mins / 60, mins % 60) {
        (0, 0) => format!("{sign}{secs}s"),
        (0, m) => format!("{sign}{m}m{secs}s"),
        (h, m) => format!("{sign}{h}h{m}m{secs}s"),
    }
}

/// `v / scale` with its fraction, trailing zeros dropped; `scale` is a power of ten.
fn decimal(v: u64, scale: u64) -> String {
    let (int, frac) = (v / scale, v % scale);
    if frac == 0 {
        return int.to_string();
    }
    let width = scale.ilog10() as usize;
    let s = format!("{int}.{frac:0width$}");
    s.trim_end_matches('0').to_owned()
}

/// Standard base64 with padding, as Go's JSON encoding writes `[]byte`.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |n: u32, shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n, 18));
        out.push(sym(n, 12));
        out.push(if chunk.len() > 1 { sym(n, 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(n, 0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A tiny protobuf encoder for building test bodies.
    #[derive(Default, Clone)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn new() -> Self {
            Enc::default()
        }

        fn raw_varint(mut self, mut v: u64) -> Self {
            while v >= 0x80 {
                self.0.push((v as u8) | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
            self
        }

        fn key(self, tag: u32, wire: u8) -> Self {
            self.raw_varint((u64::from(tag) << 3) | u64::from(wire))
        }

        fn varint(self, tag: u32, v: u64) -> Self {
            self.key(tag, 0).raw_varint(v)
        }

        fn int(self, tag: u32, v: i64) -> Self {
            self.varint(tag, v as u64)
        }

        fn fixed64(self, tag: u32, v: u64) -> Self {
            let mut e = self.key(tag, 1);
            e.0.extend(v.to_le_bytes());
            e
        }

        fn fixed32(self, tag: u32, v: u32) -> Self {
            let mut e = self.key(tag, 5);
            e.0.extend(v.to_le_bytes());
            e
        }

        fn bytes(self, tag: u32, b: &[u8]) -> Self {
            let mut e = self.key(tag, 2).raw_varint(b.len() as u64);
            e.0.extend_from_slice(b);
            e
        }

        fn str(self, tag: u32, s: &str) -> Self {
            self.bytes(tag, s.as_bytes())
        }

        fn msg(self, tag: u32, m: Enc) -> Self {
            self.bytes(tag, &m.0)
        }

        /// A `map<string, string>` entry.
        fn entry(self, tag: u32, k: &str, v: &str) -> Self {
            self.msg(tag, Enc::new().str(1, k).str(2, v))
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: Enc) -> Vec<u8> {
        let type_meta = Enc::new().str(1, api_version).str(2, kind);
        let mut body = MAGIC.to_vec();
        body.extend(Enc::new().msg(1, type_meta).msg(2, raw).0);
        body
    }

    fn decode(api_version: &str, kind: &str, raw: Enc) -> Value {
        decode_request(&envelope(api_version, kind, raw)).expect("decodes")
    }

    fn fail(body: &[u8]) -> String {
        decode_request(body)
            .expect_err("must not decode")
            .to_string()
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A message that contains itself, and one field of every kind the tables do not use.
    static TEST: Msg = Msg {
        name: "test.Test",
        fields: &[
            F(1, "ints", K::I32, R),
            F(2, "duration", K::Duration, 0),
            F(3, "f64", K::F64, OMIT),
            F(4, "f32", K::F32, 0),
            F(5, "child", K::Ref(&TEST), 0),
            F(6, "bytes", K::Bytes, OMIT),
            F(7, "doubles", K::F64, R),
        ],
    };

    fn decode_test(raw: Enc) -> Result<Value> {
        decode_msg(&TEST, &[&raw.0], 0).map(Value::Object)
    }

    /// What `kubectl create deployment hello --image=nginx` sends (trimmed to the fields named
    /// in the issue).
    #[test]
    fn deployment_like_kubectl() {
        let labels = || Enc::new().entry(11, "app", "hello");
        let metadata = labels()
            .str(1, "hello")
            .str(3, "")
            .msg(8, Enc::new().varint(1, 0));
        let container = Enc::new()
            .str(1, "nginx")
            .str(2, "nginx")
            .msg(8, Enc::new())
            .varint(16, 0);
        let spec = Enc::new()
            .varint(1, 1)
            .msg(2, Enc::new().entry(1, "app", "hello"))
            .msg(
                3,
                Enc::new()
                    .msg(1, labels())
                    .msg(2, Enc::new().msg(2, container)),
            )
            .msg(4, Enc::new())
            .varint(7, 0);
        let got = decode(
            "apps/v1",
            "Deployment",
            Enc::new().msg(1, metadata).msg(2, spec),
        );
        assert_eq!(
            got,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "hello", "labels": {"app": "hello"}},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "hello"}},
                    "template": {
                        "metadata": {"labels": {"app": "hello"}},
                        "spec": {"containers": [
                            {"name": "nginx", "image": "nginx", "resources": {}}
                        ]}
                    },
                    "strategy": {}
                }
            })
        );
    }

    /// Zero values come out as Go's JSON encoder writes them: omitempty scalars are dropped,
    /// untagged scalars, pointers and structs are kept.
    #[test]
    fn zero_values_like_go_json() {
        let port = Enc::new()
            .str(1, "")
            .varint(2, 0)
            .varint(3, 0)
            .str(4, "TCP")
            .str(5, "");
        let container = Enc::new()
            // `name` has no omitempty; `image` has.
            .str(1, "")
            .str(2, "")
            .msg(6, port)
            .msg(8, Enc::new())
            .varint(16, 1)
            .varint(17, 0);
        let pod = Enc::new()
            .msg(2, container)
            // Pointers: *int64, *string, *bool.
            .int(4, 0)
            .str(29, "")
            .varint(30, 0)
            .varint(11, 0)
            // An empty packed list is a nil slice in Go.
            .msg(14, Enc::new().bytes(4, &[]).int(2, 0));
        let spec = Enc::new()
            .varint(1, 0)
            .msg(3, Enc::new().msg(2, pod))
            .msg(4, Enc::new())
            .varint(5, 0)
            .varint(7, 0);
        let status = Enc::new().varint(1, 0).varint(2, 0).varint(9, 0);
        let raw = Enc::new()
            .msg(1, Enc::new().str(1, "d").str(3, "").varint(7, 0))
            .msg(2, spec)
            .msg(3, status);
        assert_eq!(
            decode("apps/v1", "Deployment", raw),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d"},
                "spec": {
                    "replicas": 0,
                    "template": {"spec": {
                        "containers": [{
                            "name": "",
                            "ports": [{"containerPort": 0, "protocol": "TCP"}],
                            "resources": {},
                            "stdin": true
                        }],
                        "terminationGracePeriodSeconds": 0,
                        "runtimeClassName": "",
                        "enableServiceLinks": false,
                        "securityContext": {"runAsUser": 0}
                    }},
                    "strategy": {}
                },
                // terminatingReplicas is a *int32.
                "status": {"terminatingReplicas": 0}
            })
        );

        // Floats and bytes (unused by the tables): -0.0 is zero to Go as well.
        let raw = Enc::new()
            .fixed64(3, (-0.0f64).to_bits())
            .fixed32(4, 0)
            .bytes(6, &[]);
        assert_eq!(decode_test(raw), Ok(json!({"f32": 0.0})));
        let raw = Enc::new().fixed64(3, 0.5f64.to_bits()).bytes(6, &[1]);
        assert_eq!(decode_test(raw), Ok(json!({"f64": 0.5, "bytes": "AQ=="})));
    }

    /// Bodies recorded from kubectl 1.33 (`kubectl create ...` against a server that saves them)
    /// decode to what the same kubectl sends as JSON (`-o json --dry-run=client`), except for
    /// `creationTimestamp: null`, which is left out.
    #[test]
    fn kubectl_fixtures() {
        let labels = json!({"app": "hello"});
        assert_eq!(
            decode_request(&fixture("create-deployment.pb")),
            Ok(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "hello", "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}
                    },
                    "strategy": {}
                },
                "status": {}
            }))
        );

        // `create secret generic s1 --from-file=k=<00 01 02 ff> --from-literal=e=`
        assert_eq!(
            decode_request(&fixture("create-secret.pb")),
            Ok(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s1"},
                "data": {"k": "AAEC/w==", "e": ""}
            }))
        );

        // `create service clusterip svc --tcp=80:8080`
        assert_eq!(
            decode_request(&fixture("create-service.pb")),
            Ok(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "svc", "labels": {"app": "svc"}},
                "spec": {
                    "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                    "selector": {"app": "svc"},
                    "type": "ClusterIP"
                },
                "status": {"loadBalancer": {}}
            }))
        );

        // `create configmap cm --from-file=b=<00 01 02 ff> --from-literal=a=x`
        assert_eq!(
            decode_request(&fixture("create-configmap.pb")),
            Ok(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm"},
                "data": {"a": "x"},
                "binaryData": {"b": "AAEC/w=="}
            }))
        );

        // `create ingress ing --rule=foo.com/bar=svc:8080,tls=sec --class=nginx`
        assert_eq!(
            decode_request(&fixture("create-ingress.pb")),
            Ok(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "ing"},
                "spec": {
                    "ingressClassName": "nginx",
                    "tls": [{"hosts": ["foo.com"], "secretName": "sec"}],
                    "rules": [{"host": "foo.com", "http": {"paths": [{
                        "path": "/bar", "pathType": "Exact",
                        "backend": {"service": {"name": "svc", "port": {"number": 8080}}}
                    }]}}]
                },
                "status": {"loadBalancer": {}}
            }))
        );

        // `create job j --image=busybox -- sleep 1`
        assert_eq!(
            decode_request(&fixture("create-job.pb")),
            Ok(json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "j"},
                "spec": {"template": {
                    "metadata": {},
                    "spec": {
                        "containers": [{
                            "name": "j", "image": "busybox", "command": ["sleep", "1"],
                            "resources": {}
                        }],
                        "restartPolicy": "Never"
                    }
                }},
                "status": {}
            }))
        );
    }

    #[test]
    fn secret_binary_data() {
        let raw = Enc::new()
            .msg(1, Enc::new().str(1, "s"))
            .msg(2, Enc::new().str(1, "bin").bytes(2, &[0, 1, 2, 0xfe, 0xff]))
            .msg(2, Enc::new().str(1, "one").bytes(2, b"a"))
            .msg(2, Enc::new().str(1, "two").bytes(2, b"ab"))
            .msg(2, Enc::new().str(1, "empty"))
            .str(3, "Opaque")
            .varint(5, 1);
        assert_eq!(
            decode("v1", "Secret", raw),
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s"},
                "data": {"bin": "AAEC/v8=", "one": "YQ==", "two": "YWI=", "empty": ""},
                "type": "Opaque",
                "immutable": true
            })
        );
    }

    #[test]
    fn service_ports_int_or_string() {
        let port = |name: &str, target: Enc| {
            Enc::new()
                .str(1, name)
                .str(2, "TCP")
                .varint(3, 80)
                .msg(4, target)
        };
        let spec = Enc::new()
            .msg(1, port("int", Enc::new().varint(1, 0).varint(2, 8080)))
            .msg(1, port("str", Enc::new().varint(1, 1).str(3, "http")))
            .msg(1, port("zero", Enc::new()))
            // int32 -1 as Go writes it (sign-extended to 10 bytes) ...
            .int(12, -1)
            // ... and a later 5-byte encoding of -2, which must win and decode the same way.
            .key(12, 0)
            .raw_varint(0xffff_fffe);
        let got = decode("v1", "Service", Enc::new().msg(2, spec));
        assert_eq!(
            got["spec"],
            json!({
                "ports": [
                    {"name": "int", "protocol": "TCP", "port": 80, "targetPort": 8080},
                    {"name": "str", "protocol": "TCP", "port": 80, "targetPort": "http"},
                    {"name": "zero", "protocol": "TCP", "port": 80, "targetPort": 0}
                ],
                "healthCheckNodePort": -2
            })
        );
        let bad = Enc::new().msg(1, port("bad", Enc::new().varint(1, 7)));
        let err = decode_request(&envelope("v1", "Service", Enc::new().msg(2, bad)))
            .expect_err("invalid IntOrString type");
        assert_eq!(
            err.to_string(),
            "invalid protobuf body at spec.ports[0].targetPort: invalid IntOrString type 7"
        );
    }

    #[test]
    fn delete_options() {
        let raw = || Enc::new().str(4, "Background");
        for api_version in ["v1", "meta.k8s.io/v1", "apps/v1"] {
            assert_eq!(
                decode(api_version, "DeleteOptions", raw()),
                json!({"apiVersion": api_version, "kind": "DeleteOptions", "propagationPolicy": "Background"})
            );
        }
        let raw = Enc::new()
            .int(1, 0)
            .msg(2, Enc::new().str(1, "uid-1"))
            .str(5, "All")
            .str(4, "");
        assert_eq!(
            decode("v1", "DeleteOptions", raw),
            json!({
                "apiVersion": "v1", "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": "uid-1"},
                "dryRun": ["All"],
                // A *string: set explicitly, so kept even though empty.
                "propagationPolicy": ""
            })
        );
    }

    #[test]
    fn times() {
        let ts = |secs: i64, nanos: i64| Enc::new().int(1, secs).int(2, nanos);
        let raw = Enc::new()
            .msg(1, Enc::new().str(1, "e").msg(8, Enc::new()))
            .msg(6, ts(1_704_164_645, 999_000_000))
            .msg(7, ts(0, 0))
            .int(8, 3)
            .msg(10, ts(1_704_164_645, 123_456_789))
            .msg(11, Enc::new().int(1, 2).msg(2, ts(951_782_400, 5_000)));
        assert_eq!(
            decode("v1", "Event", raw),
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "e"},
                "firstTimestamp": "2024-01-02T03:04:05Z",
                "count": 3,
                "eventTime": "2024-01-02T03:04:05.123456Z",
                "series": {"count": 2, "lastObservedTime": "2000-02-29T00:00:00.000005Z"}
            })
        );
        let t = |secs, nanos, micro| time(secs, nanos, micro).expect("in range");
        assert_eq!(t(-1, 0, false), Some(json!("1969-12-31T23:59:59Z")));
        assert_eq!(t(MIN_SECS, 0, false), Some(json!("0000-01-01T00:00:00Z")));
        assert_eq!(t(MAX_SECS, 0, false), Some(json!("9999-12-31T23:59:59Z")));
        assert_eq!(
            t(1_709_164_800, 0, false),
            Some(json!("2024-02-29T00:00:00Z"))
        );
        assert_eq!(
            t(0, 1_000, true),
            Some(json!("1970-01-01T00:00:00.000001Z"))
        );
        assert_eq!(t(10, -1, true), Some(json!("1970-01-01T00:00:09.999999Z")));
        assert_eq!(t(GO_ZERO_SECS, 0, false), None);
        assert_eq!(t(GO_ZERO_SECS, 0, true), None);
        assert!(time(MAX_SECS + 1, 0, false).is_err());
        assert!(time(i64::MIN, 0, false).is_err());
        assert!(time(i64::MAX, i32::MAX, true).is_err());
    }

    #[test]
    fn durations() {
        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (100_000_000, "100ms"),
            (1_500_000_000, "1.5s"),
            (30_000_000_000, "30s"),
            (3_723_000_000_000, "1h2m3s"),
            (3_600_000_000_000, "1h0m0s"),
            (61_000_000_001, "1m1.000000001s"),
            (-1_500_000_000, "-1.5s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
            (i64::MAX, "2562047h47m16.854775807s"),
        ];
        for (nanos, want) in cases {
            assert_eq!(go_duration(nanos), want, "{nanos}");
        }
        let got = decode_test(Enc::new().msg(2, Enc::new().int(1, 90_000_000_000)));
        assert_eq!(got, Ok(json!({"duration": "1m30s"})));
    }

    #[test]
    fn quantities_fields_and_raw_extensions() {
        let limits = Enc::new()
            .msg(
                1,
                Enc::new().str(1, "cpu").msg(2, Enc::new().str(1, "100m")),
            )
            .msg(
                1,
                Enc::new()
                    .str(1, "memory")
                    .msg(2, Enc::new().str(1, "64Mi")),
            )
            .msg(2, Enc::new().str(1, "cpu").msg(2, Enc::new()));
        let container = Enc::new().str(1, "c").msg(8, limits);
        let managed = Enc::new()
            .str(1, "kubectl")
            .msg(4, Enc::new().int(1, 1_704_164_645))
            .str(6, "FieldsV1")
            .msg(7, Enc::new().bytes(1, br#"{"f:spec":{}}"#));
        let raw = Enc::new()
            .msg(1, Enc::new().str(1, "p").msg(17, managed))
            .msg(2, Enc::new().msg(2, container));
        let got = decode("v1", "Pod", raw);
        assert_eq!(
            got["spec"]["containers"][0]["resources"],
            json!({"limits": {"cpu": "100m", "memory": "64Mi"}, "requests": {"cpu": "0"}})
        );
        assert_eq!(
            got["metadata"]["managedFields"],
            json!([{
                "manager": "kubectl", "time": "2024-01-02T03:04:05Z",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}
            }])
        );

        let revision = |data: Enc| Enc::new().msg(2, data).int(3, 2);
        let got = decode(
            "apps/v1",
            "ControllerRevision",
            revision(Enc::new().bytes(1, br#"{"spec":{"template":{"x":[1,2]}}}"#)),
        );
        assert_eq!(got["data"], json!({"spec": {"template": {"x": [1, 2]}}}));
        assert_eq!(got["revision"], 2);
        // Go writes an unset RawExtension as null.
        let got = decode("apps/v1", "ControllerRevision", revision(Enc::new()));
        assert_eq!(got["data"], Value::Null);
        // An object embedded as protobuf.
        let inner = envelope("v1", "ConfigMap", Enc::new().entry(2, "k", "v"));
        let got = decode(
            "apps/v1",
            "ControllerRevision",
            revision(Enc::new().bytes(1, &inner)),
        );
        assert_eq!(
            got["data"],
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}})
        );
        let err = fail(&envelope(
            "apps/v1",
            "ControllerRevision",
            revision(Enc::new().bytes(1, b"{not json")),
        ));
        assert!(
            err.starts_with("invalid protobuf body at data: embedded JSON"),
            "{err}"
        );
    }

    #[test]
    fn inlined_structs() {
        let probe = Enc::new()
            .msg(
                1,
                Enc::new().msg(
                    2,
                    Enc::new()
                        .str(1, "/healthz")
                        .msg(2, Enc::new().varint(2, 8080)),
                ),
            )
            .varint(4, 10);
        let container = Enc::new().str(1, "c").msg(10, probe);
        let volume = Enc::new()
            .str(1, "scratch")
            .msg(2, Enc::new().msg(2, Enc::new()));
        let raw = Enc::new().msg(2, Enc::new().msg(1, volume).msg(2, container));
        let got = decode("v1", "Pod", raw);
        assert_eq!(
            got["spec"]["volumes"],
            json!([{"name": "scratch", "emptyDir": {}}])
        );
        assert_eq!(
            got["spec"]["containers"][0]["livenessProbe"],
            json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10})
        );
        // Proto name aPIGroup, JSON name apiGroup.
        let raw = Enc::new().msg(
            2,
            Enc::new()
                .str(1, "c")
                .msg(2, Enc::new().str(1, "k8s.example.com")),
        );
        let got = decode("networking.k8s.io/v1", "IngressClass", raw);
        assert_eq!(
            got["spec"],
            json!({"controller": "c", "parameters": {"apiGroup": "k8s.example.com"}})
        );
    }

    #[test]
    fn merging_and_unknown_fields() {
        let raw = Enc::new()
            .msg(1, Enc::new().str(1, "first").entry(11, "a", "1"))
            // Unknown fields of every wire type, nested groups included.
            .varint(99, 5)
            .fixed64(98, 7)
            .msg(97, Enc::new().str(1, "ignored"))
            .fixed32(96, 7)
            .key(95, 3)
            .varint(1, 1)
            .key(94, 3)
            .fixed64(1, 1)
            .key(94, 4)
            .key(95, 4)
            .str(3, "Opaque")
            .msg(
                1,
                Enc::new()
                    .str(1, "second")
                    .entry(11, "b", "2")
                    .entry(11, "a", "3"),
            )
            .str(3, "last")
            .msg(1, Enc::new().str(14, "f1"))
            .msg(1, Enc::new().str(14, "f2"));
        assert_eq!(
            decode("v1", "Secret", raw),
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "second", "labels": {"a": "3", "b": "2"}, "finalizers": ["f1", "f2"]},
                "type": "last"
            })
        );
        let err = fail(&envelope("v1", "Secret", Enc::new().varint(4, 1)));
        assert_eq!(
            err,
            "invalid protobuf body at stringData: wrong wire type for a map entry"
        );
        let err = fail(&envelope("v1", "ConfigMap", Enc::new().str(4, "yes")));
        assert_eq!(err, "invalid protobuf body at immutable: wrong wire type");
        // An end-group that closes nothing.
        assert!(fail(&envelope("v1", "Secret", Enc::new().key(9, 3).key(8, 4))).contains("group"));
    }

    #[test]
    fn numbers_packed_and_floats() {
        let packed = Enc::new()
            .raw_varint(1)
            .raw_varint(u64::MAX)
            .raw_varint(300);
        let mut doubles = 2.0f64.to_le_bytes().to_vec();
        doubles.extend((-0.5f64).to_le_bytes());
        let raw = Enc::new()
            .varint(1, 7)
            .bytes(1, &packed.0)
            .fixed64(3, 1.5f64.to_bits())
            .fixed32(4, 0.25f32.to_bits())
            .bytes(7, &doubles)
            .bytes(6, &[])
            .msg(5, Enc::new().msg(5, Enc::new().varint(1, 1)));
        assert_eq!(
            decode_test(raw),
            Ok(json!({
                "ints": [7, 1, -1, 300],
                "f64": 1.5,
                "f32": 0.25,
                "doubles": [2.0, -0.5],
                "child": {"child": {"ints": [1]}}
            }))
        );
        assert!(decode_test(Enc::new().fixed64(3, f64::NAN.to_bits())).is_err());
        assert!(decode_test(Enc::new().bytes(1, &[0x80])).is_err());
        assert!(decode_test(Enc::new().bytes(7, &[0; 9])).is_err());
    }

    #[test]
    fn base64_matches_go() {
        let cases: [(&[u8], &str); 5] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (&[0xfb, 0xff, 0xbf], "+/+/"),
        ];
        for (data, want) in cases {
            assert_eq!(base64(data), want);
        }
    }

    #[test]
    fn rejects_malformed_envelopes() {
        let ok = envelope("v1", "ConfigMap", Enc::new().entry(2, "k", "v"));
        assert!(decode_request(&ok).is_ok());

        assert_eq!(
            fail(b""),
            "invalid protobuf body: missing the k8s\\0 prefix"
        );
        assert!(fail(b"{\"kind\":\"Pod\"}").contains("k8s\\0 prefix"));
        assert!(fail(&ok[1..]).contains("prefix"));
        assert_eq!(
            fail(MAGIC),
            "invalid protobuf body: the envelope has no kind"
        );

        let err = fail(&envelope("v1", "Gadget", Enc::new()));
        assert_eq!(
            err,
            "invalid protobuf body: kind \"Gadget\" of apiVersion \"v1\" is not supported in protobuf"
        );
        assert!(fail(&envelope("apps/v2", "Deployment", Enc::new())).contains("not supported"));

        // Every truncation either fails cleanly or (at a field boundary) decodes a prefix.
        for n in 0..ok.len() {
            let _ = decode_request(&ok[..n]);
        }
        assert_eq!(
            fail(&ok[..ok.len() - 1]),
            "invalid protobuf body: truncated field"
        );

        let mut gz = MAGIC.to_vec();
        gz.extend(
            Enc::new()
                .msg(1, Enc::new().str(1, "v1").str(2, "Pod"))
                .str(3, "gzip")
                .0,
        );
        assert!(fail(&gz).contains("contentEncoding"));
        let mut json_ct = MAGIC.to_vec();
        json_ct.extend(
            Enc::new()
                .msg(1, Enc::new().str(2, "Pod"))
                .str(4, "application/json")
                .0,
        );
        assert!(fail(&json_ct).contains("contentType"));
    }

    #[test]
    fn rejects_malformed_fields() {
        // A length prefix far beyond the body must fail, not allocate.
        let mut huge = MAGIC.to_vec();
        huge.extend(Enc::new().key(2, 2).raw_varint(1 << 62).0);
        assert_eq!(fail(&huge), "invalid protobuf body: truncated field");
        let huge_inner = Enc::new().key(1, 2).raw_varint(u64::MAX);
        assert_eq!(
            fail(&envelope("v1", "Pod", huge_inner)),
            "invalid protobuf body: truncated field"
        );

        let mut long = MAGIC.to_vec();
        long.extend([0x08]);
        long.extend([0xff; 10]);
        long.push(0x01);
        assert_eq!(
            fail(&long),
            "invalid protobuf body: varint overflows 64 bits"
        );
        let mut eleven = MAGIC.to_vec();
        eleven.extend([
            0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
        ]);
        assert!(fail(&eleven).contains("varint"));

        let bad_utf8 = Enc::new().msg(1, Enc::new().bytes(1, &[0xff, 0xfe]));
        assert_eq!(
            fail(&envelope("v1", "Pod", bad_utf8)),
            "invalid protobuf body at metadata.name: string is not UTF-8"
        );
        let wrong_wire = Enc::new().msg(1, Enc::new().varint(1, 3));
        assert_eq!(
            fail(&envelope("v1", "Pod", wrong_wire)),
            "invalid protobuf body at metadata.name: wrong wire type"
        );
        assert!(fail(&envelope("v1", "Pod", Enc::new().varint(1, 0))).contains("metadata"));
        assert!(
            fail(&envelope("v1", "Pod", Enc::new().key(0, 0).raw_varint(0)))
                .contains("field number 0")
        );
        assert!(fail(&envelope("v1", "Pod", Enc::new().key(1, 6))).contains("wire type 6"));
        assert!(fail(&envelope("v1", "Pod", Enc::new().key(1, 4))).contains("wire type 4"));
        assert!(
            fail(&envelope("v1", "Pod", Enc::new().key(9, 3).varint(1, 1))).contains("truncated")
        );
        let out_of_range = Enc::new().msg(1, Enc::new().msg(8, Enc::new().int(1, i64::MAX)));
        assert!(fail(&envelope("v1", "Pod", out_of_range)).contains("creationTimestamp"));
    }

    #[test]
    fn bounds_nesting() {
        // Through a self-referencing message...
        let mut raw = Enc::new().varint(1, 1);
        for _ in 0..MAX_DEPTH {
            raw = Enc::new().msg(5, raw);
        }
        assert!(decode_test(raw.clone()).is_ok());
        let err = decode_test(Enc::new().msg(5, raw)).expect_err("too deep");
        assert!(
            err.to_string().contains("test.Test nested too deeply"),
            "{err}"
        );

        // ... and through objects embedded in RawExtensions.
        let mut body = envelope("v1", "ConfigMap", Enc::new());
        for _ in 0..MAX_DEPTH {
            body = envelope(
                "apps/v1",
                "ControllerRevision",
                Enc::new().msg(2, Enc::new().bytes(1, &body)),
            );
        }
        assert!(fail(&body).contains("nested too deeply"));

        // Deeply nested groups are skipped up to the limit.
        let mut groups = Enc::new();
        for _ in 0..=MAX_DEPTH {
            groups = groups.key(9, 3);
        }
        assert!(fail(&envelope("v1", "Pod", groups)).contains("groups nested too deeply"));
    }

    /// Random corruptions of real bodies never panic.
    #[test]
    fn survives_corruption() {
        let bodies: Vec<Vec<u8>> = [
            "create-deployment.pb",
            "create-secret.pb",
            "create-service.pb",
            "create-configmap.pb",
            "create-job.pb",
            "create-ingress.pb",
        ]
        .iter()
        .map(|f| fixture(f))
        .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..20_000 {
            let mut body = bodies[i % bodies.len()].clone();
            for _ in 0..=rand() % 4 {
                let at = (rand() as usize) % body.len();
                match rand() % 3 {
                    0 => body[at] = rand() as u8,
                    1 => body[at] ^= 0x80,
                    _ => body.truncate(at.max(4)),
                }
            }
            let _ = decode_request(&body);
        }
    }
}
