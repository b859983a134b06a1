//! A small grammar of keel's real config keys, built with `arbitrary` and rendered to TOML text.
//!
//! Every table of the schema (`[admin]`, `[[listeners]]` and their routes, `[upstreams.NAME]`
//! with `pool`/`breaker`/`outlier`/`health`, `[[faults]]`, ...) is a struct whose fields are
//! optional. A field usually holds a value of the right type drawn from a small pool of
//! plausible and edge values (so documents often validate and reach the deep checks), sometimes
//! an arbitrary string or number, and sometimes a value of the wrong type. Every table may also
//! carry one unknown key. Names come from a small pool so routes, splits, mirrors and faults
//! often refer to upstreams and routes that exist.
//!
//! Every rare choice is written `!u.ratio(n - 1, n)`: when the input runs out, `arbitrary`
//! answers `true` to every `ratio`, so the common (plausible) branch is the one taken, and a
//! pool's first entry, which `choose` then returns, is a valid value.

use arbitrary::{Arbitrary, Result, Unstructured};

/// Renders a value as TOML value text.
pub trait Render {
    /// The TOML text of this value.
    fn render(&self) -> String;
}

/// A TOML basic string with every character that needs it escaped.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A table key: bare when it may be, quoted otherwise.
pub fn toml_key(s: &str) -> String {
    let bare = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        s.to_owned()
    } else {
        toml_str(s)
    }
}

/// A value for a key that wants `T`: usually a `T`, one time in twelve a value of any type.
#[derive(Debug)]
pub enum V<T> {
    /// A value of the expected type.
    Good(T),
    /// Anything: often the wrong type.
    Wrong(Any),
}

impl<'a, T: Arbitrary<'a>> Arbitrary<'a> for V<T> {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        if !u.ratio(11u8, 12)? {
            Ok(V::Wrong(u.arbitrary()?))
        } else {
            Ok(V::Good(u.arbitrary()?))
        }
    }
}

/// A value that is usually absent: present one time in eight. For the unknown key every table may
/// carry: present half of the time (as a plain `Option`), it made almost every document invalid,
/// so accepted documents with listeners and routes were never seen.
#[derive(Debug)]
pub struct Rare<T>(pub Option<T>);

impl<'a, T: Arbitrary<'a>> Arbitrary<'a> for Rare<T> {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        if !u.ratio(7u8, 8)? {
            Ok(Rare(Some(u.arbitrary()?)))
        } else {
            Ok(Rare(None))
        }
    }
}

impl<T: Render> Render for V<T> {
    fn render(&self) -> String {
        match self {
            V::Good(t) => t.render(),
            V::Wrong(a) => a.render(),
        }
    }
}

impl Render for bool {
    fn render(&self) -> String {
        self.to_string()
    }
}

impl<T: Render> Render for Vec<T> {
    fn render(&self) -> String {
        let items: Vec<String> = self.iter().take(6).map(Render::render).collect();
        format!("[{}]", items.join(", "))
    }
}

/// A string from a pool of plausible and edge values, or (one time in sixteen) any short string.
macro_rules! string_pool {
    ($(#[$doc:meta])* $name:ident, [$($s:expr),* $(,)?]) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub String);

        impl<'a> Arbitrary<'a> for $name {
            fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
                const POOL: &[&str] = &[$($s),*];
                if !u.ratio(15u8, 16)? {
                    let s: String = u.arbitrary()?;
                    Ok($name(s.chars().take(24).collect()))
                } else {
                    Ok($name((*u.choose(POOL)?).to_owned()))
                }
            }
        }

        impl Render for $name {
            fn render(&self) -> String {
                toml_str(&self.0)
            }
        }
    };
}

string_pool!(
    /// Upstream, listener and route names: mostly ones that exist.
    Name,
    ["a", "a", "a", "b", "b", "c", "up", "payments", "missing", "", "A", "a b", "é", "x\"y"]
);
string_pool!(
    /// Socket addresses.
    Addr,
    [
        "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:8080", "127.0.0.1:8080",
        "0.0.0.0:8080", "127.0.0.1:9900", "0.0.0.0:9901", "[::1]:0", "localhost:80",
        "127.0.0.1:99999", "127.0.0.1", ":80", ""
    ]
);
string_pool!(
    /// Upstream endpoints.
    Endpoint,
    [
        "127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:2", "svc.local:8080", "[::1]:80", "127.0.0.1:0",
        "host:", ":80", "a b:1", "x:65535", "x:65536", "payments"
    ]
);
string_pool!(
    /// Host patterns of a route match.
    Host,
    ["payments", "payments", "*.svc.local", "PAY.ments", "*.", "*", "a:80", "", "x_y", "é"]
);
string_pool!(
    /// Path prefixes.
    PathPrefix,
    ["/", "/api/", "/api/", "api", "", "/a b", "/é"]
);
string_pool!(
    /// Header names.
    HeaderName,
    ["x-canary", "x-canary", "X-User", "host", "bad header", "", "x:y", "é"]
);
string_pool!(
    /// Header values.
    HeaderValue,
    ["1", "1", "yes", "", " padded ", "a\u{7}b", "é"]
);
string_pool!(
    /// Listener directions.
    Direction,
    ["inbound", "outbound", "outbound", "sideways", "INBOUND", ""]
);
string_pool!(
    /// Balancer kinds.
    Balancer,
    ["p2c", "round_robin", "hash", "hash", "random", ""]
);
string_pool!(
    /// Retry conditions.
    RetryOn,
    ["connect-failure", "reset", "timeout", "5xx", "503", "99", "600", "65536", "abc"]
);
string_pool!(
    /// Body sizes.
    Size,
    ["64KiB", "1MiB", "512", "10 KB", "1MB", "B", "", "99999999999999999999999KiB", "12GiB"]
);
string_pool!(
    /// Propagation formats.
    Propagation,
    ["tracecontext", "b3", "b3single", "jaeger", ""]
);
string_pool!(
    /// OTLP endpoints.
    Url,
    ["http://127.0.0.1:4317", "https://otel:4317", "otel:4317", "ftp://x", "http://", ""]
);
string_pool!(
    /// Log formats and levels.
    LogWord,
    ["text", "json", "info", "keel=debug", "xml", ""]
);
string_pool!(
    /// Fault end times (RFC 3339).
    Until,
    ["2999-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "tomorrow", ""]
);
string_pool!(
    /// Keys no table has: typos and keys of other tables (not `routes` or `upstreams`: beside
    /// `[[listeners.routes]]` or `[upstreams.NAME]` they are TOML syntax errors).
    Unknown,
    ["bogus", "lisen", "max_conections", "timeout_ms", "endpoint", "upstream", "route", "enabled"]
);

/// An integer: plausible limits, boundaries and overflow candidates, or any `i64`.
#[derive(Debug)]
pub struct Int(pub i64);

impl<'a> Arbitrary<'a> for Int {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        const POOL: &[i64] = &[
            1,
            2,
            3,
            5,
            10,
            100,
            0,
            -1,
            16,
            17,
            99,
            100,
            101,
            199,
            200,
            503,
            599,
            600,
            8191,
            8192,
            65536,
            u32::MAX as i64,
            u32::MAX as i64 + 1,
            i64::MAX,
            i64::MIN,
        ];
        if !u.ratio(9u8, 10)? {
            Ok(Int(u.arbitrary()?))
        } else {
            Ok(Int(*u.choose(POOL)?))
        }
    }
}

impl Render for Int {
    fn render(&self) -> String {
        self.0.to_string()
    }
}

/// A float: ratios, percentages, edge values (NaN, infinities), or any `f64`.
#[derive(Debug)]
pub struct Float(pub f64);

impl<'a> Arbitrary<'a> for Float {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        const POOL: &[f64] = &[
            0.0,
            0.1,
            0.5,
            1.0,
            1.5,
            -0.5,
            10.0,
            100.0,
            100.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            -0.0,
        ];
        if !u.ratio(9u8, 10)? {
            Ok(Float(u.arbitrary()?))
        } else {
            Ok(Float(*u.choose(POOL)?))
        }
    }
}

impl Render for Float {
    fn render(&self) -> String {
        let f = self.0;
        if f.is_nan() {
            "nan".into()
        } else if f.is_infinite() {
            if f > 0.0 { "inf" } else { "-inf" }.into()
        } else {
            // `{:?}` keeps a decimal point or an exponent, so TOML reads a float, not an integer.
            format!("{f:?}")
        }
    }
}

/// A duration string such as `"250ms"` or `"1s 500ms"`, with huge and malformed ones mixed in.
#[derive(Debug)]
pub struct Dur {
    parts: Vec<(u64, &'static str)>,
}

impl<'a> Arbitrary<'a> for Dur {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        const NUMBERS: &[u64] = &[
            1,
            1,
            5,
            10,
            100,
            250,
            250,
            1000,
            0,
            30,
            86_400,
            4_294_967_296,
            300_000_000_000,
            584_942_417_355,
            u64::MAX,
        ];
        const UNITS: &[&str] = &[
            "ms", "ms", "s", "s", "s", "m", "h", "d", "y", "ns", "us", "", "sec", "xs",
        ];
        let count = 1 + usize::from(!u.ratio(7u8, 8)?);
        let mut parts = Vec::with_capacity(count);
        for _ in 0..count {
            let n = if !u.ratio(9u8, 10)? {
                u.arbitrary()?
            } else {
                *u.choose(NUMBERS)?
            };
            parts.push((n, *u.choose(UNITS)?));
        }
        Ok(Dur { parts })
    }
}

impl Render for Dur {
    fn render(&self) -> String {
        let text: Vec<String> = self.parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
        toml_str(&text.join(" "))
    }
}

/// A scalar of any type, for wrong-type values and unknown keys.
#[derive(Debug, Arbitrary)]
pub enum Scalar {
    /// A string.
    Str(Name),
    /// An integer.
    Int(Int),
    /// A float.
    Float(Float),
    /// A boolean.
    Bool(bool),
    /// A duration string.
    Dur(Dur),
}

impl Render for Scalar {
    fn render(&self) -> String {
        match self {
            Scalar::Str(s) => s.render(),
            Scalar::Int(i) => i.render(),
            Scalar::Float(f) => f.render(),
            Scalar::Bool(b) => b.render(),
            Scalar::Dur(d) => d.render(),
        }
    }
}

/// Any value: a scalar, an array or an inline table (nesting stops at one level).
#[derive(Debug, Arbitrary)]
pub enum Any {
    /// A scalar.
    Scalar(Scalar),
    /// An array of scalars (possibly of mixed types).
    Array(Vec<Scalar>),
    /// An inline table.
    Table(Vec<(Unknown, Scalar)>),
}

impl Render for Any {
    fn render(&self) -> String {
        match self {
            Any::Scalar(s) => s.render(),
            Any::Array(items) => items.render(),
            Any::Table(entries) => {
                let mut fields = Fields::default();
                for (k, v) in entries.iter().take(4) {
                    fields.push(&k.0, v.render());
                }
                fields.inline()
            }
        }
    }
}

/// The `key = value` entries of one table, in order.
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// Adds an entry with already rendered value text, unless the table has the key already:
    /// a duplicate key is a TOML syntax error, which hides every other problem of the document
    /// (the `config` target covers syntax).
    pub fn push(&mut self, key: &str, value: String) {
        let key = toml_key(key);
        if self.0.iter().all(|(k, _)| *k != key) {
            self.0.push((key, value));
        }
    }

    /// Adds `key = value` when the value is present.
    pub fn opt<T: Render>(&mut self, key: &str, value: &Option<T>) {
        if let Some(v) = value {
            self.push(key, v.render());
        }
    }

    /// Adds the table's unknown key, when it has one.
    pub fn unknown(&mut self, extra: &Rare<(Unknown, Any)>) {
        if let Some((k, v)) = &extra.0 {
            self.push(&k.0, v.render());
        }
    }

    /// One `key = value` line per entry.
    pub fn lines(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
    }

    /// `{ key = value, ... }`.
    pub fn inline(&self) -> String {
        let entries: Vec<String> = self.0.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        format!("{{ {} }}", entries.join(", "))
    }
}
