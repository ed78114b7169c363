//! Semantic validation of the built-in kinds, as k8s.io/kubernetes/pkg/apis/*/validation does
//! it after defaulting. Each problem becomes a `StatusCause` whose field path and message read
//! like the apiserver's (`spec.template.spec.containers[0].image: Required value`); values are
//! printed the way Go's field errors print them (`%q` strings, `map[string]string{…}`,
//! `v1.LabelSelector{…}`). Pure, and never panics: a field of the wrong JSON type is the
//! schema check's to report, so it is skipped here.
//!
//! Also home of the resource-quantity parser that defaulting uses to canonicalize quantities.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::status::StatusCause;

static NULL: Value = Value::Null;

/// Volume source fields, in the order Kubernetes checks them ("may not specify more than 1
/// volume type" names every source after the first).
pub(crate) const VOLUME_SOURCES: [&str; 30] = [
    "emptyDir",
    "hostPath",
    "gitRepo",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "flocker",
    "persistentVolumeClaim",
    "rbd",
    "cinder",
    "cephfs",
    "quobyte",
    "downwardAPI",
    "fc",
    "flexVolume",
    "configMap",
    "azureFile",
    "vsphereVolume",
    "photonPersistentDisk",
    "portworxVolume",
    "azureDisk",
    "storageos",
    "projected",
    "scaleIO",
    "csi",
    "ephemeral",
    "image",
];

/// Validates `obj` (already defaulted) of `kind` in `api_version`; `old` is the stored object
/// on updates. Returns one cause per problem, empty when the object is valid.
pub(crate) fn validate(
    api_version: &str,
    kind: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Vec<StatusCause> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let mut e = Errs::default();
    object_meta(&mut e, get(obj, "metadata"));
    match (group, kind) {
        ("", "Pod") => {
            pod_spec(&mut e, get(obj, "spec"), "spec", true);
            if let Some(old) = old {
                pod_update(&mut e, obj, old);
            }
        }
        ("", "ReplicationController") => replication_controller(&mut e, obj),
        ("", "Service") => service(&mut e, obj, old),
        ("", "ConfigMap") => config_map(&mut e, obj, old),
        ("", "Secret") => secret(&mut e, obj, old),
        ("apps", "Deployment") => deployment(&mut e, obj, old),
        ("apps", "ReplicaSet") => replica_set(&mut e, obj, old),
        ("apps", "StatefulSet") => stateful_set(&mut e, obj, old),
        ("apps", "DaemonSet") => daemon_set(&mut e, obj, old),
        ("batch", "Job") => job(&mut e, obj, old),
        ("batch", "CronJob") => cron_job(&mut e, obj, old),
        ("policy", "PodDisruptionBudget") => pod_disruption_budget(&mut e, obj),
        _ => {}
    }
    e.0
}

// ---------------------------------------------------------------------------------------
// Field errors, worded as k8s.io/apimachinery/pkg/util/validation/field words them.

#[derive(Default)]
struct Errs(Vec<StatusCause>);

fn detailed(head: &str, detail: &str) -> String {
    if detail.is_empty() {
        head.to_owned()
    } else {
        format!("{head}: {detail}")
    }
}

impl Errs {
    fn push(&mut self, reason: &str, field: &str, message: String) {
        self.0.push(StatusCause {
            reason: reason.to_owned(),
            message,
            field: field.to_owned(),
        });
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn required(&mut self, field: &str, detail: &str) {
        self.push(
            "FieldValueRequired",
            field,
            detailed("Required value", detail),
        );
    }

    /// `value` is already printed the Go way (see `quote`, `go_map`, …).
    fn invalid(&mut self, field: &str, value: &str, detail: &str) {
        let head = format!("Invalid value: {value}");
        self.push("FieldValueInvalid", field, detailed(&head, detail));
    }

    fn not_supported(&mut self, field: &str, value: &str, valid: &[&str]) {
        let mut m = format!("Unsupported value: {value}");
        if !valid.is_empty() {
            let list: Vec<String> = valid.iter().map(|v| quote(v)).collect();
            let _ = write!(m, ": supported values: {}", list.join(", "));
        }
        self.push("FieldValueNotSupported", field, m);
    }

    fn duplicate(&mut self, field: &str, value: &str) {
        self.push(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {value}"),
        );
    }

    fn forbidden(&mut self, field: &str, detail: &str) {
        self.push("FieldValueForbidden", field, detailed("Forbidden", detail));
    }

    fn too_long(&mut self, field: &str, max: usize) {
        self.push(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be more than {max} bytes"),
        );
    }

    fn not_found(&mut self, field: &str, value: &str) {
        self.push("FieldValueNotFound", field, format!("Not found: {value}"));
    }

    fn nonnegative(&mut self, field: &str, value: Option<i64>) {
        if let Some(n) = value
            && n < 0
        {
            self.invalid(field, &n.to_string(), "must be greater than or equal to 0");
        }
    }

    /// `ValidateImmutableField`: `value` is the new value printed the Go way.
    fn immutable(&mut self, field: &str, new: &Value, old: &Value, value: &str) {
        if !same(new, old) {
            self.invalid(field, value, "field is immutable");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Go value printing.

/// Go's `%q`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => {
                let n = u32::from(c);
                let _ = if n < 0x80 {
                    write!(out, "\\x{n:02x}")
                } else if n <= 0xffff {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `map[string]string` as `%#v` prints it (keys sorted); absent is a nil map.
fn go_map(v: &Value) -> String {
    match v.as_object() {
        None => "map[string]string(nil)".to_owned(),
        Some(m) => {
            let sorted: BTreeMap<&String, &str> = m
                .iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or("")))
                .collect();
            let items: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
                .collect();
            format!("map[string]string{{{}}}", items.join(", "))
        }
    }
}

/// A `[]string` as `%#v` prints it.
fn go_strings(v: &Value) -> String {
    match v.as_array() {
        None => "[]string(nil)".to_owned(),
        Some(a) => {
            let items: Vec<String> = a.iter().map(|s| quote(s.as_str().unwrap_or(""))).collect();
            format!("[]string{{{}}}", items.join(", "))
        }
    }
}

/// A `metav1.LabelSelector` as `%#v` prints it; null for an absent one.
fn go_selector(sel: &Value) -> String {
    if sel.is_null() {
        return "null".to_owned();
    }
    let exprs = match get(sel, "matchExpressions").as_array() {
        None => "[]v1.LabelSelectorRequirement(nil)".to_owned(),
        Some(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|r| {
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{}}}",
                        quote(text(r, "key")),
                        quote(text(r, "operator")),
                        go_strings(get(r, "values"))
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
        go_map(get(sel, "matchLabels"))
    )
}

/// An `intstr.IntOrString` as `%#v` prints it.
fn go_int_str(v: &Value) -> String {
    match v {
        Value::String(s) => format!(
            "intstr.IntOrString{{Type:1, IntVal:0, StrVal:{}}}",
            quote(s)
        ),
        other => format!(
            "intstr.IntOrString{{Type:0, IntVal:{}, StrVal:\"\"}}",
            other.as_i64().unwrap_or(0)
        ),
    }
}

/// A scalar the way `%v` prints it (strings quoted, absent as null).
fn go_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::String(s) => quote(s),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// JSON access that never panics.

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&NULL)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

fn has(v: &Value, key: &str) -> bool {
    !get(v, key).is_null()
}

fn object_len(v: &Value) -> usize {
    v.as_object().map_or(0, Map::len)
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// `v` without null members, recursively: absent and null mean the same to Go.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// Semantic equality: nulls dropped; an empty map or list equals an absent one.
fn same(a: &Value, b: &Value) -> bool {
    fn empty(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => false,
        }
    }
    if empty(a) && empty(b) {
        return true;
    }
    normalized(a) == normalized(b)
}

// ---------------------------------------------------------------------------------------
// Name syntax (k8s.io/apimachinery/pkg/util/validation), returning its messages.

const DNS_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QNAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
// Kubernetes 1.32+ (RelaxedEnvironmentVariableValidation): any printable ASCII but '='.
const ENV_NAME_MSG: &str = "a valid environment variable name must consist only of printable ASCII characters other than '='";
const PERCENT_MSG: &str = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";
const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
const QUANTITY_SUFFIX_MSG: &str = "unable to parse quantity's suffix";
const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";
const FILE_MODE_MSG: &str = "must be a number between 0 and 0777 (octal), both inclusive";
const IMMUTABLE_WHEN_SET: &str = "field is immutable when `immutable` is set";

fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn label_syntax(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| lower_alnum(*c) || *c == b'-')
        && b.first().is_some_and(|c| lower_alnum(*c))
        && b.last().is_some_and(|c| lower_alnum(*c))
}

fn subdomain_syntax(v: &str) -> bool {
    v.split('.').all(label_syntax)
}

fn dns1123_label(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(max_len(63));
    }
    if !label_syntax(v) {
        if subdomain_syntax(v) {
            errs.push("must not contain dots".to_owned());
        } else {
            errs.push(DNS_LABEL_MSG.to_owned());
        }
    }
    errs
}

fn dns1123_subdomain(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 253 {
        errs.push(max_len(253));
    }
    if !subdomain_syntax(v) {
        errs.push(DNS_SUBDOMAIN_MSG.to_owned());
    }
    errs
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn qname_syntax(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Label keys, annotation keys, finalizers: an optional DNS-subdomain prefix and a name.
fn qualified_name(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = v.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {QNAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len(63)));
    }
    if !qname_syntax(name) {
        errs.push(format!("name part {QNAME_MSG}"));
    }
    errs
}

fn label_value(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(max_len(63));
    }
    if !v.is_empty() && !qname_syntax(v) {
        errs.push(LABEL_VALUE_MSG.to_owned());
    }
    errs
}

/// An IANA service name (`IsValidPortName`).
fn port_name(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 15 {
        errs.push(max_len(15));
    }
    if v.is_empty()
        || !v
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_owned(),
        );
    }
    if !v.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_owned());
    }
    if v.contains("--") {
        errs.push("must not contain consecutive hyphens".to_owned());
    }
    if v.starts_with('-') || v.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_owned());
    }
    errs
}

fn chdir_prefix(v: &str) -> Option<String> {
    match v {
        "." => Some("must not be '.'".to_owned()),
        ".." => Some("must not be '..'".to_owned()),
        _ if v.starts_with("..") => Some("must not start with '..'".to_owned()),
        _ => None,
    }
}

fn config_map_key(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 253 {
        errs.push(max_len(253));
    }
    if v.is_empty()
        || !v
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(CONFIG_KEY_MSG.to_owned());
    }
    errs.extend(chdir_prefix(v));
    errs
}

fn env_var_name(v: &str) -> Vec<String> {
    let ok = !v.is_empty() && v.bytes().all(|c| (b' '..=b'~').contains(&c) && c != b'=');
    let mut errs = Vec::new();
    if !ok {
        errs.push(ENV_NAME_MSG.to_owned());
    }
    errs.extend(chdir_prefix(v));
    errs
}

fn is_percent(v: &str) -> bool {
    v.strip_suffix('%')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
}

fn valid_port(n: i64) -> bool {
    (1..=65535).contains(&n)
}

// ---------------------------------------------------------------------------------------
// Resource quantities (k8s.io/apimachinery/pkg/api/resource).

const NANO: i128 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QFormat {
    DecimalSI,
    BinarySI,
    DecimalExponent,
}

/// A parsed quantity: its value in nano units (rounded away from zero, as Kubernetes rounds
/// anything finer than 1n) and the notation it was written in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quantity {
    nanos: i128,
    format: QFormat,
    /// False when the value overflowed; such a quantity is compared but not reprinted.
    exact: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QuantityError {
    Format,
    Suffix,
}

impl QuantityError {
    fn message(self) -> &'static str {
        match self {
            QuantityError::Format => QUANTITY_MSG,
            QuantityError::Suffix => QUANTITY_SUFFIX_MSG,
        }
    }
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

/// `ceil(x / 10^n)` for `x >= 0`.
fn div_pow10_ceil(x: i128, n: u32) -> i128 {
    match pow10(n) {
        Some(d) => x / d + i128::from(x % d != 0),
        None => i128::from(x > 0),
    }
}

/// The quantity's notation and power: decimal exponent, SI or binary suffix.
fn quantity_suffix(s: &str) -> Option<(u32, i32, QFormat)> {
    let si = |e| Some((10, e, QFormat::DecimalSI));
    let bin = |e| Some((2, e, QFormat::BinarySI));
    match s {
        "" => si(0),
        "n" => si(-9),
        "u" => si(-6),
        "m" => si(-3),
        "k" => si(3),
        "M" => si(6),
        "G" => si(9),
        "T" => si(12),
        "P" => si(15),
        "E" => si(18),
        "Ki" => bin(10),
        "Mi" => bin(20),
        "Gi" => bin(30),
        "Ti" => bin(40),
        "Pi" => bin(50),
        "Ei" => bin(60),
        _ => {
            let rest = s.strip_prefix(['e', 'E'])?;
            let e: i32 = rest.parse().ok()?;
            Some((10, e, QFormat::DecimalExponent))
        }
    }
}

pub(crate) fn parse_quantity(s: &str) -> Result<Quantity, QuantityError> {
    let b = s.as_bytes();
    let at = |i: usize| b.get(i).copied();
    let mut i = 0;
    let negative = match at(0) {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let int_start = i;
    while at(i).is_some_and(|c| c.is_ascii_digit()) {
        i += 1;
    }
    let int_digits = s.get(int_start..i).unwrap_or("");
    let mut frac_digits = "";
    if at(i) == Some(b'.') {
        i += 1;
        let start = i;
        while at(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        frac_digits = s.get(start..i).unwrap_or("");
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(QuantityError::Format);
    }
    let suffix_start = i;
    while at(i).is_some_and(|c| b"eEinumkKMGTP".contains(&c)) {
        i += 1;
    }
    if matches!(at(i), Some(b'-' | b'+')) {
        i += 1;
    }
    while at(i).is_some_and(|c| c.is_ascii_digit()) {
        i += 1;
    }
    if i != b.len() {
        return Err(QuantityError::Format);
    }
    let suffix = s.get(suffix_start..).unwrap_or("");
    let (base, exp, mut format) = quantity_suffix(suffix).ok_or(QuantityError::Suffix)?;

    // The digits as one integer, scaled down by the fraction's length.
    let mut exact = true;
    let mut mantissa: i128 = 0;
    for c in int_digits.bytes().chain(frac_digits.bytes()) {
        match mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(c - b'0')))
        {
            Some(m) => mantissa = m,
            None => {
                exact = false;
                break;
            }
        }
    }
    let frac_len = i32::try_from(frac_digits.len()).unwrap_or(i32::MAX);
    let nanos = if !exact {
        i128::MAX / 2
    } else if base == 10 {
        let shift = exp.saturating_sub(frac_len).saturating_add(9);
        if shift >= 0 {
            match pow10(shift.unsigned_abs()).and_then(|p| mantissa.checked_mul(p)) {
                Some(v) => v,
                None => {
                    exact = false;
                    i128::MAX / 2
                }
            }
        } else {
            div_pow10_ceil(mantissa, shift.unsigned_abs())
        }
    } else {
        let scaled = 1i128
            .checked_shl(exp.unsigned_abs())
            .and_then(|p| mantissa.checked_mul(p))
            .and_then(|v| v.checked_mul(NANO));
        match scaled {
            Some(v) => div_pow10_ceil(v, frac_len.unsigned_abs()),
            None => {
                exact = false;
                i128::MAX / 2
            }
        }
    };
    // A binary quantity below one is shown in decimal, as Kubernetes does.
    if format == QFormat::BinarySI && nanos > 0 && nanos < NANO {
        format = QFormat::DecimalSI;
    }
    Ok(Quantity {
        nanos: if negative { -nanos } else { nanos },
        format,
        exact,
    })
}

impl Quantity {
    fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// `SetDefaults_ResourceList`: rounds up to milli precision.
    pub(crate) fn round_up_milli(&mut self) {
        const MILLI: i128 = 1_000_000;
        let r = self.nanos % MILLI;
        if r > 0 {
            self.nanos += MILLI - r;
        } else if r < 0 {
            self.nanos -= MILLI + r;
        }
    }

    /// The canonical form the apiserver stores and prints (`1024Mi` → `1Gi`, `0.5` →
    /// `500m`); None for a value too large to reprint exactly.
    pub(crate) fn canonical(&self) -> Option<String> {
        if !self.exact {
            return None;
        }
        if self.nanos == 0 {
            return Some("0".to_owned());
        }
        let mut format = self.format;
        if format == QFormat::BinarySI && (self.nanos.abs() < 1024 * NANO || self.nanos % NANO != 0)
        {
            format = QFormat::DecimalSI;
        }
        if format == QFormat::BinarySI {
            let mut m = self.nanos / NANO;
            let mut k = 0usize;
            while k < 6 && m % 1024 == 0 {
                m /= 1024;
                k += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
                .get(k)
                .copied()
                .unwrap_or("");
            return Some(format!("{m}{suffix}"));
        }
        let mut m = self.nanos;
        let mut e: i32 = -9;
        while m % 10 == 0 {
            m /= 10;
            e += 1;
        }
        let r = e.rem_euclid(3);
        m = m.checked_mul(pow10(r.unsigned_abs())?)?;
        e -= r;
        let suffix = if format == QFormat::DecimalExponent {
            if e == 0 {
                String::new()
            } else {
                format!("e{e}")
            }
        } else {
            if e > 18 {
                m = m.checked_mul(pow10((e - 18).unsigned_abs())?)?;
                e = 18;
            }
            match e {
                -9 => "n",
                -6 => "u",
                -3 => "m",
                3 => "k",
                6 => "M",
                9 => "G",
                12 => "T",
                15 => "P",
                18 => "E",
                _ => "",
            }
            .to_owned()
        };
        Some(format!("{m}{suffix}"))
    }

    fn display(&self) -> String {
        self.canonical()
            .unwrap_or_else(|| format!("{}n", self.nanos))
    }
}

/// A quantity field's text: quantities arrive as strings, or as JSON numbers.
fn quantity_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a quantity field, reporting a malformed one at `path`.
fn quantity_at(e: &mut Errs, v: &Value, path: &str) -> Option<Quantity> {
    let s = quantity_text(v)?;
    match parse_quantity(&s) {
        Ok(q) => Some(q),
        Err(err) => {
            e.invalid(path, &quote(&s), err.message());
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Object metadata.

const ANNOTATIONS_LIMIT: usize = 256 * 1024;

fn object_meta(e: &mut Errs, meta: &Value) {
    labels(e, get(meta, "labels"), "metadata.labels");
    annotations(e, get(meta, "annotations"), "metadata.annotations");
    owner_references(e, list(meta, "ownerReferences"));
    finalizers(e, get(meta, "finalizers"));
}

fn labels(e: &mut Errs, labels: &Value, path: &str) {
    let Some(m) = labels.as_object() else {
        return;
    };
    for (k, v) in m {
        for msg in qualified_name(k) {
            e.invalid(path, &quote(k), &msg);
        }
        if let Some(v) = v.as_str() {
            for msg in label_value(v) {
                e.invalid(path, &quote(v), &msg);
            }
        }
    }
}

fn annotations(e: &mut Errs, annotations: &Value, path: &str) {
    let Some(m) = annotations.as_object() else {
        return;
    };
    let mut total = 0usize;
    for (k, v) in m {
        // Annotation keys are qualified names except that case does not matter.
        for msg in qualified_name(&k.to_lowercase()) {
            e.invalid(path, &quote(k), &msg);
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > ANNOTATIONS_LIMIT {
        e.too_long(path, ANNOTATIONS_LIMIT);
    }
}

fn owner_references(e: &mut Errs, refs: &[Value]) {
    let path = "metadata.ownerReferences";
    let mut controller: Option<String> = None;
    for r in refs {
        let api_version = text(r, "apiVersion");
        // schema.FromAPIVersionAndKind: "v1", "group/v1"; anything else has no version.
        let version = match api_version.split('/').collect::<Vec<_>>().as_slice() {
            [v] => *v,
            [_, v] => *v,
            _ => "",
        };
        if version.is_empty() {
            e.invalid(
                &format!("{path}.apiVersion"),
                &quote(api_version),
                "version must not be empty",
            );
        }
        for key in ["kind", "name", "uid"] {
            if text(r, key).is_empty() {
                e.invalid(
                    &format!("{path}.{key}"),
                    &quote(text(r, key)),
                    "must not be empty",
                );
            }
        }
        if get(r, "controller").as_bool() == Some(true) {
            let this = format!("{}/{}", text(r, "kind"), text(r, "name"));
            match &controller {
                Some(first) => e.invalid(
                    path,
                    "[]v1.OwnerReference{...}",
                    &format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {this}"
                    ),
                ),
                None => controller = Some(this),
            }
        }
    }
}

fn finalizers(e: &mut Errs, finalizers: &Value) {
    let path = "metadata.finalizers";
    let names: Vec<&str> = finalizers
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for f in &names {
        for msg in qualified_name(f) {
            e.invalid(path, &quote(f), &msg);
        }
    }
    if names.contains(&"orphan") && names.contains(&"foregroundDeletion") {
        e.invalid(
            path,
            &go_strings(finalizers),
            "finalizer orphan and foregroundDeletion cannot be both set",
        );
    }
}

// ---------------------------------------------------------------------------------------
// Label selectors.

#[derive(Debug)]
enum Selector {
    /// A nil selector: matches nothing.
    Nothing,
    /// An empty selector: matches everything.
    Everything,
    Reqs(Vec<(String, String, Vec<String>)>),
}

/// Whether a `metav1.LabelSelector` selects `labels`: a null selector selects nothing, an
/// empty one everything (policy/v1's PodDisruptionBudget rule).
pub(crate) fn label_selector_selects(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    Selector::of(sel).matches(labels)
}

impl Selector {
    fn of(sel: &Value) -> Selector {
        if sel.is_null() {
            return Selector::Nothing;
        }
        let mut reqs = Vec::new();
        for (k, v) in string_map(get(sel, "matchLabels")) {
            reqs.push((k, "In".to_owned(), vec![v]));
        }
        for r in list(sel, "matchExpressions") {
            let values = list(r, "values")
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            reqs.push((
                text(r, "key").to_owned(),
                text(r, "operator").to_owned(),
                values,
            ));
        }
        if reqs.is_empty() {
            Selector::Everything
        } else {
            Selector::Reqs(reqs)
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Selector::Everything)
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::Nothing => false,
            Selector::Everything => true,
            Selector::Reqs(reqs) => reqs.iter().all(|(k, op, vs)| match op.as_str() {
                "In" => labels.get(k).is_some_and(|v| vs.contains(v)),
                "NotIn" => labels.get(k).is_none_or(|v| !vs.contains(v)),
                "Exists" => labels.contains_key(k),
                "DoesNotExist" => !labels.contains_key(k),
                _ => false,
            }),
        }
    }
}

fn selector_is_empty(sel: &Value) -> bool {
    object_len(get(sel, "matchLabels")) + list(sel, "matchExpressions").len() == 0
}

/// `ValidateLabelSelector`; returns whether the selector converts (`LabelSelectorAsSelector`
/// fails exactly when a requirement is malformed).
fn label_selector(e: &mut Errs, sel: &Value, path: &str) -> bool {
    let before = e.len();
    labels(e, get(sel, "matchLabels"), &format!("{path}.matchLabels"));
    for (i, r) in list(sel, "matchExpressions").iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = list(r, "values");
        match text(r, "operator") {
            "In" | "NotIn" => {
                if values.is_empty() {
                    e.required(
                        &format!("{p}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    e.forbidden(
                        &format!("{p}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    );
                }
            }
            op => e.invalid(
                &format!("{p}.operator"),
                &quote(op),
                "not a valid selector operator",
            ),
        }
        let key = text(r, "key");
        for msg in qualified_name(key) {
            e.invalid(&format!("{p}.key"), &quote(key), &msg);
        }
        for (j, v) in values.iter().enumerate() {
            if let Some(v) = v.as_str() {
                for msg in label_value(v) {
                    e.invalid(&format!("{p}.values[{j}]"), &quote(v), &msg);
                }
            }
        }
    }
    e.len() == before
}

/// The template's labels must satisfy a non-empty selector.
fn selector_matches_template(e: &mut Errs, selector: &Selector, template: &Value, path: &str) {
    let labels = get(get(template, "metadata"), "labels");
    if !selector.is_empty() && !selector.matches(&string_map(labels)) {
        e.invalid(
            &format!("{path}.metadata.labels"),
            &go_map(labels),
            "`selector` does not match template `labels`",
        );
    }
}

// ---------------------------------------------------------------------------------------
// Pod specs.

fn pod_template(e: &mut Errs, template: &Value, path: &str) {
    let meta = get(template, "metadata");
    labels(e, get(meta, "labels"), &format!("{path}.labels"));
    annotations(e, get(meta, "annotations"), &format!("{path}.annotations"));
    let spec = get(template, "spec");
    pod_spec(e, spec, &format!("{path}.spec"), false);
    if !list(spec, "ephemeralContainers").is_empty() {
        e.forbidden(
            &format!("{path}.spec.ephemeralContainers"),
            "ephemeral containers not allowed in pod template",
        );
    }
}

/// A replica controller's template: selector match, pod spec, restart policy Always.
fn replica_template(e: &mut Errs, template: &Value, selector: &Selector, path: &str, owner: &str) {
    selector_matches_template(e, selector, template, path);
    pod_template(e, template, path);
    always_restarts(e, template, path, owner);
}

fn always_restarts(e: &mut Errs, template: &Value, path: &str, owner: &str) {
    let spec = get(template, "spec");
    let policy = text(spec, "restartPolicy");
    if policy != "Always" {
        e.not_supported(
            &format!("{path}.spec.restartPolicy"),
            &quote(policy),
            &["Always"],
        );
    }
    if has(spec, "activeDeadlineSeconds") {
        e.forbidden(
            &format!("{path}.spec.activeDeadlineSeconds"),
            &format!("activeDeadlineSeconds in {owner} is not Supported"),
        );
    }
}

fn pod_spec(e: &mut Errs, spec: &Value, path: &str, is_pod: bool) {
    let volumes = volumes(e, list(spec, "volumes"), &format!("{path}.volumes"));
    let containers = list(spec, "containers");
    regular_containers(e, containers, &format!("{path}.containers"), &volumes);
    init_containers(
        e,
        list(spec, "initContainers"),
        containers,
        &format!("{path}.initContainers"),
        &volumes,
    );

    let restart = text(spec, "restartPolicy");
    match restart {
        "Always" | "OnFailure" | "Never" => {}
        "" => e.required(&format!("{path}.restartPolicy"), ""),
        other => e.not_supported(
            &format!("{path}.restartPolicy"),
            &quote(other),
            &["Always", "OnFailure", "Never"],
        ),
    }
    let dns = text(spec, "dnsPolicy");
    match dns {
        "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" => {}
        "None" => {
            let config = get(spec, "dnsConfig");
            if config.is_null() {
                e.required(
                    &format!("{path}.dnsConfig"),
                    "must provide `dnsConfig` when `dnsPolicy` is None",
                );
            } else if list(config, "nameservers").is_empty() {
                e.required(
                    &format!("{path}.dnsConfig.nameservers"),
                    "must provide at least one DNS nameserver when `dnsPolicy` is None",
                );
            }
        }
        "" => e.required(&format!("{path}.dnsPolicy"), ""),
        other => e.not_supported(
            &format!("{path}.dnsPolicy"),
            &quote(other),
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        ),
    }
    labels(
        e,
        get(spec, "nodeSelector"),
        &format!("{path}.nodeSelector"),
    );
    for key in ["serviceAccountName", "nodeName"] {
        let v = text(spec, key);
        if !v.is_empty() {
            for msg in dns1123_subdomain(v) {
                e.invalid(&format!("{path}.{key}"), &quote(v), &msg);
            }
        }
    }
    if let Some(v) = int(spec, "activeDeadlineSeconds")
        && !(1..=i64::from(u32::MAX)).contains(&v)
    {
        e.invalid(
            &format!("{path}.activeDeadlineSeconds"),
            &v.to_string(),
            "must be between 1 and 4294967295, inclusive",
        );
    }
    for key in ["hostname", "subdomain"] {
        let v = text(spec, key);
        if !v.is_empty() {
            for msg in dns1123_label(v) {
                e.invalid(&format!("{path}.{key}"), &quote(v), &msg);
            }
        }
    }
    tolerations(e, list(spec, "tolerations"), &format!("{path}.tolerations"));
    e.nonnegative(
        &format!("{path}.terminationGracePeriodSeconds"),
        int(spec, "terminationGracePeriodSeconds"),
    );
    if is_pod {
        // Templates tolerate surrounding whitespace (some tools use " " as a placeholder).
        for (key, list_of) in [
            ("containers", containers),
            ("initContainers", list(spec, "initContainers")),
        ] {
            for (i, c) in list_of.iter().enumerate() {
                let image = text(c, "image");
                if image.trim() != image {
                    e.invalid(
                        &format!("{path}.{key}[{i}].image"),
                        &quote(image),
                        "must not have leading or trailing whitespace",
                    );
                }
            }
        }
    }
}

fn tolerations(e: &mut Errs, items: &[Value], path: &str) {
    for (i, t) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let key = text(t, "key");
        let op = text(t, "operator");
        let effect = text(t, "effect");
        if !key.is_empty() {
            for msg in qualified_name(key) {
                e.invalid(&format!("{p}.key"), &quote(key), &msg);
            }
        }
        if key.is_empty() && op != "Exists" {
            e.invalid(
                &format!("{p}.operator"),
                &quote(op),
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            );
        }
        if has(t, "tolerationSeconds") && effect != "NoExecute" {
            e.invalid(
                &format!("{p}.effect"),
                &quote(effect),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            );
        }
        let value = text(t, "value");
        match op {
            "Equal" | "" => {
                let errs = label_value(value);
                if !errs.is_empty() {
                    e.invalid(&format!("{p}.operator"), &quote(value), &errs.join(";"));
                }
            }
            "Exists" => {
                if !value.is_empty() {
                    e.invalid(
                        &format!("{p}.operator"),
                        &quote(value),
                        "value must be empty when `operator` is 'Exists'",
                    );
                }
            }
            other => e.not_supported(
                &format!("{p}.operator"),
                &quote(other),
                &["Equal", "Exists"],
            ),
        }
        if !effect.is_empty() && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
        {
            e.not_supported(
                &format!("{p}.effect"),
                &quote(effect),
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            );
        }
    }
}

/// Volumes; returns the names of the valid ones (the only ones mounts may refer to).
fn volumes(e: &mut Errs, items: &[Value], path: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, v) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let mut local = Errs::default();
        volume_source(&mut local, v, &p);
        let name = text(v, "name");
        if name.is_empty() {
            local.required(&format!("{p}.name"), "");
        } else {
            for msg in dns1123_label(name) {
                local.invalid(&format!("{p}.name"), &quote(name), &msg);
            }
        }
        if names.contains(name) {
            local.duplicate(&format!("{p}.name"), &quote(name));
        }
        if local.0.is_empty() {
            names.insert(name.to_owned());
        } else {
            e.0.extend(local.0);
        }
    }
    names
}

fn file_mode(e: &mut Errs, v: &Value, key: &str, path: &str) {
    if let Some(mode) = int(v, key)
        && !(0..=0o777).contains(&mode)
    {
        e.invalid(&format!("{path}.{key}"), &mode.to_string(), FILE_MODE_MSG);
    }
}

fn no_backsteps(e: &mut Errs, target: &str, path: &str) {
    if target.split('/').any(|part| part == "..") {
        e.invalid(path, &quote(target), "must not contain '..'");
    }
}

fn key_to_paths(e: &mut Errs, items: &[Value], path: &str) {
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if text(item, "key").is_empty() {
            e.required(&format!("{p}.key"), "");
        }
        let target = text(item, "path");
        let pp = format!("{p}.path");
        if target.is_empty() {
            e.required(&pp, "");
        }
        if target.starts_with('/') {
            e.invalid(&pp, &quote(target), "must be a relative path");
        }
        no_backsteps(e, target, &pp);
        if target.starts_with("..") && !target.starts_with("../") {
            e.invalid(&pp, &quote(target), "must not start with '..'");
        }
        file_mode(e, item, "mode", &p);
    }
}

fn volume_source(e: &mut Errs, v: &Value, path: &str) {
    let mut count = 0;
    for key in VOLUME_SOURCES {
        let src = get(v, key);
        if src.is_null() {
            continue;
        }
        let p = format!("{path}.{key}");
        if count > 0 {
            e.forbidden(&p, "may not specify more than 1 volume type");
            continue;
        }
        count += 1;
        match key {
            "hostPath" => {
                let target = text(src, "path");
                if target.is_empty() {
                    e.required(&format!("{p}.path"), "");
                    continue;
                }
                no_backsteps(e, target, &format!("{p}.path"));
                if let Some(t) = get(src, "type").as_str()
                    && !matches!(
                        t,
                        "" | "DirectoryOrCreate"
                            | "Directory"
                            | "FileOrCreate"
                            | "File"
                            | "Socket"
                            | "CharDevice"
                            | "BlockDevice"
                    )
                {
                    e.not_supported(
                        &format!("{p}.type"),
                        &quote(t),
                        &[
                            "",
                            "BlockDevice",
                            "CharDevice",
                            "Directory",
                            "DirectoryOrCreate",
                            "File",
                            "FileOrCreate",
                            "Socket",
                        ],
                    );
                }
            }
            "secret" | "configMap" => {
                let name_key = if key == "secret" {
                    "secretName"
                } else {
                    "name"
                };
                if text(src, name_key).is_empty() {
                    e.required(&format!("{p}.{name_key}"), "");
                }
                file_mode(e, src, "defaultMode", &p);
                key_to_paths(e, list(src, "items"), &format!("{p}.items"));
            }
            "downwardAPI" | "projected" => file_mode(e, src, "defaultMode", &p),
            "persistentVolumeClaim" if text(src, "claimName").is_empty() => {
                e.required(&format!("{p}.claimName"), "");
            }
            "nfs" => {
                if text(src, "server").is_empty() {
                    e.required(&format!("{p}.server"), "");
                }
                let target = text(src, "path");
                if target.is_empty() {
                    e.required(&format!("{p}.path"), "");
                }
                if !target.starts_with('/') {
                    e.invalid(
                        &format!("{p}.path"),
                        &quote(target),
                        "must be an absolute path",
                    );
                }
            }
            "emptyDir" => {
                let sp = format!("{p}.sizeLimit");
                if let Some(q) = quantity_at(e, get(src, "sizeLimit"), &sp)
                    && q.is_negative()
                {
                    e.forbidden(&sp, "SizeLimit field must be a valid resource quantity");
                }
            }
            _ => {}
        }
    }
    if count == 0 {
        e.required(path, "must specify a volume type");
    }
}

fn regular_containers(e: &mut Errs, items: &[Value], path: &str, volumes: &BTreeSet<String>) {
    if items.is_empty() {
        e.required(path, "");
    }
    let mut names = BTreeSet::new();
    for (i, c) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        container_common(e, c, &p, volumes);
        let name = text(c, "name");
        if !names.insert(name) {
            e.duplicate(&format!("{p}.name"), &quote(name));
        }
        lifecycle_and_probes(e, c, &p);
        if has(c, "restartPolicy") {
            e.forbidden(
                &format!("{p}.restartPolicy"),
                "may not be set for non-init containers",
            );
        }
    }
    // Host ports must not collide within the pod (per protocol and host IP).
    let mut host_ports = BTreeSet::new();
    for (i, c) in items.iter().enumerate() {
        for (j, port) in list(c, "ports").iter().enumerate() {
            let Some(host_port) = int(port, "hostPort").filter(|p| *p != 0) else {
                continue;
            };
            let key = format!(
                "{}/{}/{host_port}",
                text(port, "protocol"),
                text(port, "hostIP")
            );
            if !host_ports.insert(key.clone()) {
                e.duplicate(&format!("{path}[{i}].ports[{j}].hostPort"), &quote(&key));
            }
        }
    }
}

fn init_containers(
    e: &mut Errs,
    items: &[Value],
    regular: &[Value],
    path: &str,
    volumes: &BTreeSet<String>,
) {
    let mut names: BTreeSet<&str> = regular.iter().map(|c| text(c, "name")).collect();
    for (i, c) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        container_common(e, c, &p, volumes);
        let name = text(c, "name");
        if names.contains(name) {
            e.duplicate(&format!("{p}.name"), &quote(name));
        } else if !name.is_empty() {
            names.insert(name);
        }
        let policy = get(c, "restartPolicy");
        let sidecar = policy.as_str() == Some("Always");
        if !policy.is_null() && !sidecar {
            e.not_supported(
                &format!("{p}.restartPolicy"),
                &go_scalar(policy),
                &["Always"],
            );
        }
        if sidecar {
            lifecycle_and_probes(e, c, &p);
        } else {
            for key in [
                "lifecycle",
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
            ] {
                if has(c, key) {
                    e.forbidden(
                        &format!("{p}.{key}"),
                        "may not be set for init containers without restartPolicy=Always",
                    );
                }
            }
        }
    }
}

fn lifecycle_and_probes(e: &mut Errs, c: &Value, path: &str) {
    let lifecycle = get(c, "lifecycle");
    for hook in ["postStart", "preStop"] {
        let h = get(lifecycle, hook);
        if !h.is_null() {
            handler(
                e,
                h,
                &format!("{path}.lifecycle.{hook}"),
                &["exec", "httpGet", "tcpSocket", "sleep"],
            );
        }
    }
    for (key, must_be_one) in [
        ("livenessProbe", true),
        ("readinessProbe", false),
        ("startupProbe", true),
    ] {
        let probe = get(c, key);
        if probe.is_null() {
            continue;
        }
        let p = format!("{path}.{key}");
        handler(e, probe, &p, &["exec", "httpGet", "tcpSocket", "grpc"]);
        for field in [
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ] {
            e.nonnegative(&format!("{p}.{field}"), int(probe, field));
        }
        if let Some(grace) = int(probe, "terminationGracePeriodSeconds") {
            if key == "readinessProbe" {
                e.invalid(
                    &format!("{p}.terminationGracePeriodSeconds"),
                    &grace.to_string(),
                    "must not be set for readinessProbes",
                );
            } else if grace <= 0 {
                e.invalid(
                    &format!("{p}.terminationGracePeriodSeconds"),
                    &grace.to_string(),
                    "must be greater than 0",
                );
            }
        }
        if must_be_one
            && let Some(n) = int(probe, "successThreshold")
            && n != 1
        {
            e.invalid(
                &format!("{p}.successThreshold"),
                &n.to_string(),
                "must be 1",
            );
        }
    }
}

/// A probe or lifecycle handler: exactly one of `kinds`.
fn handler(e: &mut Errs, h: &Value, path: &str, kinds: &[&str]) {
    let mut count = 0;
    for kind in kinds {
        let action = get(h, kind);
        if action.is_null() {
            continue;
        }
        let p = format!("{path}.{kind}");
        if count > 0 {
            e.forbidden(&p, "may not specify more than 1 handler type");
            continue;
        }
        count += 1;
        match *kind {
            "exec" if list(action, "command").is_empty() => {
                e.required(&format!("{p}.command"), "");
            }
            "httpGet" => {
                if text(action, "path").is_empty() {
                    e.required(&format!("{p}.path"), "");
                }
                port_num_or_name(e, get(action, "port"), &format!("{p}.port"));
                let scheme = text(action, "scheme");
                if !matches!(scheme, "HTTP" | "HTTPS") {
                    e.not_supported(&format!("{p}.scheme"), &quote(scheme), &["HTTP", "HTTPS"]);
                }
            }
            "tcpSocket" => port_num_or_name(e, get(action, "port"), &format!("{p}.port")),
            "grpc" => {
                let port = int(action, "port").unwrap_or(0);
                if !valid_port(port) {
                    e.invalid(&format!("{p}.port"), &port.to_string(), PORT_RANGE_MSG);
                }
            }
            "sleep" => e.nonnegative(&format!("{p}.seconds"), int(action, "seconds")),
            _ => {}
        }
    }
    if count == 0 {
        e.required(path, "must specify a handler type");
    }
}

/// An int-or-string port: a number in 1..65535 or an IANA service name.
fn port_num_or_name(e: &mut Errs, port: &Value, path: &str) {
    match port {
        Value::String(name) => {
            for msg in port_name(name) {
                e.invalid(path, &quote(name), &msg);
            }
        }
        other => {
            let n = other.as_i64().unwrap_or(0);
            if !valid_port(n) {
                e.invalid(path, &n.to_string(), PORT_RANGE_MSG);
            }
        }
    }
}

fn container_common(e: &mut Errs, c: &Value, path: &str, volumes: &BTreeSet<String>) {
    let name = text(c, "name");
    if name.is_empty() {
        e.required(&format!("{path}.name"), "");
    } else {
        for msg in dns1123_label(name) {
            e.invalid(&format!("{path}.name"), &quote(name), &msg);
        }
    }
    if text(c, "image").is_empty() {
        e.required(&format!("{path}.image"), "");
    }
    match text(c, "terminationMessagePolicy") {
        "File" | "FallbackToLogsOnError" => {}
        "" => e.required(
            &format!("{path}.terminationMessagePolicy"),
            "must be 'File' or 'FallbackToLogsOnError'",
        ),
        other => e.not_supported(
            &format!("{path}.terminationMessagePolicy"),
            &quote(other),
            &["File", "FallbackToLogsOnError"],
        ),
    }
    container_ports(e, list(c, "ports"), &format!("{path}.ports"));
    env(e, list(c, "env"), &format!("{path}.env"));
    env_from(e, list(c, "envFrom"), &format!("{path}.envFrom"));
    volume_mounts(
        e,
        list(c, "volumeMounts"),
        volumes,
        &format!("{path}.volumeMounts"),
    );
    match text(c, "imagePullPolicy") {
        "Always" | "IfNotPresent" | "Never" => {}
        "" => e.required(&format!("{path}.imagePullPolicy"), ""),
        other => e.not_supported(
            &format!("{path}.imagePullPolicy"),
            &quote(other),
            &["Always", "IfNotPresent", "Never"],
        ),
    }
    resources(e, get(c, "resources"), &format!("{path}.resources"));
}

fn container_ports(e: &mut Errs, ports: &[Value], path: &str) {
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = text(port, "name");
        if !name.is_empty() {
            let errs = port_name(name);
            if !errs.is_empty() {
                for msg in errs {
                    e.invalid(&format!("{p}.name"), &quote(name), &msg);
                }
            } else if !names.insert(name) {
                e.duplicate(&format!("{p}.name"), &quote(name));
            }
        }
        match int(port, "containerPort") {
            None | Some(0) => e.required(&format!("{p}.containerPort"), ""),
            Some(n) if !valid_port(n) => {
                e.invalid(
                    &format!("{p}.containerPort"),
                    &n.to_string(),
                    PORT_RANGE_MSG,
                );
            }
            Some(_) => {}
        }
        if let Some(n) = int(port, "hostPort")
            && n != 0
            && !valid_port(n)
        {
            e.invalid(&format!("{p}.hostPort"), &n.to_string(), PORT_RANGE_MSG);
        }
        protocol(e, port, &p);
    }
}

fn protocol(e: &mut Errs, port: &Value, path: &str) {
    match text(port, "protocol") {
        "TCP" | "UDP" | "SCTP" => {}
        "" => e.required(&format!("{path}.protocol"), ""),
        other => e.not_supported(
            &format!("{path}.protocol"),
            &quote(other),
            &["SCTP", "TCP", "UDP"],
        ),
    }
}

const ENV_FIELD_PATHS: [&str; 9] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// Field paths the downward API converts for v1 pods (`ConvertDownwardAPIFieldLabel`).
const DOWNWARD_LABELS: [&str; 14] = [
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.serviceAccountName",
    "spec.schedulerName",
    "status.phase",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

fn env(e: &mut Errs, vars: &[Value], path: &str) {
    for (i, ev) in vars.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = text(ev, "name");
        if name.is_empty() {
            e.required(&format!("{p}.name"), "");
        } else {
            for msg in env_var_name(name) {
                e.invalid(&format!("{p}.name"), &quote(name), &msg);
            }
        }
        let from = get(ev, "valueFrom");
        if from.is_null() {
            continue;
        }
        let fp = format!("{p}.valueFrom");
        let mut sources = 0;
        let field_ref = get(from, "fieldRef");
        if !field_ref.is_null() {
            sources += 1;
            object_field_selector(e, field_ref, &format!("{fp}.fieldRef"));
        }
        let resource_ref = get(from, "resourceFieldRef");
        if !resource_ref.is_null() {
            sources += 1;
            let resource = text(resource_ref, "resource");
            let rp = format!("{fp}.resourceFieldRef.resource");
            const SUPPORTED: [&str; 6] = [
                "limits.cpu",
                "limits.ephemeral-storage",
                "limits.memory",
                "requests.cpu",
                "requests.ephemeral-storage",
                "requests.memory",
            ];
            if resource.is_empty() {
                e.required(&rp, "");
            } else if !SUPPORTED.contains(&resource)
                && !resource.starts_with("limits.hugepages-")
                && !resource.starts_with("requests.hugepages-")
            {
                e.not_supported(&rp, &quote(resource), &SUPPORTED);
            }
        }
        for key in ["configMapKeyRef", "secretKeyRef"] {
            let sel = get(from, key);
            if sel.is_null() {
                continue;
            }
            sources += 1;
            let sp = format!("{fp}.{key}");
            let name = text(sel, "name");
            for msg in dns1123_subdomain(name) {
                e.invalid(&format!("{sp}.name"), &quote(name), &msg);
            }
            let k = text(sel, "key");
            if k.is_empty() {
                e.required(&format!("{sp}.key"), "");
            } else {
                for msg in config_map_key(k) {
                    e.invalid(&format!("{sp}.key"), &quote(k), &msg);
                }
            }
        }
        if sources == 0 {
            e.invalid(
                &fp,
                "\"\"",
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            );
        } else if !text(ev, "value").is_empty() {
            e.invalid(
                &fp,
                "\"\"",
                "may not be specified when `value` is not empty",
            );
        } else if sources > 1 {
            e.invalid(
                &fp,
                "\"\"",
                "may not have more than one field specified at a time",
            );
        }
    }
}

/// `metadata.labels['key']` → ("metadata.labels", "key").
fn subscripted(path: &str) -> Option<(&str, &str)> {
    let inner = path.strip_suffix("']")?;
    let (head, sub) = inner.split_once("['")?;
    (!head.is_empty()).then_some((head, sub))
}

fn object_field_selector(e: &mut Errs, sel: &Value, path: &str) {
    let api_version = text(sel, "apiVersion");
    if api_version.is_empty() {
        e.required(&format!("{path}.apiVersion"), "");
        return;
    }
    let field_path = text(sel, "fieldPath");
    let fp = format!("{path}.fieldPath");
    if field_path.is_empty() {
        e.required(&fp, "");
        return;
    }
    let conversion = if api_version != "v1" {
        Err(format!("unsupported pod version: {api_version}"))
    } else if let Some((head, _)) = subscripted(field_path) {
        if matches!(head, "metadata.annotations" | "metadata.labels") {
            Ok(())
        } else {
            Err(format!(
                "field label does not support subscript: {field_path}"
            ))
        }
    } else if DOWNWARD_LABELS.contains(&field_path) || field_path == "spec.host" {
        Ok(())
    } else {
        Err(format!("field label not supported: {field_path}"))
    };
    if let Err(err) = conversion {
        e.invalid(
            &fp,
            &quote(field_path),
            &format!("error converting fieldPath: {err}"),
        );
        return;
    }
    let field_path = if field_path == "spec.host" {
        "spec.nodeName"
    } else {
        field_path
    };
    if let Some((head, sub)) = subscripted(field_path) {
        let sub = if head == "metadata.annotations" {
            sub.to_lowercase()
        } else {
            sub.to_owned()
        };
        for msg in qualified_name(&sub) {
            e.invalid(path, &quote(&sub), &msg);
        }
    } else if !ENV_FIELD_PATHS.contains(&field_path) {
        e.not_supported(&fp, &quote(field_path), &ENV_FIELD_PATHS);
    }
}

fn env_from(e: &mut Errs, items: &[Value], path: &str) {
    for (i, ev) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let prefix = text(ev, "prefix");
        if !prefix.is_empty() {
            for msg in env_var_name(prefix) {
                e.invalid(&format!("{p}.prefix"), &quote(prefix), &msg);
            }
        }
        let mut sources = 0;
        for key in ["configMapRef", "secretRef"] {
            let r = get(ev, key);
            if r.is_null() {
                continue;
            }
            sources += 1;
            let name = text(r, "name");
            if name.is_empty() {
                e.required(&format!("{p}.{key}.name"), "");
            } else {
                for msg in dns1123_subdomain(name) {
                    e.invalid(&format!("{p}.{key}.name"), &quote(name), &msg);
                }
            }
        }
        if sources == 0 {
            e.invalid(
                path,
                "\"\"",
                "must specify one of: `configMapRef` or `secretRef`",
            );
        } else if sources > 1 {
            e.invalid(
                path,
                "\"\"",
                "may not have more than one field specified at a time",
            );
        }
    }
}

fn volume_mounts(e: &mut Errs, mounts: &[Value], volumes: &BTreeSet<String>, path: &str) {
    let mut points = BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = text(m, "name");
        if name.is_empty() {
            e.required(&format!("{p}.name"), "");
        }
        if !volumes.contains(name) {
            e.not_found(&format!("{p}.name"), &quote(name));
        }
        let mount_path = text(m, "mountPath");
        if mount_path.is_empty() {
            e.required(&format!("{p}.mountPath"), "");
        }
        if !points.insert(mount_path) {
            e.invalid(
                &format!("{p}.mountPath"),
                &quote(mount_path),
                "must be unique",
            );
        }
        let sub = text(m, "subPath");
        if !sub.is_empty() {
            // Kubernetes names the list, not the item, here.
            let sp = format!("{path}.subPath");
            if sub.starts_with('/') {
                e.invalid(&sp, &quote(sub), "must be a relative path");
            }
            no_backsteps(e, sub, &sp);
        }
    }
}

fn standard_container_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
}

fn standard_resource(name: &str) -> bool {
    standard_container_resource(name)
        || matches!(
            name,
            "requests.cpu"
                | "requests.memory"
                | "requests.ephemeral-storage"
                | "limits.cpu"
                | "limits.memory"
                | "limits.ephemeral-storage"
                | "pods"
                | "services"
                | "replicationcontrollers"
                | "resourcequotas"
                | "secrets"
                | "configmaps"
                | "persistentvolumeclaims"
                | "storage"
                | "requests.storage"
                | "services.nodeports"
                | "services.loadbalancers"
        )
        || name.starts_with("requests.hugepages-")
}

fn native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// Requests may be below limits only for native, non-hugepage resources.
fn overcommit_allowed(name: &str) -> bool {
    native_resource(name) && !name.starts_with("hugepages-")
}

fn resource_name(e: &mut Errs, name: &str, path: &str) -> bool {
    let errs = qualified_name(name);
    if !errs.is_empty() {
        for msg in errs {
            e.invalid(path, &quote(name), &msg);
        }
        return false;
    }
    if !name.contains('/') {
        if !standard_resource(name) {
            e.invalid(
                path,
                &quote(name),
                "must be a standard resource type or fully qualified",
            );
            return false;
        }
        if !standard_container_resource(name) {
            e.invalid(
                path,
                &quote(name),
                "must be a standard resource for containers",
            );
            return false;
        }
    }
    true
}

fn resources(e: &mut Errs, r: &Value, path: &str) {
    let limits_path = format!("{path}.limits");
    let requests_path = format!("{path}.requests");
    let limit_values = get(r, "limits").as_object();
    let mut limits: BTreeMap<&str, Quantity> = BTreeMap::new();
    for (name, v) in limit_values.into_iter().flatten() {
        let p = format!("{limits_path}[{name}]");
        resource_name(e, name, &p);
        if let Some(q) = quantity_at(e, v, &p) {
            resource_quantity(e, name, &q, &p);
            limits.insert(name, q);
        }
    }
    for (name, v) in get(r, "requests").as_object().into_iter().flatten() {
        let p = format!("{requests_path}[{name}]");
        resource_name(e, name, &p);
        let Some(q) = quantity_at(e, v, &p) else {
            continue;
        };
        resource_quantity(e, name, &q, &p);
        if let Some(limit) = limits.get(name.as_str()) {
            if q.nanos != limit.nanos && !overcommit_allowed(name) {
                e.invalid(
                    &requests_path,
                    &quote(&q.display()),
                    &format!("must be equal to {name} limit of {}", limit.display()),
                );
            } else if q.nanos > limit.nanos {
                e.invalid(
                    &requests_path,
                    &quote(&q.display()),
                    &format!(
                        "must be less than or equal to {name} limit of {}",
                        limit.display()
                    ),
                );
            }
        } else if !limit_values.is_some_and(|l| l.contains_key(name)) && !overcommit_allowed(name) {
            e.required(
                &limits_path,
                "Limit must be set for non overcommitable resources",
            );
        }
    }
}

fn resource_quantity(e: &mut Errs, name: &str, q: &Quantity, path: &str) {
    if q.is_negative() {
        e.invalid(
            path,
            &quote(&q.display()),
            "must be greater than or equal to 0",
        );
    }
    // Extended resources are counted in whole units.
    if !native_resource(name) && q.nanos % NANO != 0 {
        e.invalid(path, &quote(&q.display()), "must be an integer");
    }
}

// ---------------------------------------------------------------------------------------
// Workloads.

fn nonnegative_fields(e: &mut Errs, spec: &Value, path: &str, keys: &[&str]) {
    for key in keys {
        e.nonnegative(&format!("{path}.{key}"), int(spec, key));
    }
}

fn selector_update(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    if let Some(old) = old {
        let new = get(get(obj, "spec"), "selector");
        let before = get(get(old, "spec"), "selector");
        e.immutable("spec.selector", new, before, &go_selector(new));
    }
}

/// `getIntOrPercentValue`: a percent's number, an int, or 0 for anything else.
fn int_or_percent_value(v: &Value) -> i64 {
    match v {
        Value::String(s) => {
            let digits = if is_percent(s) {
                s.strip_suffix('%').unwrap_or("")
            } else {
                s.as_str()
            };
            digits.parse().unwrap_or(0)
        }
        other => other.as_i64().unwrap_or(0),
    }
}

fn positive_int_or_percent(e: &mut Errs, v: &Value, path: &str) {
    match v {
        Value::String(s) => {
            if !is_percent(s) {
                e.invalid(path, &go_int_str(v), PERCENT_MSG);
            }
        }
        other => e.nonnegative(path, Some(other.as_i64().unwrap_or(0))),
    }
}

fn not_more_than_100_percent(e: &mut Errs, v: &Value, path: &str) {
    if let Value::String(s) = v
        && is_percent(s)
        && int_or_percent_value(v) > 100
    {
        e.invalid(path, &go_int_str(v), "must not be greater than 100%");
    }
}

/// `ValidatePodDisruptionBudget` (policy/v1): one of minAvailable and maxUnavailable, each a
/// non-negative int or a percent up to 100%, a valid selector, a known eviction policy, and
/// (for the status a controller writes) no negative counters.
fn pod_disruption_budget(e: &mut Errs, obj: &Value) {
    let spec = get(obj, "spec");
    let min = get(spec, "minAvailable");
    let max = get(spec, "maxUnavailable");
    if !min.is_null() && !max.is_null() {
        // Go prints the whole spec struct here; its exact `%#v` carries pointers, so only the
        // type is kept (as for a Job's podFailurePolicy).
        e.invalid(
            "spec",
            "policy.PodDisruptionBudgetSpec{...}",
            "minAvailable and maxUnavailable cannot be both set",
        );
    }
    for (key, v) in [("minAvailable", min), ("maxUnavailable", max)] {
        if !v.is_null() {
            let p = format!("spec.{key}");
            positive_int_or_percent(e, v, &p);
            not_more_than_100_percent(e, v, &p);
        }
    }
    let sel = get(spec, "selector");
    if !sel.is_null() {
        label_selector(e, sel, "spec.selector");
    }
    if let Some(policy) = get(spec, "unhealthyPodEvictionPolicy").as_str()
        && !matches!(policy, "IfHealthyBudget" | "AlwaysAllow")
    {
        e.not_supported(
            "spec.unhealthyPodEvictionPolicy",
            &quote(policy),
            &["AlwaysAllow", "IfHealthyBudget"],
        );
    }
    let status = get(obj, "status");
    for key in [
        "disruptionsAllowed",
        "currentHealthy",
        "desiredHealthy",
        "expectedPods",
    ] {
        e.nonnegative(&format!("status.{key}"), int(status, key));
    }
}

fn deployment(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    let spec = get(obj, "spec");
    e.nonnegative("spec.replicas", int(spec, "replicas"));
    let sel = get(spec, "selector");
    if sel.is_null() {
        e.required("spec.selector", "");
        selector_update(e, obj, old);
        return;
    }
    let converts = label_selector(e, sel, "spec.selector");
    if selector_is_empty(sel) {
        e.invalid(
            "spec.selector",
            &go_selector(sel),
            "empty selector is invalid for deployment",
        );
    }
    if converts {
        replica_template(
            e,
            get(spec, "template"),
            &Selector::of(sel),
            "spec.template",
            "ReplicaSet",
        );
    } else {
        e.invalid("spec.selector", &go_selector(sel), "invalid label selector");
    }

    let strategy = get(spec, "strategy");
    let kind = text(strategy, "type");
    let rolling = get(strategy, "rollingUpdate");
    match kind {
        "Recreate" => {
            if !rolling.is_null() {
                e.forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                );
            }
        }
        "RollingUpdate" => {
            if rolling.is_null() {
                e.required(
                    "spec.strategy.rollingUpdate",
                    "this should be defaulted and never be nil",
                );
            } else {
                let p = "spec.strategy.rollingUpdate";
                let unavailable = get(rolling, "maxUnavailable");
                let surge = get(rolling, "maxSurge");
                positive_int_or_percent(e, unavailable, &format!("{p}.maxUnavailable"));
                positive_int_or_percent(e, surge, &format!("{p}.maxSurge"));
                if int_or_percent_value(unavailable) == 0 && int_or_percent_value(surge) == 0 {
                    e.invalid(
                        &format!("{p}.maxUnavailable"),
                        &go_int_str(unavailable),
                        "may not be 0 when `maxSurge` is 0",
                    );
                }
                not_more_than_100_percent(e, unavailable, &format!("{p}.maxUnavailable"));
            }
        }
        other => {
            let rolling_go = if rolling.is_null() {
                "(*apps.RollingUpdateDeployment)(nil)"
            } else {
                "&apps.RollingUpdateDeployment{...}"
            };
            e.not_supported(
                "spec.strategy",
                &format!(
                    "apps.DeploymentStrategy{{Type:{}, RollingUpdate:{rolling_go}}}",
                    quote(other)
                ),
                &["Recreate", "RollingUpdate"],
            );
        }
    }
    nonnegative_fields(
        e,
        spec,
        "spec",
        &["minReadySeconds", "revisionHistoryLimit"],
    );
    if let Some(deadline) = int(spec, "progressDeadlineSeconds") {
        e.nonnegative("spec.progressDeadlineSeconds", Some(deadline));
        if deadline <= int(spec, "minReadySeconds").unwrap_or(0) {
            e.invalid(
                "spec.progressDeadlineSeconds",
                &deadline.to_string(),
                "must be greater than minReadySeconds",
            );
        }
    }
    selector_update(e, obj, old);
}

fn replica_set(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    let spec = get(obj, "spec");
    nonnegative_fields(e, spec, "spec", &["replicas", "minReadySeconds"]);
    let sel = get(spec, "selector");
    let converts = if sel.is_null() {
        e.required("spec.selector", "");
        true
    } else {
        let ok = label_selector(e, sel, "spec.selector");
        if selector_is_empty(sel) {
            e.invalid(
                "spec.selector",
                &go_selector(sel),
                "empty selector is invalid for deployment",
            );
        }
        ok
    };
    if converts {
        replica_template(
            e,
            get(spec, "template"),
            &Selector::of(sel),
            "spec.template",
            "ReplicaSet",
        );
    } else {
        e.invalid("spec.selector", &go_selector(sel), "invalid label selector");
    }
    selector_update(e, obj, old);
}

fn replication_controller(e: &mut Errs, obj: &Value) {
    let spec = get(obj, "spec");
    nonnegative_fields(e, spec, "spec", &["minReadySeconds", "replicas"]);
    let sel = get(spec, "selector");
    if object_len(sel) == 0 {
        e.required("spec.selector", "");
    }
    labels(e, sel, "spec.selector");
    let template = get(spec, "template");
    if template.is_null() {
        e.required("spec.template", "");
        return;
    }
    let selector = if object_len(sel) == 0 {
        Selector::Everything
    } else {
        Selector::of(&serde_json::json!({ "matchLabels": sel }))
    };
    replica_template(
        e,
        template,
        &selector,
        "spec.template",
        "ReplicationController",
    );
}

const STATEFULSET_MUTABLE: [&str; 7] = [
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

/// A StatefulSet's template as its pods get it: each volumeClaimTemplate is a volume of that
/// name (replacing one the template declares), so containers may mount the claims.
fn with_claim_volumes(template: &Value, spec: &Value) -> Value {
    let claims: Vec<&str> = list(spec, "volumeClaimTemplates")
        .iter()
        .map(|c| text(get(c, "metadata"), "name"))
        .filter(|n| !n.is_empty())
        .collect();
    if claims.is_empty() || !template.is_object() {
        return template.clone();
    }
    let mut t = template.clone();
    let mut volumes: Vec<Value> = list(get(template, "spec"), "volumes")
        .iter()
        .filter(|v| !claims.contains(&text(v, "name")))
        .cloned()
        .collect();
    for name in claims {
        volumes.push(json!({"name": name, "persistentVolumeClaim": {"claimName": name}}));
    }
    if !t["spec"].is_object() {
        t["spec"] = json!({});
    }
    t["spec"]["volumes"] = json!(volumes);
    t
}

fn stateful_set(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    let spec = get(obj, "spec");
    match text(spec, "podManagementPolicy") {
        "" => e.required("spec.podManagementPolicy", ""),
        "OrderedReady" | "Parallel" => {}
        other => e.invalid(
            "spec.podManagementPolicy",
            &quote(other),
            "must be 'OrderedReady' or 'Parallel'",
        ),
    }
    let strategy = get(spec, "updateStrategy");
    let rolling = get(strategy, "rollingUpdate");
    match text(strategy, "type") {
        "" => e.required("spec.updateStrategy", ""),
        "OnDelete" => {
            if !rolling.is_null() {
                e.invalid(
                    "spec.updateStrategy.rollingUpdate",
                    &format!(
                        "apps.RollingUpdateStatefulSetStrategy{{Partition:{}, MaxUnavailable:(*intstr.IntOrString)(nil)}}",
                        int(rolling, "partition").unwrap_or(0)
                    ),
                    "only allowed for updateStrategy 'RollingUpdate'",
                );
            }
        }
        "RollingUpdate" => e.nonnegative(
            "spec.updateStrategy.rollingUpdate.partition",
            int(rolling, "partition"),
        ),
        other => {
            let rolling_go = if rolling.is_null() {
                "(*apps.RollingUpdateStatefulSetStrategy)(nil)"
            } else {
                "&apps.RollingUpdateStatefulSetStrategy{...}"
            };
            e.invalid(
                "spec.updateStrategy",
                &format!(
                    "apps.StatefulSetUpdateStrategy{{Type:{}, RollingUpdate:{rolling_go}}}",
                    quote(other)
                ),
                "must be 'RollingUpdate' or 'OnDelete'",
            );
        }
    }
    nonnegative_fields(
        e,
        spec,
        "spec",
        &["revisionHistoryLimit", "replicas", "minReadySeconds"],
    );
    e.nonnegative("spec.ordinals.start", int(get(spec, "ordinals"), "start"));
    let retention = get(spec, "persistentVolumeClaimRetentionPolicy");
    for key in ["whenDeleted", "whenScaled"] {
        if let Some(v) = get(retention, key).as_str()
            && !matches!(v, "Retain" | "Delete")
        {
            e.not_supported(
                &format!("spec.persistentVolumeClaimRetentionPolicy.{key}"),
                &quote(v),
                &["Retain", "Delete"],
            );
        }
    }
    let sel = get(spec, "selector");
    let converts = if sel.is_null() {
        e.required("spec.selector", "");
        true
    } else {
        let ok = label_selector(e, sel, "spec.selector");
        if selector_is_empty(sel) {
            e.invalid(
                "spec.selector",
                &go_selector(sel),
                "empty selector is invalid for statefulset",
            );
        }
        ok
    };
    let template = get(spec, "template");
    if converts {
        selector_matches_template(e, &Selector::of(sel), template, "spec.template");
        pod_template(e, &with_claim_volumes(template, spec), "spec.template");
    } else {
        e.invalid("spec.selector", &go_selector(sel), "");
    }
    always_restarts(e, template, "spec.template", "StatefulSet");

    if let Some(old) = old {
        let strip = |s: &Value| {
            let mut m = normalized(s).as_object().cloned().unwrap_or_default();
            for key in STATEFULSET_MUTABLE {
                m.remove(key);
            }
            Value::Object(m)
        };
        if strip(spec) != strip(get(old, "spec")) {
            e.forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            );
        }
    }
}

fn daemon_set(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    let spec = get(obj, "spec");
    let sel = get(spec, "selector");
    let template = get(spec, "template");
    let converts = if sel.is_null() {
        e.required("spec.selector", "");
        true
    } else {
        label_selector(e, sel, "spec.selector")
    };
    if converts {
        let selector = Selector::of(sel);
        if !selector.matches(&string_map(get(get(template, "metadata"), "labels"))) {
            e.invalid(
                "spec.template.metadata.labels",
                &go_map(get(get(template, "metadata"), "labels")),
                "`selector` does not match template `labels`",
            );
        }
    }
    if !sel.is_null() && selector_is_empty(sel) {
        e.invalid(
            "spec.selector",
            &go_selector(sel),
            "empty selector is invalid for daemonset",
        );
    }
    pod_template(e, template, "spec.template");
    always_restarts(e, template, "spec.template", "DaemonSet");
    nonnegative_fields(
        e,
        spec,
        "spec",
        &[
            "minReadySeconds",
            "templateGeneration",
            "revisionHistoryLimit",
        ],
    );

    let strategy = get(spec, "updateStrategy");
    let p = "spec.updateStrategy";
    match text(strategy, "type") {
        "OnDelete" => {}
        "RollingUpdate" => {
            let rolling = get(strategy, "rollingUpdate");
            if rolling.is_null() {
                e.required(&format!("{p}.rollingUpdate"), "");
            } else {
                let rp = format!("{p}.rollingUpdate");
                let unavailable = get(rolling, "maxUnavailable");
                let surge = get(rolling, "maxSurge");
                positive_int_or_percent(e, unavailable, &format!("{rp}.maxUnavailable"));
                positive_int_or_percent(e, surge, &format!("{rp}.maxSurge"));
                not_more_than_100_percent(e, unavailable, &format!("{rp}.maxUnavailable"));
                not_more_than_100_percent(e, surge, &format!("{rp}.maxSurge"));
                let has_unavailable = int_or_percent_value(unavailable) != 0;
                let has_surge = int_or_percent_value(surge) != 0;
                if has_unavailable && has_surge {
                    e.invalid(
                        &format!("{rp}.maxSurge"),
                        &go_int_str(surge),
                        "may not be set when maxUnavailable is non-zero",
                    );
                } else if !has_unavailable && !has_surge {
                    e.required(
                        &format!("{rp}.maxUnavailable"),
                        "cannot be 0 when maxSurge is 0",
                    );
                }
            }
        }
        other => {
            let rolling_go = if has(strategy, "rollingUpdate") {
                "&apps.RollingUpdateDaemonSet{...}"
            } else {
                "(*apps.RollingUpdateDaemonSet)(nil)"
            };
            e.not_supported(
                p,
                &format!(
                    "apps.DaemonSetUpdateStrategy{{Type:{}, RollingUpdate:{rolling_go}}}",
                    quote(other)
                ),
                &["RollingUpdate", "OnDelete"],
            );
        }
    }
    selector_update(e, obj, old);
}

// ---------------------------------------------------------------------------------------
// Batch.

/// `validateJobSpec`: what a Job and a CronJob's job template share.
fn job_spec(e: &mut Errs, spec: &Value, path: &str) {
    nonnegative_fields(
        e,
        spec,
        path,
        &[
            "parallelism",
            "completions",
            "activeDeadlineSeconds",
            "backoffLimit",
            "ttlSecondsAfterFinished",
        ],
    );
    let mode = get(spec, "completionMode");
    let indexed = mode.as_str() == Some("Indexed");
    if let Some(per_index) = int(spec, "backoffLimitPerIndex") {
        e.nonnegative(&format!("{path}.backoffLimitPerIndex"), Some(per_index));
        if !indexed {
            e.forbidden(
                &format!("{path}.backoffLimitPerIndex"),
                "requires indexed completion mode",
            );
        }
    }
    if let Some(m) = mode.as_str() {
        if !matches!(m, "NonIndexed" | "Indexed") {
            e.not_supported(
                &format!("{path}.completionMode"),
                &quote(m),
                &["NonIndexed", "Indexed"],
            );
        }
        if indexed && !has(spec, "completions") {
            e.required(
                &format!("{path}.completions"),
                "when completion mode is Indexed",
            );
        }
    }
    let has_failure_policy = has(spec, "podFailurePolicy");
    if let Some(policy) = get(spec, "podReplacementPolicy").as_str() {
        let p = format!("{path}.podReplacementPolicy");
        if has_failure_policy {
            if policy != "Failed" {
                e.not_supported(&p, &quote(policy), &["Failed"]);
            }
        } else if !matches!(policy, "Failed" | "TerminatingOrFailed") {
            e.not_supported(&p, &quote(policy), &["Failed", "TerminatingOrFailed"]);
        }
    }
    if has_failure_policy {
        pod_failure_policy(e, spec, &format!("{path}.podFailurePolicy"));
    }
    let template = get(spec, "template");
    let tp = format!("{path}.template");
    pod_template(e, template, &tp);
    // Defaulting turns an absent restart policy into Always, hence "Required" for both.
    let rp = format!("{tp}.spec.restartPolicy");
    match text(get(template, "spec"), "restartPolicy") {
        "Always" | "" => e.required(&rp, "valid values: \"OnFailure\", \"Never\""),
        "Never" => {}
        "OnFailure" if !has_failure_policy => {}
        "OnFailure" => e.invalid(
            &rp,
            &quote("OnFailure"),
            "only \"Never\" is supported when podFailurePolicy is specified",
        ),
        other => e.not_supported(&rp, &quote(other), &["OnFailure", "Never"]),
    }
}

/// `validatePodFailurePolicy`: at most 20 rules, each with a known action and exactly one of
/// onExitCodes (In/NotIn over 1–255 distinct, ascending codes, no 0 under In, a container
/// of the template) and onPodConditions (a qualified type, status True/False/Unknown).
fn pod_failure_policy(e: &mut Errs, spec: &Value, path: &str) {
    const ACTIONS: [&str; 4] = ["Count", "FailIndex", "FailJob", "Ignore"];
    let policy = get(spec, "podFailurePolicy");
    let rules = list(policy, "rules");
    let rp = format!("{path}.rules");
    if rules.len() > 20 {
        e.push(
            "FieldValueTooMany",
            &rp,
            format!("Too many: {}: must have at most 20 items", rules.len()),
        );
    }
    let tspec = get(get(spec, "template"), "spec");
    let containers: BTreeSet<&str> = list(tspec, "containers")
        .iter()
        .chain(list(tspec, "initContainers"))
        .map(|c| text(c, "name"))
        .collect();
    for (i, rule) in rules.iter().enumerate() {
        let p = format!("{rp}[{i}]");
        let ap = format!("{p}.action");
        match text(rule, "action") {
            "" => e.required(
                &ap,
                "valid values: [\"Count\" \"FailIndex\" \"FailJob\" \"Ignore\"]",
            ),
            "FailIndex" if !has(spec, "backoffLimitPerIndex") => e.invalid(
                &ap,
                &quote("FailIndex"),
                "requires the backoffLimitPerIndex to be set",
            ),
            a if !ACTIONS.contains(&a) => e.not_supported(&ap, &quote(a), &ACTIONS),
            _ => {}
        }
        let codes = get(rule, "onExitCodes");
        let conditions = list(rule, "onPodConditions");
        if codes.is_object() {
            let cp = format!("{p}.onExitCodes");
            if let Some(name) = codes.get("containerName").and_then(Value::as_str)
                && !containers.contains(name)
            {
                e.invalid(
                    &format!("{cp}.containerName"),
                    &quote(name),
                    "must be one of the container or initContainer names in the pod template",
                );
            }
            let op = text(codes, "operator");
            if !matches!(op, "In" | "NotIn") {
                e.not_supported(&format!("{cp}.operator"), &quote(op), &["In", "NotIn"]);
            }
            let values = list(codes, "values");
            let vp = format!("{cp}.values");
            if values.is_empty() {
                e.invalid(&vp, "[]int32{}", "at least one value is required");
            } else if values.len() > 255 {
                e.push(
                    "FieldValueTooMany",
                    &vp,
                    format!("Too many: {}: must have at most 255 items", values.len()),
                );
            } else {
                let mut prev: Option<i64> = None;
                for (j, v) in values.iter().enumerate() {
                    let n = v.as_i64().unwrap_or(0);
                    let at = format!("{vp}[{j}]");
                    if n == 0 && op == "In" {
                        e.invalid(&at, "0", "must not be 0 for the In operator");
                    }
                    if prev == Some(n) {
                        e.duplicate(&at, &n.to_string());
                    } else if prev.is_some_and(|p| p > n) {
                        e.invalid(&at, &n.to_string(), "must be ordered");
                    }
                    prev = Some(n);
                }
            }
        }
        for (j, c) in conditions.iter().enumerate() {
            let cp = format!("{p}.onPodConditions[{j}]");
            let kind = text(c, "type");
            for msg in qualified_name(kind) {
                e.invalid(&format!("{cp}.type"), &quote(kind), &msg);
            }
            let status = text(c, "status");
            if !matches!(status, "True" | "False" | "Unknown") {
                e.not_supported(
                    &format!("{cp}.status"),
                    &quote(status),
                    &["False", "True", "Unknown"],
                );
            }
        }
        match (codes.is_object(), conditions.is_empty()) {
            (true, false) => e.push(
                "FieldValueInvalid",
                &p,
                "Invalid value: specifying both OnExitCodes and OnPodConditions is not supported"
                    .into(),
            ),
            (false, true) => e.push(
                "FieldValueInvalid",
                &p,
                "Invalid value: specifying one of OnExitCodes and OnPodConditions is required"
                    .into(),
            ),
            _ => {}
        }
    }
}

fn job(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    let spec = get(obj, "spec");
    let meta = get(obj, "metadata");
    job_spec(e, spec, "spec");
    let manual = get(spec, "manualSelector").as_bool() == Some(true);
    let sel = get(spec, "selector");
    // Without a uid the selector is generated later (defaulting does it once the uid is
    // known), so its absence is not the client's mistake yet.
    let generated_later = sel.is_null() && !manual && text(meta, "uid").is_empty();
    if !generated_later {
        let converts = if sel.is_null() {
            e.required("spec.selector", "");
            true
        } else {
            label_selector(e, sel, "spec.selector")
        };
        if converts {
            let selector = Selector::of(sel);
            if selector.is_empty() {
                e.required("spec.selector", "");
            }
            let labels = get(get(get(spec, "template"), "metadata"), "labels");
            if !selector.matches(&string_map(labels)) {
                e.invalid(
                    "spec.template.metadata.labels",
                    &go_map(labels),
                    "`selector` does not match template `labels`",
                );
            }
        }
    }
    if get(spec, "completionMode").as_str() == Some("Indexed")
        && let Some(completions) = int(spec, "completions").filter(|c| *c > 0)
    {
        let name = text(meta, "name");
        let hostname = format!("{name}-{}", completions - 1);
        if !dns1123_label(&hostname).is_empty() {
            e.invalid(
                "metadata.name",
                &quote(name),
                &format!("will not able to create pod with invalid DNS label: {hostname}"),
            );
        }
    }
    if let Some(old) = old {
        job_update(e, spec, get(old, "spec"), old);
    }
}

fn job_update(e: &mut Errs, spec: &Value, old_spec: &Value, old: &Value) {
    let completions = get(spec, "completions");
    let old_completions = get(old_spec, "completions");
    let indexed = get(spec, "completionMode").as_str() == Some("Indexed");
    if !indexed {
        e.immutable(
            "spec.completions",
            completions,
            old_completions,
            &go_scalar(completions),
        );
    } else if !same(completions, old_completions)
        && let Some(n) = completions.as_i64()
        && Some(n) != int(spec, "parallelism")
    {
        // Elastic indexed jobs scale completions and parallelism together.
        e.invalid(
            "spec.completions",
            &n.to_string(),
            "can only be modified in tandem with spec.parallelism",
        );
    }
    let sel = get(spec, "selector");
    e.immutable(
        "spec.selector",
        sel,
        get(old_spec, "selector"),
        &go_selector(sel),
    );

    // A suspended job that never ran may still change where its pods go.
    let suspended = get(old_spec, "suspend").as_bool() == Some(true);
    let never_started = get(get(old, "status"), "startTime").is_null();
    let scheduling_only = |t: &Value| {
        let mut t = normalized(t);
        if suspended && never_started {
            if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("labels");
                meta.remove("annotations");
            }
            if let Some(ps) = t.get_mut("spec").and_then(Value::as_object_mut) {
                for key in ["nodeSelector", "tolerations", "schedulingGates"] {
                    ps.remove(key);
                }
                let drop_affinity = ps
                    .get_mut("affinity")
                    .and_then(Value::as_object_mut)
                    .is_some_and(|a| {
                        a.remove("nodeAffinity");
                        a.is_empty()
                    });
                if drop_affinity {
                    ps.remove("affinity");
                }
            }
        }
        t
    };
    let template = get(spec, "template");
    if !same(
        &scheduling_only(template),
        &scheduling_only(get(old_spec, "template")),
    ) {
        e.invalid(
            "spec.template",
            "core.PodTemplateSpec{...}",
            "field is immutable",
        );
    }
    for (key, go) in [
        ("completionMode", None),
        ("podFailurePolicy", Some("batch.PodFailurePolicy{...}")),
        ("backoffLimitPerIndex", None),
        ("managedBy", None),
        ("successPolicy", Some("batch.SuccessPolicy{...}")),
    ] {
        let v = get(spec, key);
        let printed = match go {
            Some(g) if !v.is_null() => g.to_owned(),
            _ => go_scalar(v),
        };
        e.immutable(&format!("spec.{key}"), v, get(old_spec, key), &printed);
    }
}

fn cron_job(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    let name = text(get(obj, "metadata"), "name");
    // Jobs get an 11-character suffix and a 63-character limit.
    if old.is_none() && name.len() > 52 {
        e.invalid(
            "metadata.name",
            &quote(name),
            "must be no more than 52 characters",
        );
    }
    let spec = get(obj, "spec");
    let old_spec = old.map(|o| get(o, "spec"));
    let schedule = text(spec, "schedule");
    let time_zone = get(spec, "timeZone");
    if schedule.is_empty() {
        e.required("spec.schedule", "");
    } else {
        if let Some(err) = cron_error(schedule) {
            e.invalid("spec.schedule", &quote(schedule), &err);
        }
        let tz_allowed = old_spec.is_some_and(|s| text(s, "schedule").contains("TZ"));
        if tz_allowed && schedule.contains("TZ") && !time_zone.is_null() {
            e.invalid(
                "spec.schedule",
                &quote(schedule),
                "cannot use both timeZone field and TZ or CRON_TZ in schedule",
            );
        } else if !tz_allowed && schedule.contains("TZ") {
            e.invalid(
                "spec.schedule",
                &quote(schedule),
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            );
        }
    }
    e.nonnegative(
        "spec.startingDeadlineSeconds",
        int(spec, "startingDeadlineSeconds"),
    );
    if old_spec.is_none_or(|s| !same(get(s, "timeZone"), time_zone))
        && let Some(tz) = time_zone.as_str()
    {
        time_zone_errors(e, tz);
    }
    match text(spec, "concurrencyPolicy") {
        "Allow" | "Forbid" | "Replace" => {}
        "" => e.required("spec.concurrencyPolicy", ""),
        other => e.not_supported(
            "spec.concurrencyPolicy",
            &quote(other),
            &["Allow", "Forbid", "Replace"],
        ),
    }
    let job = get(get(spec, "jobTemplate"), "spec");
    job_spec(e, job, "spec.jobTemplate.spec");
    let sel = get(job, "selector");
    if !sel.is_null() {
        e.invalid(
            "spec.jobTemplate.spec.selector",
            &go_selector(sel),
            "`selector` will be auto-generated",
        );
    }
    if get(job, "manualSelector").as_bool() == Some(true) {
        e.not_supported(
            "spec.jobTemplate.spec.manualSelector",
            "true",
            &["nil", "false"],
        );
    }
    nonnegative_fields(
        e,
        spec,
        "spec",
        &["successfulJobsHistoryLimit", "failedJobsHistoryLimit"],
    );
}

fn time_zone_errors(e: &mut Errs, tz: &str) {
    let path = "spec.timeZone";
    if tz.is_empty() {
        e.invalid(path, &quote(tz), "timeZone must be nil or non-empty string");
        return;
    }
    let part_ok = |p: &str| {
        p != "."
            && p != ".."
            && !p.starts_with('-')
            && (1..=14).contains(&p.len())
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'+'))
    };
    if !tz.split('/').all(part_ok) {
        e.invalid(path, &quote(tz), &format!("unknown time zone {tz}"));
        return;
    }
    if tz.eq_ignore_ascii_case("Local") {
        e.invalid(
            path,
            &quote(tz),
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        );
    }
}

// ---------------------------------------------------------------------------------------
// Cron schedules, checked as robfig/cron/v3's ParseStandard checks them (with its messages).

struct Bounds {
    min: i64,
    max: i64,
    names: &'static [&'static str],
    /// The value of `names[0]`.
    first: i64,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Why `spec` is not a standard cron schedule, in cron's words; None when it is one.
pub(crate) fn cron_error(spec: &str) -> Option<String> {
    if spec.is_empty() {
        return Some("empty spec string".to_owned());
    }
    let mut spec = spec;
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        // The zone itself is the timeZone check's business; cron only needs the rest.
        let (zone, rest) = spec.split_once(' ').unwrap_or((spec, ""));
        let zone = zone.split_once('=').map_or("", |(_, z)| z);
        if zone.is_empty() {
            return Some(format!(
                "provided bad location {zone}: unknown time zone {zone}"
            ));
        }
        spec = rest.trim();
    }
    if spec.starts_with('@') {
        return match spec {
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight"
            | "@hourly" => None,
            _ => match spec.strip_prefix("@every ") {
                Some(d) => go_duration_error(d)
                    .map(|err| format!("failed to parse duration {spec}: {err}")),
                None => Some(format!("unrecognized descriptor: {spec}")),
            },
        };
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Some(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    let bounds = [
        Bounds {
            min: 0,
            max: 59,
            names: &[],
            first: 0,
        },
        Bounds {
            min: 0,
            max: 23,
            names: &[],
            first: 0,
        },
        Bounds {
            min: 1,
            max: 31,
            names: &[],
            first: 0,
        },
        Bounds {
            min: 1,
            max: 12,
            names: &MONTHS,
            first: 1,
        },
        Bounds {
            min: 0,
            max: 6,
            names: &DAYS,
            first: 0,
        },
    ];
    for (field, b) in fields.iter().zip(bounds.iter()) {
        for expr in field.split(',').filter(|s| !s.is_empty()) {
            if let Err(err) = cron_range(expr, b) {
                return Some(err);
            }
        }
    }
    None
}

fn cron_range(expr: &str, b: &Bounds) -> Result<(), String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let range = range_and_step.first().copied().unwrap_or("");
    let low_high: Vec<&str> = range.split('-').collect();
    let low = low_high.first().copied().unwrap_or("");
    let single = low_high.len() == 1;
    let (start, mut end) = if low == "*" || low == "?" {
        (b.min, b.max)
    } else {
        let start = cron_int_or_name(low, b)?;
        let end = match low_high.as_slice() {
            [_] => start,
            [_, high] => cron_int_or_name(high, b)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
        (start, end)
    };
    let step = match range_and_step.as_slice() {
        [_] => 1,
        [_, step] => {
            let step = cron_int(step)?;
            // "N/step" means "N-max/step".
            if single {
                end = b.max;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok(())
}

fn cron_int_or_name(expr: &str, b: &Bounds) -> Result<i64, String> {
    let lower = expr.to_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(b.first + i64::try_from(i).unwrap_or(0));
    }
    cron_int(expr)
}

/// Go's `strconv.Atoi` plus cron's "negative number" check.
fn cron_int(expr: &str) -> Result<i64, String> {
    let digits = expr.strip_prefix(['+', '-']).unwrap_or(expr);
    let syntax_ok = !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit());
    if !syntax_ok {
        return Err(format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing {}: invalid syntax",
            quote(expr)
        ));
    }
    let num: i64 = expr.parse().map_err(|_| {
        format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing {}: value out of range",
            quote(expr)
        )
    })?;
    if num < 0 {
        return Err(format!("negative number ({num}) not allowed: {expr}"));
    }
    Ok(num)
}

/// Why Go's `time.ParseDuration` rejects `s`, in its words.
fn go_duration_error(orig: &str) -> Option<String> {
    let invalid = || Some(format!("time: invalid duration {}", quote(orig)));
    let mut s = orig.strip_prefix(['+', '-']).unwrap_or(orig);
    if s == "0" {
        return None;
    }
    if s.is_empty() {
        return invalid();
    }
    while !s.is_empty() {
        let is_num = |c: char| c.is_ascii_digit() || c == '.';
        let num_len = s.find(|c: char| !is_num(c)).unwrap_or(s.len());
        let num = s.get(..num_len).unwrap_or("");
        // At most one '.', with digits on at least one side.
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        if num.is_empty()
            || frac_part.contains('.')
            || (int_part.is_empty() && frac_part.is_empty())
        {
            return invalid();
        }
        s = s.get(num_len..).unwrap_or("");
        let unit_len = s.find(is_num).unwrap_or(s.len());
        if unit_len == 0 {
            return Some(format!("time: missing unit in duration {}", quote(orig)));
        }
        let unit = s.get(..unit_len).unwrap_or("");
        if !matches!(unit, "ns" | "us" | "µs" | "μs" | "ms" | "s" | "m" | "h") {
            return Some(format!(
                "time: unknown unit {} in duration {}",
                quote(unit),
                quote(orig)
            ));
        }
        if int_part.len() > 18 {
            return invalid();
        }
        s = s.get(unit_len..).unwrap_or("");
    }
    None
}

// ---------------------------------------------------------------------------------------
// Services.

fn service(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    let spec = get(obj, "spec");
    let kind = text(spec, "type");
    let ports = list(spec, "ports");
    let cluster_ip = list(spec, "clusterIPs")
        .first()
        .and_then(Value::as_str)
        .unwrap_or_else(|| text(spec, "clusterIP"));
    let headless = cluster_ip == "None";
    if ports.is_empty() && !headless && kind != "ExternalName" {
        e.required("spec.ports", "");
    }
    match kind {
        "LoadBalancer" | "NodePort" => {
            if headless {
                e.invalid(
                    "spec.clusterIPs[0]",
                    &quote("None"),
                    &format!("may not be set to 'None' for {kind} services"),
                );
            }
            if kind == "LoadBalancer" {
                for (i, p) in ports.iter().enumerate() {
                    if int(p, "port") == Some(10250) {
                        e.invalid(
                            &format!("spec.ports[{i}]"),
                            "10250",
                            "may not expose port 10250 externally since it is used by kubelet",
                        );
                    }
                }
            }
        }
        "ExternalName" => {
            if !cluster_ip.is_empty() {
                e.forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                );
            }
            if !list(spec, "ipFamilies").is_empty() {
                e.forbidden(
                    "spec.ipFamilies",
                    "may not be set for ExternalName services",
                );
            }
            if has(spec, "ipFamilyPolicy") {
                e.forbidden(
                    "spec.ipFamilyPolicy",
                    "may not be set for ExternalName services",
                );
            }
            // A CNAME may end in a dot (fully qualified).
            let cname = text(spec, "externalName");
            let cname = cname.strip_suffix('.').unwrap_or(cname);
            if cname.is_empty() {
                e.required("spec.externalName", "");
            } else {
                for msg in dns1123_subdomain(cname) {
                    e.invalid("spec.externalName", &quote(cname), &msg);
                }
            }
        }
        _ => {}
    }

    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        let name = text(p, "name");
        if ports.len() > 1 && name.is_empty() {
            e.required(&format!("{pp}.name"), "");
        } else if !name.is_empty() {
            for msg in dns1123_label(name) {
                e.invalid(&format!("{pp}.name"), &quote(name), &msg);
            }
            if !names.insert(name) {
                e.duplicate(&format!("{pp}.name"), &quote(name));
            }
        }
        let port = int(p, "port").unwrap_or(0);
        if !valid_port(port) {
            e.invalid(&format!("{pp}.port"), &port.to_string(), PORT_RANGE_MSG);
        }
        protocol(e, p, &pp);
        port_num_or_name(e, get(p, "targetPort"), &format!("{pp}.targetPort"));
        if let Some(app) = get(p, "appProtocol").as_str() {
            for msg in qualified_name(app) {
                e.invalid(&format!("{pp}.appProtocol"), &quote(app), &msg);
            }
        }
    }
    labels(e, get(spec, "selector"), "spec.selector");

    let affinity = text(spec, "sessionAffinity");
    match affinity {
        "ClientIP" | "None" => {}
        "" => e.required("spec.sessionAffinity", ""),
        other => e.not_supported("spec.sessionAffinity", &quote(other), &["ClientIP", "None"]),
    }
    if affinity == "ClientIP"
        && let Some(t) = int(
            get(get(spec, "sessionAffinityConfig"), "clientIP"),
            "timeoutSeconds",
        )
        && !(1..=86400).contains(&t)
    {
        e.invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            &t.to_string(),
            "must be greater than 0 and less than 86400",
        );
    }
    match kind {
        "ClusterIP" | "ExternalName" | "LoadBalancer" | "NodePort" => {}
        "" => e.required("spec.type", ""),
        other => e.not_supported(
            "spec.type",
            &quote(other),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ),
    }

    let old_ports = old.map_or(&[][..], |o| list(get(o, "spec"), "ports"));
    let mut node_ports = BTreeSet::new();
    let mut port_keys = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        let proto = text(p, "protocol");
        if let Some(node_port) = int(p, "nodePort").filter(|n| *n != 0) {
            let np = format!("{pp}.nodePort");
            match kind {
                "ClusterIP" | "ExternalName" => {
                    // A port kept from before a type change is released, not an error.
                    let kept = old_ports
                        .get(i)
                        .is_some_and(|o| int(o, "nodePort") == Some(node_port));
                    if !kept {
                        e.forbidden(&np, &format!("may not be used when `type` is '{kind}'"));
                    }
                }
                _ => {
                    if !(30000..=32767).contains(&node_port) {
                        e.invalid(
                            &np,
                            &node_port.to_string(),
                            "provided port is not in the valid range. The range of valid ports is 30000-32767",
                        );
                    }
                }
            }
            if !node_ports.insert((proto, node_port)) {
                e.duplicate(&np, &node_port.to_string());
            }
        }
        let port = int(p, "port").unwrap_or(0);
        if !port_keys.insert((proto, port)) {
            e.duplicate(
                &pp,
                &format!(
                    "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                    quote(proto)
                ),
            );
        }
    }

    let external = matches!(kind, "NodePort" | "LoadBalancer")
        || (kind == "ClusterIP" && !list(spec, "externalIPs").is_empty());
    let etp = text(spec, "externalTrafficPolicy");
    // Like a node port, a policy kept from before a type change is dropped, not an error.
    let etp_kept = old.is_some_and(|o| text(get(o, "spec"), "externalTrafficPolicy") == etp);
    if !external {
        if !etp.is_empty() && !etp_kept {
            e.invalid(
                "spec.externalTrafficPolicy",
                &quote(etp),
                "may only be set for externally-accessible services",
            );
        }
    } else if etp.is_empty() {
        e.required("spec.externalTrafficPolicy", "");
    } else if !matches!(etp, "Cluster" | "Local") {
        e.not_supported(
            "spec.externalTrafficPolicy",
            &quote(etp),
            &["Cluster", "Local"],
        );
    }
    if let Some(itp) = get(spec, "internalTrafficPolicy").as_str()
        && !matches!(itp, "Cluster" | "Local")
    {
        e.not_supported(
            "spec.internalTrafficPolicy",
            &quote(itp),
            &["Cluster", "Local"],
        );
    }
    if let Some(policy) = get(spec, "ipFamilyPolicy").as_str()
        && !matches!(
            policy,
            "SingleStack" | "PreferDualStack" | "RequireDualStack"
        )
    {
        e.not_supported(
            "spec.ipFamilyPolicy",
            &quote(policy),
            &["PreferDualStack", "RequireDualStack", "SingleStack"],
        );
    }
    for (i, family) in list(spec, "ipFamilies").iter().enumerate() {
        let f = family.as_str().unwrap_or("");
        if !matches!(f, "IPv4" | "IPv6") {
            e.not_supported(
                &format!("spec.ipFamilies[{i}]"),
                &quote(f),
                &["IPv4", "IPv6"],
            );
        }
    }

    // The primary cluster IP may not change once set (ExternalName has none to keep).
    if let Some(old) = old {
        let old_spec = get(old, "spec");
        let old_ip = list(old_spec, "clusterIPs")
            .first()
            .and_then(Value::as_str)
            .unwrap_or_else(|| text(old_spec, "clusterIP"));
        if kind != "ExternalName"
            && text(old_spec, "type") != "ExternalName"
            && !old_ip.is_empty()
            && !cluster_ip.is_empty()
            && old_ip != cluster_ip
        {
            let ips = if has(spec, "clusterIPs") {
                go_strings(get(spec, "clusterIPs"))
            } else {
                format!("[]string{{{}}}", quote(cluster_ip))
            };
            e.invalid("spec.clusterIPs[0]", &ips, "may not change once set");
        }
    }
}

// ---------------------------------------------------------------------------------------
// ConfigMaps and Secrets.

const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Where Go's `base64.StdEncoding` stops decoding `s`, if it fails.
fn base64_error(s: &[u8]) -> Option<usize> {
    let valid = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    let newline = |c: Option<&u8>| matches!(c, Some(b'\n' | b'\r'));
    let mut si = 0usize;
    loop {
        let mut j = 0usize;
        while j < 4 {
            let Some(&c) = s.get(si) else {
                return if j == 0 { None } else { Some(si - j) };
            };
            si += 1;
            if valid(c) {
                j += 1;
                continue;
            }
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if c != b'=' || j < 2 {
                return Some(si - 1);
            }
            if j == 2 {
                while newline(s.get(si)) {
                    si += 1;
                }
                match s.get(si) {
                    None => return Some(s.len()),
                    Some(b'=') => si += 1,
                    Some(_) => return Some(si - 1),
                }
            }
            while newline(s.get(si)) {
                si += 1;
            }
            return (si < s.len()).then_some(si);
        }
    }
}

fn decoded_len(s: &str) -> usize {
    let n = s.bytes().filter(|c| !matches!(c, b'\n' | b'\r')).count();
    let pad = s.bytes().rev().take_while(|c| *c == b'=').count();
    (n / 4 * 3).saturating_sub(pad)
}

/// A pod's spec is fixed once created, except container images, activeDeadlineSeconds, added
/// tolerations and the binding to a node (set once, when scheduled).
fn pod_update(e: &mut Errs, obj: &Value, old: &Value) {
    let mut new_spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let mut old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
    for spec in [&mut new_spec, &mut old_spec] {
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(cs)) = spec.get_mut(list) {
                for c in cs {
                    if let Some(m) = c.as_object_mut() {
                        m.remove("image");
                    }
                }
            }
        }
        if let Some(m) = spec.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
        }
    }
    let old_node = old_spec
        .get("nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if old_node.is_empty()
        && let (Some(n), Some(o)) = (new_spec.as_object_mut(), old_spec.as_object_mut())
    {
        n.remove("nodeName");
        o.remove("nodeName");
    }
    if new_spec != old_spec {
        e.forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        );
    }
}

fn immutable_data(e: &mut Errs, obj: &Value, old: Option<&Value>, fields: &[&str]) {
    let Some(old) = old else {
        return;
    };
    if get(old, "immutable").as_bool() != Some(true) {
        return;
    }
    if get(obj, "immutable").as_bool() != Some(true) {
        e.forbidden("immutable", IMMUTABLE_WHEN_SET);
    }
    for key in fields {
        if !same(get(obj, key), get(old, key)) {
            e.forbidden(key, IMMUTABLE_WHEN_SET);
        }
    }
}

fn config_map(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    immutable_data(e, obj, old, &["data", "binaryData"]);
    let data = get(obj, "data").as_object();
    let binary = get(obj, "binaryData").as_object();
    let mut total = 0usize;
    for (k, v) in data.into_iter().flatten() {
        let p = format!("data[{k}]");
        for msg in config_map_key(k) {
            e.invalid(&p, &quote(k), &msg);
        }
        if binary.is_some_and(|b| b.contains_key(k)) {
            e.invalid(&p, &quote(k), "duplicate of key present in binaryData");
        }
        total += v.as_str().map_or(0, str::len);
    }
    for (k, v) in binary.into_iter().flatten() {
        let p = format!("binaryData[{k}]");
        for msg in config_map_key(k) {
            e.invalid(&p, &quote(k), &msg);
        }
        if data.is_some_and(|d| d.contains_key(k)) {
            e.invalid(&p, &quote(k), "duplicate of key present in data");
        }
        total += v.as_str().map_or(0, decoded_len);
    }
    if total > MAX_DATA_BYTES {
        // Kubernetes reports the whole object, at the root path "[]".
        e.too_long("[]", MAX_DATA_BYTES);
    }
}

fn secret(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    let kind = text(obj, "type");
    if let Some(old) = old {
        let before = get(old, "type");
        e.immutable("type", get(obj, "type"), before, &quote(kind));
    }
    immutable_data(e, obj, old, &["data"]);
    let data = get(obj, "data").as_object();
    let mut total = 0usize;
    for (k, v) in data.into_iter().flatten() {
        let p = format!("data[{k}]");
        for msg in config_map_key(k) {
            e.invalid(&p, &quote(k), &msg);
        }
        if let Some(s) = v.as_str() {
            if let Some(at) = base64_error(s.as_bytes()) {
                e.invalid(
                    &p,
                    &quote("<secret contents redacted>"),
                    &format!("illegal base64 data at input byte {at}"),
                );
            }
            total += decoded_len(s);
        }
    }
    if total > MAX_DATA_BYTES {
        e.too_long("data", MAX_DATA_BYTES);
    }
    let present = |key: &str| data.is_some_and(|d| d.contains_key(key));
    let required = |e: &mut Errs, key: &str| e.required(&format!("data[{key}]"), "");
    match kind {
        "kubernetes.io/service-account-token" => {
            let annotations = get(get(obj, "metadata"), "annotations");
            if text(annotations, "kubernetes.io/service-account.name").is_empty() {
                e.required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                );
            }
        }
        "kubernetes.io/dockercfg" if !present(".dockercfg") => required(e, ".dockercfg"),
        "kubernetes.io/dockerconfigjson" if !present(".dockerconfigjson") => {
            required(e, ".dockerconfigjson");
        }
        "kubernetes.io/basic-auth" if !present("username") && !present("password") => {
            required(e, "username");
            required(e, "password");
        }
        "kubernetes.io/ssh-auth" => {
            let key = data
                .and_then(|d| d.get("ssh-privatekey"))
                .and_then(Value::as_str);
            if key.is_none_or(str::is_empty) {
                required(e, "ssh-privatekey");
            }
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !present(key) {
                    required(e, key);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment_obj() -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "web",
                        "image": "nginx:1.27",
                        "ports": [{"containerPort": 80, "name": "http"}],
                        "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1", "memory": "128Mi"}}
                    }]}
                }
            }
        });
        crate::defaults::apply_defaults("apps/v1", "Deployment", &mut d);
        d
    }

    fn causes(kind: &str, obj: &Value) -> Vec<(String, String, String)> {
        let av = obj["apiVersion"].as_str().unwrap_or("v1").to_owned();
        validate(&av, kind, obj, None)
            .into_iter()
            .map(|c| (c.field, c.message, c.reason))
            .collect()
    }

    fn one(kind: &str, obj: &Value) -> (String, String, String) {
        let all = causes(kind, obj);
        assert_eq!(all.len(), 1, "{all:#?}");
        all.into_iter().next().unwrap()
    }

    #[test]
    fn pod_failure_policy_rules_are_checked() {
        let job = |rules: Value| {
            let mut j = json!({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "j", "namespace": "default"},
                "spec": {"podFailurePolicy": {"rules": rules},
                    "template": {"spec": {"restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "busybox"}]}}}});
            crate::defaults::apply_defaults("batch/v1", "Job", &mut j);
            j
        };
        let fields = |rules: Value| -> Vec<String> {
            causes("Job", &job(rules))
                .into_iter()
                .map(|c| c.0)
                .collect()
        };
        assert_eq!(
            fields(
                json!([{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [1, 42]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}])
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            fields(
                json!([{"action": "Explode", "onExitCodes": {"containerName": "side", "operator": "Is", "values": [0, 3, 2]}}])
            ),
            [
                "spec.podFailurePolicy.rules[0].action",
                "spec.podFailurePolicy.rules[0].onExitCodes.containerName",
                "spec.podFailurePolicy.rules[0].onExitCodes.operator",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[2]",
            ]
        );
        assert_eq!(
            fields(
                json!([{"action": "FailJob"}, {"action": "FailIndex", "onPodConditions": [{"type": "X", "status": "Maybe"}]}])
            ),
            [
                "spec.podFailurePolicy.rules[0]",
                "spec.podFailurePolicy.rules[1].action",
                "spec.podFailurePolicy.rules[1].onPodConditions[0].status",
            ]
        );
    }

    #[test]
    fn disruption_budgets_take_one_bound_an_int_or_percent_and_a_valid_selector() {
        let pdb = |spec: Value| {
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "b", "namespace": "default"}, "spec": spec})
        };
        let sel = json!({"matchLabels": {"app": "web"}});
        assert!(
            causes(
                "PodDisruptionBudget",
                &pdb(json!({"minAvailable": 2, "selector": sel}))
            )
            .is_empty()
        );
        assert!(
            causes(
                "PodDisruptionBudget",
                &pdb(json!({"maxUnavailable": "50%", "selector": sel}))
            )
            .is_empty()
        );
        let (field, message, _) = one(
            "PodDisruptionBudget",
            &pdb(json!({"minAvailable": 1, "maxUnavailable": 1, "selector": sel})),
        );
        assert_eq!(field, "spec");
        assert!(
            message.ends_with("minAvailable and maxUnavailable cannot be both set"),
            "{message}"
        );
        let (field, message, _) = one("PodDisruptionBudget", &pdb(json!({"minAvailable": "150%"})));
        assert_eq!(field, "spec.minAvailable");
        assert!(
            message.ends_with("must not be greater than 100%"),
            "{message}"
        );
        let (field, _, _) = one(
            "PodDisruptionBudget",
            &pdb(json!({"maxUnavailable": "two"})),
        );
        assert_eq!(field, "spec.maxUnavailable");
        let (field, _, _) = one("PodDisruptionBudget", &pdb(json!({"maxUnavailable": -1})));
        assert_eq!(field, "spec.maxUnavailable");
        let (field, _, _) = one(
            "PodDisruptionBudget",
            &pdb(
                json!({"minAvailable": 1, "selector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}}),
            ),
        );
        assert_eq!(field, "spec.selector.matchExpressions[0].operator");
        let (field, _, reason) = one(
            "PodDisruptionBudget",
            &pdb(json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "Sometimes"})),
        );
        assert_eq!(
            (field.as_str(), reason.as_str()),
            ("spec.unhealthyPodEvictionPolicy", "FieldValueNotSupported")
        );
    }

    #[test]
    fn pod_specs_are_immutable_but_images_and_binding_may_change() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}});
        crate::defaults::apply_defaults("v1", "Pod", &mut pod);
        let mut new = pod.clone();
        new["spec"]["containers"][0]["image"] = json!("busybox:2");
        new["spec"]["nodeName"] = json!("node-1");
        assert!(validate("v1", "Pod", &new, Some(&pod)).is_empty());
        let mut moved = new.clone();
        moved["spec"]["nodeName"] = json!("node-2");
        let errs = validate("v1", "Pod", &moved, Some(&new));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec");
        assert!(
            errs[0]
                .message
                .starts_with("Forbidden: pod updates may not change")
        );
    }

    #[test]
    fn a_defaulted_deployment_is_valid() {
        assert_eq!(causes("Deployment", &deployment_obj()), vec![]);
    }

    #[test]
    fn container_names_are_dns_labels() {
        let mut d = deployment_obj();
        d["spec"]["template"]["spec"]["containers"][0]["name"] = json!("Foo_Bar");
        let (field, message, reason) = one("Deployment", &d);
        assert_eq!(field, "spec.template.spec.containers[0].name");
        assert_eq!(
            message,
            "Invalid value: \"Foo_Bar\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        );
        assert_eq!(reason, "FieldValueInvalid");
    }

    #[test]
    fn duplicate_container_names_and_missing_images() {
        let mut d = deployment_obj();
        let c = d["spec"]["template"]["spec"]["containers"][0].clone();
        let mut second = c.clone();
        second["image"] = json!("");
        d["spec"]["template"]["spec"]["containers"] = json!([c, second]);
        let all = causes("Deployment", &d);
        assert!(all.contains(&(
            "spec.template.spec.containers[1].image".into(),
            "Required value".into(),
            "FieldValueRequired".into()
        )));
        assert!(all.contains(&(
            "spec.template.spec.containers[1].name".into(),
            "Duplicate value: \"web\"".into(),
            "FieldValueDuplicate".into()
        )));
    }

    #[test]
    fn selector_must_match_template_labels() {
        let mut d = deployment_obj();
        d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        let (field, message, _) = one("Deployment", &d);
        assert_eq!(field, "spec.template.metadata.labels");
        assert_eq!(
            message,
            "Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"
        );

        // Set-based requirements count too.
        let mut d = deployment_obj();
        d["spec"]["selector"] = json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["web", "api"]},
            {"key": "canary", "operator": "DoesNotExist"}
        ]});
        assert_eq!(causes("Deployment", &d), vec![]);
        d["spec"]["template"]["metadata"]["labels"]["canary"] = json!("yes");
        assert_eq!(one("Deployment", &d).0, "spec.template.metadata.labels");
    }

    #[test]
    fn ports_must_be_in_range() {
        let mut d = deployment_obj();
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(70000);
        let (field, message, _) = one("Deployment", &d);
        assert_eq!(
            field,
            "spec.template.spec.containers[0].ports[0].containerPort"
        );
        assert_eq!(
            message,
            "Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
    }

    #[test]
    fn quantities_must_parse_and_requests_fit_limits() {
        let mut d = deployment_obj();
        d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("abc");
        let (field, message, _) = one("Deployment", &d);
        assert_eq!(
            field,
            "spec.template.spec.containers[0].resources.limits[cpu]"
        );
        assert_eq!(
            message,
            "Invalid value: \"abc\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );

        let mut d = deployment_obj();
        d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("2");
        let (field, message, _) = one("Deployment", &d);
        assert_eq!(field, "spec.template.spec.containers[0].resources.requests");
        assert_eq!(
            message,
            "Invalid value: \"2\": must be less than or equal to cpu limit of 1"
        );
    }

    #[test]
    fn replicated_templates_must_restart_always() {
        let mut d = deployment_obj();
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        let (field, message, reason) = one("Deployment", &d);
        assert_eq!(field, "spec.template.spec.restartPolicy");
        assert_eq!(
            message,
            "Unsupported value: \"Never\": supported values: \"Always\""
        );
        assert_eq!(reason, "FieldValueNotSupported");

        let mut d = deployment_obj();
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Sometimes");
        assert_eq!(
            one("Deployment", &d).1,
            "Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\""
        );
    }

    #[test]
    fn deployment_selector_is_immutable() {
        let old = deployment_obj();
        let mut new = deployment_obj();
        new["spec"]["selector"]["matchLabels"]["tier"] = json!("fe");
        new["spec"]["template"]["metadata"]["labels"]["tier"] = json!("fe");
        let all: Vec<_> = validate("apps/v1", "Deployment", &new, Some(&old));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].field, "spec.selector");
        assert_eq!(
            all[0].message,
            "Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"tier\":\"fe\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
        );
        // An unchanged selector is fine.
        assert!(validate("apps/v1", "Deployment", &old, Some(&old)).is_empty());
    }

    #[test]
    fn rolling_update_checks() {
        let mut d = deployment_obj();
        d["spec"]["strategy"]["rollingUpdate"] = json!({"maxUnavailable": 0, "maxSurge": "0%"});
        let (field, message, _) = one("Deployment", &d);
        assert_eq!(field, "spec.strategy.rollingUpdate.maxUnavailable");
        assert_eq!(
            message,
            "Invalid value: intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}: may not be 0 when `maxSurge` is 0"
        );
        d["spec"]["strategy"] = json!({"type": "Recreate", "rollingUpdate": {}});
        assert_eq!(one("Deployment", &d).0, "spec.strategy.rollingUpdate");
    }

    #[test]
    fn jobs_need_a_terminating_restart_policy() {
        let mut j = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "default", "uid": "1234"},
            "spec": {"template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}}}
        });
        crate::defaults::apply_defaults("batch/v1", "Job", &mut j);
        let (field, message, _) = one("Job", &j);
        assert_eq!(field, "spec.template.spec.restartPolicy");
        assert_eq!(
            message,
            "Required value: valid values: \"OnFailure\", \"Never\""
        );
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        assert_eq!(causes("Job", &j), vec![]);
        let mut changed = j.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:5");
        let all = validate("batch/v1", "Job", &changed, Some(&j));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].field, "spec.template");
        assert!(all[0].message.ends_with("field is immutable"));
    }

    #[test]
    fn cron_schedules_are_checked() {
        assert_eq!(cron_error("*/5 * * * *"), None);
        assert_eq!(cron_error("0 0 * * MON-FRI"), None);
        assert_eq!(cron_error("@hourly"), None);
        assert_eq!(cron_error("@every 1h30m"), None);
        assert_eq!(
            cron_error("61 * * * *").as_deref(),
            Some("end of range (61) above maximum (59): 61")
        );
        assert_eq!(
            cron_error("* * * *").as_deref(),
            Some("expected exactly 5 fields, found 4: [* * * *]")
        );
        assert_eq!(
            cron_error("@sometimes").as_deref(),
            Some("unrecognized descriptor: @sometimes")
        );
        assert_eq!(
            cron_error("@every soon").as_deref(),
            Some("failed to parse duration @every soon: time: invalid duration \"soon\"")
        );
        assert_eq!(
            cron_error("x * * * *").as_deref(),
            Some("failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax")
        );
        assert_eq!(
            cron_error("*/0 * * * *").as_deref(),
            Some("step of range should be a positive number: */0")
        );

        let mut c = json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"schedule": "0 25 * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure",
                "containers": [{"name": "hello", "image": "busybox"}]
            }}}}}
        });
        crate::defaults::apply_defaults("batch/v1", "CronJob", &mut c);
        let (field, message, _) = one("CronJob", &c);
        assert_eq!(field, "spec.schedule");
        assert_eq!(
            message,
            "Invalid value: \"0 25 * * *\": end of range (25) above maximum (23): 25"
        );
    }

    fn service_obj(spec: Value) -> Value {
        let mut s = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": spec
        });
        crate::defaults::apply_defaults("v1", "Service", &mut s);
        s
    }

    #[test]
    fn service_ports_are_checked() {
        let s = service_obj(json!({"type": "NodePort", "selector": {"app": "web"},
            "ports": [{"port": 80, "nodePort": 40000}]}));
        let (field, message, _) = one("Service", &s);
        assert_eq!(field, "spec.ports[0].nodePort");
        assert_eq!(
            message,
            "Invalid value: 40000: provided port is not in the valid range. The range of valid ports is 30000-32767"
        );

        let s = service_obj(json!({"ports": [{"port": 80}, {"port": 443, "name": "https"}]}));
        assert_eq!(
            one("Service", &s),
            (
                "spec.ports[0].name".into(),
                "Required value".into(),
                "FieldValueRequired".into()
            )
        );
        let s = service_obj(json!({"type": "Magic", "ports": [{"port": 80}]}));
        assert_eq!(
            one("Service", &s).1,
            "Unsupported value: \"Magic\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
        );
        let s = service_obj(json!({}));
        assert_eq!(one("Service", &s).0, "spec.ports");
        let s = service_obj(json!({"type": "ExternalName", "externalName": "example.com"}));
        assert_eq!(causes("Service", &s), vec![]);

        // NodePort → ClusterIP keeps the old node port and traffic policy without complaint.
        let old =
            service_obj(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}));
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        assert!(validate("v1", "Service", &new, Some(&old)).is_empty());
        assert!(causes("Service", &new).contains(&(
            "spec.ports[0].nodePort".into(),
            "Forbidden: may not be used when `type` is 'ClusterIP'".into(),
            "FieldValueForbidden".into()
        )));
    }

    #[test]
    fn service_cluster_ip_is_kept() {
        let old = service_obj(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.96.0.11");
        let all = validate("v1", "Service", &new, Some(&old));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].field, "spec.clusterIPs[0]");
        assert_eq!(
            all[0].message,
            "Invalid value: []string{\"10.96.0.11\"}: may not change once set"
        );
    }

    #[test]
    fn metadata_labels_and_annotations() {
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"example.com/ok": "fine", "bad key!": "x"},
                "annotations": {"a": "x".repeat(300 * 1024)}}});
        let all = causes("ConfigMap", &cm);
        assert!(all.contains(&(
            "metadata.labels".into(),
            "Invalid value: \"bad key!\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into(),
            "FieldValueInvalid".into()
        )));
        assert!(all.contains(&(
            "metadata.annotations".into(),
            "Too long: may not be more than 262144 bytes".into(),
            "FieldValueTooLong".into()
        )));
        cm["metadata"] = json!({"name": "c", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs"}]});
        assert_eq!(
            one("ConfigMap", &cm),
            (
                "metadata.ownerReferences.uid".into(),
                "Invalid value: \"\": must not be empty".into(),
                "FieldValueInvalid".into()
            )
        );
    }

    #[test]
    fn config_maps_and_secrets() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"ok.key": "1", "bad key": "2", "both": "x"}, "binaryData": {"both": "eA=="}});
        let all = causes("ConfigMap", &cm);
        assert_eq!(all.len(), 3, "{all:#?}");
        assert!(all.iter().any(|c| c.0 == "data[bad key]"));
        assert!(all.iter().any(|c| c.0 == "binaryData[both]"));

        let old = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "type": "Opaque", "immutable": true, "data": {"a": "YQ=="}});
        let mut new = old.clone();
        new["data"]["a"] = json!("Yg==");
        new["type"] = json!("kubernetes.io/tls");
        let all: Vec<(String, String)> = validate("v1", "Secret", &new, Some(&old))
            .into_iter()
            .map(|c| (c.field, c.message))
            .collect();
        assert!(all.contains(&(
            "type".into(),
            "Invalid value: \"kubernetes.io/tls\": field is immutable".into()
        )));
        assert!(all.contains(&(
            "data".into(),
            "Forbidden: field is immutable when `immutable` is set".into()
        )));
        assert!(all.contains(&("data[tls.crt]".into(), "Required value".into())));

        let bad = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "type": "Opaque", "data": {"a": "no!"}});
        assert_eq!(
            one("Secret", &bad).1,
            "Invalid value: \"<secret contents redacted>\": illegal base64 data at input byte 2"
        );
    }

    #[test]
    fn statefulset_containers_may_mount_claim_templates() {
        let mut s = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "serviceName": "web",
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}});
        crate::defaults::apply_defaults("apps/v1", "StatefulSet", &mut s);
        assert_eq!(causes("StatefulSet", &s), vec![]);
        s["spec"]["volumeClaimTemplates"] = json!([]);
        assert_eq!(causes("StatefulSet", &s).len(), 1);
    }

    #[test]
    fn statefulset_spec_is_mostly_immutable() {
        let mut s = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}}}});
        crate::defaults::apply_defaults("apps/v1", "StatefulSet", &mut s);
        assert_eq!(causes("StatefulSet", &s), vec![]);
        let mut scaled = s.clone();
        scaled["spec"]["replicas"] = json!(3);
        assert!(validate("apps/v1", "StatefulSet", &scaled, Some(&s)).is_empty());
        let mut renamed = s.clone();
        renamed["spec"]["serviceName"] = json!("other");
        let all = validate("apps/v1", "StatefulSet", &renamed, Some(&s));
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].field, "spec");
        assert!(
            all[0]
                .message
                .starts_with("Forbidden: updates to statefulset spec")
        );
    }

    #[test]
    fn pod_volumes_and_mounts() {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"volumes": [{"name": "data", "emptyDir": {}, "hostPath": {"path": "/x"}}],
                "containers": [{"name": "c", "image": "busybox",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "livenessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}}}]}});
        crate::defaults::apply_defaults("v1", "Pod", &mut p);
        let all = causes("Pod", &p);
        assert!(all.contains(&(
            "spec.volumes[0].hostPath".into(),
            "Forbidden: may not specify more than 1 volume type".into(),
            "FieldValueForbidden".into()
        )));
        assert!(all.contains(&(
            "spec.containers[0].volumeMounts[0].name".into(),
            "Not found: \"data\"".into(),
            "FieldValueNotFound".into()
        )));
        assert!(all.contains(&(
            "spec.containers[0].livenessProbe.tcpSocket".into(),
            "Forbidden: may not specify more than 1 handler type".into(),
            "FieldValueForbidden".into()
        )));
        assert_eq!(all.len(), 3, "{all:#?}");
    }

    #[test]
    fn quantities_parse_and_print_canonically() {
        let canon = |s: &str| parse_quantity(s).ok().and_then(|q| q.canonical());
        assert_eq!(canon("100m").as_deref(), Some("100m"));
        assert_eq!(canon("0.5").as_deref(), Some("500m"));
        assert_eq!(canon("1.5").as_deref(), Some("1500m"));
        assert_eq!(canon("1000m").as_deref(), Some("1"));
        assert_eq!(canon("128Mi").as_deref(), Some("128Mi"));
        assert_eq!(canon("1024Mi").as_deref(), Some("1Gi"));
        assert_eq!(canon("1.5Gi").as_deref(), Some("1536Mi"));
        assert_eq!(canon("1e3").as_deref(), Some("1e3"));
        assert_eq!(canon("2k").as_deref(), Some("2k"));
        assert_eq!(canon("1200").as_deref(), Some("1200"));
        assert_eq!(canon("0").as_deref(), Some("0"));
        assert_eq!(canon("-1").as_deref(), Some("-1"));
        assert_eq!(parse_quantity("abc").err(), Some(QuantityError::Format));
        assert_eq!(parse_quantity("1Zi").err(), Some(QuantityError::Format));
        assert_eq!(parse_quantity("1mm").err(), Some(QuantityError::Suffix));
        assert_eq!(parse_quantity("1.2.3").err(), Some(QuantityError::Format));
        assert_eq!(parse_quantity("").err(), Some(QuantityError::Format));
        let mut q = parse_quantity("100u").unwrap();
        q.round_up_milli();
        assert_eq!(q.canonical().as_deref(), Some("1m"));
        assert!(parse_quantity("1e40").is_ok());
        assert!(parse_quantity("99999999999999999999999999999999999999999Ei").is_ok());
    }

    #[test]
    fn odd_shapes_do_not_panic() {
        let odd = [
            json!(null),
            json!("x"),
            json!({"spec": "x", "metadata": 3}),
            json!({"spec": {"template": [], "selector": "x", "containers": {}}}),
            json!({"spec": {"template": {"spec": {"containers": ["x", 1, null]}}}}),
            json!({"spec": {"ports": [1, "x", {"port": "x", "targetPort": null}]}, "data": [1]}),
        ];
        for kind in [
            "Pod",
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "CronJob",
            "Service",
            "ConfigMap",
            "Secret",
            "ReplicationController",
        ] {
            let av = match kind {
                "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => "apps/v1",
                "Job" | "CronJob" => "batch/v1",
                _ => "v1",
            };
            for o in &odd {
                let _ = validate(av, kind, o, Some(o));
                let mut d = o.clone();
                crate::defaults::apply_defaults(av, kind, &mut d);
                let _ = validate(av, kind, &d, None);
            }
        }
        for s in [
            "",
            "@",
            "@every ",
            "TZ=",
            "1-2-3 * * * *",
            "1/2/3 * * * *",
            "-1 * * * *",
        ] {
            let _ = cron_error(s);
        }
        for s in ["=", "a=", "ab=c", "====", "YQ==\n", "\n"] {
            let _ = base64_error(s.as_bytes());
        }
    }
}
