//! Strict parsing of kernel-table attributes.
//!
//! An [`AttrReader`] reads each attribute a family knows, with its type rule,
//! and [`AttrReader::finish`] refuses any attribute it was not asked for, so
//! a typo in a package's kernel table fails at `open` instead of being
//! ignored. Type rules: integers must be `Int`; floats may be `Int` or
//! `Float` (JSON writes `1e-5` and `0` alike); integer lists must be `Ints`
//! (an empty list may arrive as either list variant); names must be `Str`.

use crate::{AttrValue, Attrs, KernelError};

/// Reads the attributes of one kernel-table entry for kernel `kernel`
/// (`binary@1`).
pub(crate) struct AttrReader<'a> {
    kernel: &'static str,
    attrs: &'a Attrs,
    known: Vec<&'static str>,
}

fn kind(v: &AttrValue) -> &'static str {
    match v {
        AttrValue::Int(_) => "an int",
        AttrValue::Float(_) => "a float",
        AttrValue::Ints(_) => "an int list",
        AttrValue::Floats(_) => "a float list",
        AttrValue::Str(_) => "a string",
    }
}

impl<'a> AttrReader<'a> {
    pub(crate) fn new(kernel: &'static str, attrs: &'a Attrs) -> Self {
        AttrReader {
            kernel,
            attrs,
            known: Vec::new(),
        }
    }

    /// An attribute error for this kernel.
    pub(crate) fn error(&self, message: String) -> KernelError {
        KernelError::Attrs {
            kernel: self.kernel.to_string(),
            message,
        }
    }

    fn get(&mut self, name: &'static str) -> Option<&'a AttrValue> {
        self.known.push(name);
        self.attrs.get(name)
    }

    fn wrong_type(&self, name: &str, expected: &str, got: &AttrValue) -> KernelError {
        self.error(format!(
            "attribute `{name}` must be {expected}, got {} ({got:?})",
            kind(got)
        ))
    }

    /// A required string attribute that must be one of `options`.
    pub(crate) fn choice<T: Copy>(
        &mut self,
        name: &'static str,
        options: &[(&str, T)],
    ) -> Result<T, KernelError> {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        match self.get(name) {
            None => Err(self.error(format!(
                "missing attribute `{name}` (one of: {})",
                names.join(", ")
            ))),
            Some(AttrValue::Str(s)) => options
                .iter()
                .find(|(n, _)| n == s)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    self.error(format!(
                        "attribute `{name}` must be one of: {}; got `{s}`",
                        names.join(", ")
                    ))
                }),
            Some(other) => Err(self.wrong_type(name, "a string", other)),
        }
    }

    /// A required string attribute.
    pub(crate) fn string(&mut self, name: &'static str) -> Result<&'a str, KernelError> {
        match self.get(name) {
            Some(AttrValue::Str(s)) => Ok(s),
            Some(other) => Err(self.wrong_type(name, "a string", other)),
            None => Err(self.error(format!("missing attribute `{name}` (a string)"))),
        }
    }

    /// An optional string attribute.
    pub(crate) fn opt_string(
        &mut self,
        name: &'static str,
    ) -> Result<Option<&'a str>, KernelError> {
        match self.get(name) {
            Some(AttrValue::Str(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(name, "a string", other)),
            None => Ok(None),
        }
    }

    /// An integer attribute; `default` applies when it is absent, and `None`
    /// makes it required.
    pub(crate) fn int(
        &mut self,
        name: &'static str,
        default: Option<i64>,
    ) -> Result<i64, KernelError> {
        match (self.get(name), default) {
            (Some(AttrValue::Int(v)), _) => Ok(*v),
            (Some(other), _) => Err(self.wrong_type(name, "an int", other)),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.error(format!("missing attribute `{name}` (an int)"))),
        }
    }

    /// A 0/1 flag, `default` when absent.
    pub(crate) fn flag(&mut self, name: &'static str, default: bool) -> Result<bool, KernelError> {
        match self.int(name, Some(i64::from(default)))? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.error(format!(
                "attribute `{name}` is a flag and must be 0 or 1, got {v}"
            ))),
        }
    }

    /// A float attribute (given as int or float), `default` when absent.
    pub(crate) fn float(&mut self, name: &'static str, default: f64) -> Result<f64, KernelError> {
        match self.get(name) {
            None => Ok(default),
            Some(AttrValue::Float(v)) => Ok(*v),
            // Exact for the magnitudes attributes use; larger ints round,
            // which is what any JSON reader would do too.
            Some(AttrValue::Int(v)) => Ok(*v as f64),
            Some(other) => Err(self.wrong_type(name, "a number", other)),
        }
    }

    /// An integer list attribute; `default` applies when it is absent, and
    /// `None` makes it required.
    pub(crate) fn ints(
        &mut self,
        name: &'static str,
        default: Option<Vec<i64>>,
    ) -> Result<Vec<i64>, KernelError> {
        match (self.get(name), default) {
            (Some(AttrValue::Ints(v)), _) => Ok(v.clone()),
            (Some(AttrValue::Floats(v)), _) if v.is_empty() => Ok(Vec::new()),
            (Some(other), _) => Err(self.wrong_type(name, "an int list", other)),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.error(format!("missing attribute `{name}` (an int list)"))),
        }
    }

    /// A float list attribute (each entry given as int or float); `default`
    /// applies when it is absent.
    pub(crate) fn floats(
        &mut self,
        name: &'static str,
        default: Vec<f64>,
    ) -> Result<Vec<f64>, KernelError> {
        match self.get(name) {
            None => Ok(default),
            Some(AttrValue::Floats(v)) => Ok(v.clone()),
            // Integer-valued lists (`[2, 2]`) read back from JSON as ints.
            Some(AttrValue::Ints(v)) => Ok(v.iter().map(|&x| x as f64).collect()),
            Some(other) => Err(self.wrong_type(name, "a float list", other)),
        }
    }

    /// Refuses every attribute that was not read.
    pub(crate) fn finish(self) -> Result<(), KernelError> {
        let unknown: Vec<&str> = self
            .attrs
            .keys()
            .map(String::as_str)
            .filter(|k| !self.known.contains(k))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let accepted = if self.known.is_empty() {
            "none".to_string()
        } else {
            self.known.join(", ")
        };
        let names: Vec<String> = unknown.iter().map(|k| format!("`{k}`")).collect();
        Err(self.error(format!(
            "unknown attribute {} ({} accepts: {accepted})",
            names.join(", "),
            self.kernel
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, AttrValue)]) -> Attrs {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn reads_each_type_and_refuses_unknown_names() {
        let a = attrs(&[
            ("op", AttrValue::Str("add".into())),
            ("n", AttrValue::Int(3)),
            ("eps", AttrValue::Int(0)),
            ("axes", AttrValue::Ints(vec![1, -1])),
            ("typo", AttrValue::Int(1)),
        ]);
        let mut r = AttrReader::new("demo@1", &a);
        assert_eq!(r.choice("op", &[("add", 1), ("sub", 2)]).unwrap(), 1);
        assert_eq!(r.int("n", None).unwrap(), 3);
        assert_eq!(r.float("eps", 1.0).unwrap(), 0.0);
        assert_eq!(r.ints("axes", None).unwrap(), vec![1, -1]);
        assert!(!r.flag("keepdims", false).unwrap());
        let err = r.finish().unwrap_err();
        assert_eq!(
            err,
            KernelError::Attrs {
                kernel: "demo@1".into(),
                message: "unknown attribute `typo` (demo@1 accepts: op, n, eps, axes, keepdims)"
                    .into()
            }
        );
    }

    #[test]
    fn refuses_wrong_types_and_values() {
        let a = attrs(&[
            ("op", AttrValue::Int(1)),
            ("n", AttrValue::Float(1.0)),
            ("flag", AttrValue::Int(2)),
            ("list", AttrValue::Floats(vec![1.0])),
            ("eps", AttrValue::Str("x".into())),
        ]);
        let mut r = AttrReader::new("demo@1", &a);
        let msg = |e: KernelError| e.to_string();
        assert!(msg(r.choice("op", &[("add", ())]).unwrap_err())
            .contains("attribute `op` must be a string, got an int"));
        assert!(msg(r.int("n", None).unwrap_err()).contains("must be an int, got a float"));
        assert!(msg(r.flag("flag", false).unwrap_err()).contains("must be 0 or 1, got 2"));
        assert!(msg(r.ints("list", None).unwrap_err())
            .contains("must be an int list, got a float list"));
        assert!(msg(r.float("eps", 0.0).unwrap_err()).contains("must be a number, got a string"));
        assert!(msg(r.int("missing", None).unwrap_err()).contains("missing attribute `missing`"));
        r.finish().unwrap();
    }

    #[test]
    fn empty_float_list_is_an_empty_int_list() {
        let a = attrs(&[("axes", AttrValue::Floats(vec![]))]);
        let mut r = AttrReader::new("demo@1", &a);
        assert_eq!(r.ints("axes", None).unwrap(), Vec::<i64>::new());
        r.finish().unwrap();
    }

    #[test]
    fn choice_names_the_options() {
        let a = attrs(&[("op", AttrValue::Str("mod".into()))]);
        let mut r = AttrReader::new("demo@1", &a);
        let err = r.choice("op", &[("add", ()), ("sub", ())]).unwrap_err();
        assert!(
            err.to_string()
                .contains("attribute `op` must be one of: add, sub; got `mod`"),
            "{err}"
        );
    }
}
