//! Configuration: TOML layers plus `a.b.c=value` overrides, deserialized into a typed config
//! with **every** problem reported at once, each with its dotted path and the value received.
//!
//! serde stops at the first error, so [`check`] loops: on a type error at path `p` it records
//! the problem, removes `p` (the field falls back to its default) and tries again, at most
//! [`MAX_TYPE_ERRORS`] times. Unknown keys are collected with `serde_ignored` once the rest
//! deserializes, and the semantic rules of [`Validate`] run on what is left, so malformed
//! overrides, unknown keys, type errors and bad values all come in one report. Config structs
//! therefore use `#[serde(default)]` and must *not* use `deny_unknown_fields`.
//!
//! Errors quote what they received, cut to [`MAX_QUOTE_CHARS`]: a 10 MB string value makes a
//! one-line problem, not 10 MB of stderr.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::Path;

/// The largest config file read: 4 MiB, about a thousand times a real config, so a wrong path
/// (`/dev/zero`, a dataset) fails at once instead of filling memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Longest key or value quoted in an issue; longer ones are cut with `…` and their length.
pub const MAX_QUOTE_CHARS: usize = 80;

/// Type errors collected before giving up: each one costs a full deserialization.
pub const MAX_TYPE_ERRORS: usize = 64;

/// Issues a [`ConfigError`] prints; the rest are counted (`--json` still lists all).
pub const MAX_SHOWN_ISSUES: usize = 100;

/// Longest message line kept (a TOML syntax error quotes the offending line).
const MAX_MESSAGE_LINE_CHARS: usize = 200;

/// `text` cut to `max` characters, with `…` and the full length when it was longer.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}… ({} chars)", &text[..end], text.chars().count()),
    }
}

/// Every line of `text` cut to [`MAX_MESSAGE_LINE_CHARS`].
fn clip_lines(text: &str) -> String {
    text.lines()
        .map(|l| clip(l, MAX_MESSAGE_LINE_CHARS))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigIssue {
    /// Dotted path of the key (`optimizer.lr`).
    pub path: String,
    /// The value received, rendered as TOML, when there was one.
    pub value: Option<String>,
    pub message: String,
}

impl ConfigIssue {
    /// A problem; path and value are cut to [`MAX_QUOTE_CHARS`], message lines to 200.
    pub fn new(path: impl Into<String>, value: Option<String>, message: impl Into<String>) -> Self {
        Self {
            path: clip(&path.into(), MAX_QUOTE_CHARS),
            value: value.map(|v| clip(&v, MAX_QUOTE_CHARS)),
            message: clip_lines(&message.into()),
        }
    }

    /// A semantic problem with a value (for [`Validate`] implementations).
    pub fn invalid(path: &str, value: impl fmt::Display, message: impl Into<String>) -> Self {
        Self::new(path, Some(value.to_string()), message)
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{} = {}: {}", self.path, v, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// All problems found in a configuration.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// Where the config came from (a file path, or "overrides").
    pub source_name: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(
            f,
            "invalid configuration {} ({n} problem{})",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for issue in self.issues.iter().take(MAX_SHOWN_ISSUES) {
            write!(f, "\n  {issue}")?;
        }
        if n > MAX_SHOWN_ISSUES {
            write!(f, "\n  … and {} more", n - MAX_SHOWN_ISSUES)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Semantic validation after deserialization. Push one issue per problem, with full paths.
pub trait Validate {
    fn validate(&self, issues: &mut Vec<ConfigIssue>);
}

/// Parses TOML text into a table; a syntax error is one issue naming line and column.
pub fn parse_toml(text: &str, source_name: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError {
        source_name: source_name.to_string(),
        issues: vec![ConfigIssue::new(
            "<file>",
            None,
            format!("TOML syntax error: {e}"),
        )],
    })
}

/// Reads and parses a TOML file: a regular file of at most [`MAX_CONFIG_BYTES`], in UTF-8.
pub fn read_toml_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let name = path.display().to_string();
    let fail = |message: String| ConfigError {
        source_name: name.clone(),
        issues: vec![ConfigIssue::new("<file>", None, message)],
    };
    let bytes = crate::fsutil::read_regular_capped(path, MAX_CONFIG_BYTES).map_err(|e| {
        use std::io::ErrorKind::{InvalidData, InvalidInput};
        // The refusals of read_regular_capped say what the file is; others are OS errors.
        fail(match e.kind() {
            InvalidInput | InvalidData => e.to_string(),
            _ => format!("cannot read: {e}"),
        })
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "cannot read: not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse_toml(&text, &name)
}

/// The leaves of a TOML table as dotted keys (`a.b.c`), in the table's order: what trackers log
/// as a run's parameters and `codex compare` diffs. With `split_arrays`, a non-empty array's items
/// become keys of their own (`a.0`, `a.1`); otherwise an array is one leaf.
pub fn leaves(table: &toml::Table, split_arrays: bool) -> Vec<(String, &toml::Value)> {
    fn walk<'a>(
        prefix: &str,
        v: &'a toml::Value,
        split: bool,
        out: &mut Vec<(String, &'a toml::Value)>,
    ) {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match v {
            toml::Value::Table(t) => t.iter().for_each(|(k, v)| walk(&key(k), v, split, out)),
            toml::Value::Array(items) if split && !items.is_empty() => items
                .iter()
                .enumerate()
                .for_each(|(i, v)| walk(&key(&i.to_string()), v, split, out)),
            leaf => out.push((prefix.to_string(), leaf)),
        }
    }
    let mut out = Vec::new();
    table
        .iter()
        .for_each(|(k, v)| walk(k, v, split_arrays, &mut out));
    out
}

/// Deep-merges `top` into `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Parses one `a.b.c=value` override. The value is read as a TOML value when it is one
/// (`3`, `1e-3`, `true`, `[1, 2]`, `"quoted"`), and as a bare string otherwise (`adamw`).
pub fn parse_override(text: &str) -> Result<(Vec<String>, toml::Value), ConfigIssue> {
    let Some((key, raw)) = text.split_once('=') else {
        return Err(ConfigIssue::new(
            text,
            None,
            "an override must look like `section.key=value`",
        ));
    };
    let key = key.trim();
    let segments: Vec<String> = key.split('.').map(|s| s.trim().to_string()).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ConfigIssue::new(
            key,
            Some(raw.to_string()),
            "empty key segment in override",
        ));
    }
    let raw = raw.trim();
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    Ok((segments, value))
}

/// Applies overrides to `table` in order; problems (malformed overrides, a path through a
/// non-table) are returned, all of them.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    for text in overrides {
        match parse_override(text) {
            Ok((segments, value)) => {
                if let Err(issue) = set_path(table, &segments, value) {
                    issues.push(issue);
                }
            }
            Err(issue) => issues.push(issue),
        }
    }
    issues
}

fn set_path(
    table: &mut toml::Table,
    segments: &[String],
    value: toml::Value,
) -> Result<(), ConfigIssue> {
    let (last, parents) = segments.split_last().expect("non-empty override path");
    let mut cur = table;
    for (i, seg) in parents.iter().enumerate() {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => cur = t,
            other => {
                return Err(ConfigIssue::new(
                    segments[..=i].join("."),
                    Some(other.to_string()),
                    "is not a table, so it has no sub-keys",
                ));
            }
        }
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// Deserializes `table` into `T`, reporting every type error, unknown key and semantic
/// problem at once.
pub fn load<T>(table: toml::Table, source_name: &str) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default + Validate,
{
    let (parsed, issues) = check::<T>(table, &[]);
    finish(parsed, issues, source_name)
}

/// `Ok(parsed)` when there are no issues, else every issue under `source_name`.
pub fn finish<T>(
    parsed: Option<T>,
    issues: Vec<ConfigIssue>,
    source_name: &str,
) -> Result<T, ConfigError> {
    match parsed {
        Some(v) if issues.is_empty() => Ok(v),
        _ => Err(ConfigError {
            source_name: source_name.to_string(),
            issues,
        }),
    }
}

/// Everything wrong with `table` as a `T`: type errors, unknown keys (with a did-you-mean from
/// `aliases` or from the key names) and [`Validate`] problems, together. Returns the config
/// with defaults in place of unusable values, to run further checks on; `None` when it could
/// not be built. `aliases` maps keys of other tools to ours, `(from, to)`: a dotted `from`
/// matches that key and the keys under it (`lora` → `model.lora` covers `lora.r`); a plain
/// name also matches that leaf in any section (`learning_rate` → `optimizer.lr`).
pub fn check<T>(table: toml::Table, aliases: &[(&str, &str)]) -> (Option<T>, Vec<ConfigIssue>)
where
    T: DeserializeOwned + Serialize + Default + Validate,
{
    let mut table = table;
    let mut issues = Vec::new();
    let parsed: T = loop {
        let value = toml::Value::Table(table.clone());
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => break v,
            Err(err) => {
                let segments = path_segments(err.path());
                let path = display_path(&segments);
                let received = get_path(&table, &segments).map(|v| v.to_string());
                issues.push(ConfigIssue::new(
                    path,
                    received,
                    clean_message(&err.inner().to_string()),
                ));
                if issues.len() >= MAX_TYPE_ERRORS {
                    issues.push(ConfigIssue::new(
                        "<file>",
                        None,
                        format!("stopped after {MAX_TYPE_ERRORS} type errors; fix these first"),
                    ));
                    return (None, issues);
                }
                if segments.is_empty() || !remove_path(&mut table, &segments) {
                    // Nothing left to strip: report what we have.
                    return (None, issues);
                }
            }
        }
    };
    // Unknown keys (the table now deserializes, so this pass sees all of them).
    let defaults = toml::Value::try_from(T::default()).ok();
    let mut unknown = Vec::new();
    let _: Result<T, _> = serde_ignored::deserialize(toml::Value::Table(table.clone()), |p| {
        unknown.push(p.to_string());
    });
    for path in unknown {
        let segments: Vec<String> = path.split('.').map(str::to_string).collect();
        let received = get_path(&table, &segments).map(|v| v.to_string());
        let mut message = "unknown key".to_string();
        let suggestion = alias_for(aliases, &path)
            .or_else(|| suggest(defaults.as_ref(), &segments).map(str::to_string));
        if let Some(suggestion) = suggestion {
            message.push_str(&format!(" (did you mean `{suggestion}`?)"));
        }
        issues.push(ConfigIssue::new(path, received, message));
    }
    // Values: a field whose value was already reported holds its default now, so a rule
    // about it (or a combination with it) would only repeat that report.
    let mut semantic = Vec::new();
    parsed.validate(&mut semantic);
    push_new(&mut issues, semantic);
    (Some(parsed), issues)
}

/// Appends the issues of `more` whose path has no issue yet.
pub fn push_new(issues: &mut Vec<ConfigIssue>, more: Vec<ConfigIssue>) {
    for issue in more {
        if !issues.iter().any(|i| i.path == issue.path) {
            issues.push(issue);
        }
    }
}

/// What `aliases` (see [`check`]) suggest for the unknown key `path`.
fn alias_for(aliases: &[(&str, &str)], path: &str) -> Option<String> {
    let under = |from: &str| {
        if path == from {
            Some(String::new())
        } else {
            path.strip_prefix(from)
                .and_then(|rest| rest.strip_prefix('.'))
                .map(|rest| format!(".{rest}"))
        }
    };
    aliases
        .iter()
        .find_map(|(from, to)| under(from).map(|rest| format!("{to}{rest}")))
        .or_else(|| {
            let leaf = path.rsplit('.').next()?;
            aliases
                .iter()
                .find(|(from, _)| !from.contains('.') && *from == leaf)
                .map(|(_, to)| to.to_string())
        })
}

/// Serializes a config back to TOML (for `config show` and the run's `config.toml`).
pub fn to_toml_string<T: Serialize>(config: &T) -> Result<String, toml::ser::Error> {
    toml::to_string_pretty(config)
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(key.clone()),
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect()
}

fn display_path(segments: &[String]) -> String {
    if segments.is_empty() {
        "<root>".to_string()
    } else {
        segments.join(".")
    }
}

fn clean_message(msg: &str) -> String {
    // toml's messages sometimes span lines; keep one line per issue.
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn get_path<'a>(table: &'a toml::Table, segments: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = segments.split_first()?;
    let mut cur = table.get(first)?;
    for seg in rest {
        cur = match cur {
            toml::Value::Table(t) => t.get(seg)?,
            toml::Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove_path(table: &mut toml::Table, segments: &[String]) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return table.remove(first).is_some();
    }
    match table.get_mut(first) {
        Some(toml::Value::Table(t)) => remove_path(t, rest),
        // An element of an array or something deeper: drop the whole value.
        Some(_) => table.remove(first).is_some(),
        None => false,
    }
}

fn suggest<'a>(defaults: Option<&'a toml::Value>, segments: &[String]) -> Option<&'a str> {
    let (last, parents) = segments.split_last()?;
    let mut cur = defaults?;
    for seg in parents {
        cur = cur.as_table()?.get(seg)?;
    }
    closest(last, cur.as_table()?.keys().map(String::as_str))
}

/// The candidate nearest to `word` by edit distance, when it is near enough to be a typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|k| (strsim::levenshtein(k, word), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn leaves_are_dotted_keys_in_order_with_arrays_split_on_request() {
        let t: toml::Table = "a = 1\n[b]\nc = \"x\"\nd = [1, 2]\ne = []\n[b.f]\ng = true\n"
            .parse()
            .unwrap();
        let keys = |split| -> Vec<(String, String)> {
            leaves(&t, split)
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect()
        };
        let pairs = |xs: &[(&str, &str)]| -> Vec<(String, String)> {
            xs.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            keys(false),
            pairs(&[
                ("a", "1"),
                ("b.c", "\"x\""),
                ("b.d", "[1, 2]"),
                ("b.e", "[]"),
                ("b.f.g", "true")
            ])
        );
        assert_eq!(
            keys(true),
            pairs(&[
                ("a", "1"),
                ("b.c", "\"x\""),
                ("b.d.0", "1"),
                ("b.d.1", "2"),
                ("b.e", "[]"),
                ("b.f.g", "true")
            ])
        );
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Opt {
        lr: f64,
        name: Kind,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        #[default]
        Adamw,
        Sgd,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Cfg {
        steps: u64,
        optimizer: Opt,
    }

    impl Validate for Cfg {
        fn validate(&self, issues: &mut Vec<ConfigIssue>) {
            if self.optimizer.lr < 0.0 {
                issues.push(ConfigIssue::invalid(
                    "optimizer.lr",
                    self.optimizer.lr,
                    "must be >= 0",
                ));
            }
        }
    }

    fn table(text: &str) -> toml::Table {
        parse_toml(text, "test").unwrap()
    }

    #[test]
    fn all_problems_reported_at_once() {
        let t = table(
            "steps = \"many\"\nstepz = 3\n[optimizer]\nlr = \"fast\"\nname = \"adamx\"\nlrr = 1\n",
        );
        let err = load::<Cfg>(t, "test").unwrap_err();
        let paths: Vec<_> = err.issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths.len(), 5, "{err}");
        for p in [
            "steps",
            "stepz",
            "optimizer.lr",
            "optimizer.name",
            "optimizer.lrr",
        ] {
            assert!(paths.contains(&p), "missing {p} in {err}");
        }
        let lr = err
            .issues
            .iter()
            .find(|i| i.path == "optimizer.lr")
            .unwrap();
        assert_eq!(lr.value.as_deref(), Some("\"fast\""));
        let typo = err
            .issues
            .iter()
            .find(|i| i.path == "optimizer.lrr")
            .unwrap();
        assert!(
            typo.message.contains("did you mean `lr`"),
            "{}",
            typo.message
        );
    }

    #[test]
    fn overrides_parse_typed_values() {
        let mut t = table("[optimizer]\nlr = 0.1\n");
        let issues = apply_overrides(
            &mut t,
            &[
                "optimizer.lr=3e-4".into(),
                "optimizer.name=sgd".into(),
                "steps=7".into(),
            ],
        );
        assert!(issues.is_empty());
        let cfg: Cfg = load(t, "test").unwrap();
        assert_eq!(
            cfg,
            Cfg {
                steps: 7,
                optimizer: Opt {
                    lr: 3e-4,
                    name: Kind::Sgd
                }
            }
        );
    }

    #[test]
    fn malformed_override_and_semantic_rule() {
        let mut t = toml::Table::new();
        let issues = apply_overrides(&mut t, &["nonsense".into(), "steps.x=1".into()]);
        assert_eq!(issues.len(), 1);
        let issues2 = apply_overrides(&mut t, &["steps.x=1".into()]);
        assert!(issues2.is_empty()); // steps became a table; load reports it.
        let mut t = toml::Table::new();
        apply_overrides(&mut t, &["optimizer.lr=-1".into()]);
        let err = load::<Cfg>(t, "x").unwrap_err();
        assert_eq!(err.issues[0].path, "optimizer.lr");
        assert!(err.to_string().contains("must be >= 0"));
    }

    #[test]
    fn merge_is_deep() {
        let mut base = table("a = 1\n[t]\nx = 1\ny = 2\n");
        merge(&mut base, table("[t]\ny = 3\n"));
        assert_eq!(base["t"]["x"].as_integer(), Some(1));
        assert_eq!(base["t"]["y"].as_integer(), Some(3));
    }

    #[test]
    fn clip_cuts_on_char_boundaries_and_says_how_long() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc… (4 chars)");
        assert_eq!(clip("ééé", 1), "é… (3 chars)");
        let issue = ConfigIssue::new("k".repeat(500), Some("v".repeat(10_000)), "m");
        assert!(issue.to_string().len() < 250, "{issue}");
    }

    #[test]
    fn values_are_checked_alongside_unknown_keys_and_type_errors() {
        let t = table("steps = \"many\"\nstepz = 3\n[optimizer]\nlr = -1.0\n");
        let (cfg, issues) = check::<Cfg>(t, &[]);
        assert!(cfg.is_some());
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["steps", "stepz", "optimizer.lr"]);
        // A value already reported as a type error is not reported again by a rule.
        let t = table("[optimizer]\nlr = \"fast\"\n");
        let err = load::<Cfg>(t, "t").unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
    }

    #[test]
    fn aliases_suggest_our_key_for_a_foreign_one() {
        let aliases = [("learning_rate", "optimizer.lr"), ("lora", "model.lora")];
        assert_eq!(
            alias_for(&aliases, "training.learning_rate").as_deref(),
            Some("optimizer.lr")
        );
        assert_eq!(alias_for(&aliases, "lora").as_deref(), Some("model.lora"));
        assert_eq!(
            alias_for(&aliases, "lora.r").as_deref(),
            Some("model.lora.r")
        );
        assert_eq!(alias_for(&aliases, "training.lr"), None);
        let t = table("[optimizer]\nlearning_rate = 1\n");
        let (_, issues) = check::<Cfg>(t, &aliases);
        assert!(
            issues[0].message.contains("did you mean `optimizer.lr`?"),
            "{issues:?}"
        );
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Many {
        m: std::collections::BTreeMap<String, u64>,
    }

    impl Validate for Many {
        fn validate(&self, _: &mut Vec<ConfigIssue>) {}
    }

    #[test]
    fn type_errors_are_collected_up_to_a_bound() {
        let mut text = "[m]\n".to_string();
        for i in 0..500 {
            text.push_str(&format!("k{i} = \"x\"\n"));
        }
        let err = load::<Many>(table(&text), "t").unwrap_err();
        assert_eq!(err.issues.len(), MAX_TYPE_ERRORS + 1);
        assert!(err.issues.last().unwrap().message.contains("stopped after"));
        let shown = err.to_string();
        assert!(!shown.contains("more"), "{shown}");
    }

    #[test]
    fn display_lists_a_bounded_number_of_issues() {
        let err = ConfigError {
            source_name: "t".into(),
            issues: (0..250)
                .map(|i| ConfigIssue::new(format!("k{i}"), None, "unknown key"))
                .collect(),
        };
        let shown = err.to_string();
        assert_eq!(shown.lines().count(), 1 + MAX_SHOWN_ISSUES + 1);
        assert!(shown.ends_with("… and 150 more"), "{shown}");
    }
}
