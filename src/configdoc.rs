//! `docs/config.md`: every training-config key with its type, default and meaning, generated
//! from the config types themselves: the keys, types and meanings from their definitions
//! (doc comments, parsed with `syn`), the defaults from `TrainConfig::default()`. A test fails
//! when the checked-in file differs.

use std::collections::BTreeMap;
use std::path::Path;

/// The sources that define the config types.
const SOURCES: &[&str] = &[
    "crates/codex-train/src/config.rs",
    "crates/codex-safety/src/train.rs",
    "crates/codex-core/src/mode.rs",
    "crates/codex-checkpoint/src/retention.rs",
];

struct Field {
    name: String,
    ty: syn::Type,
    doc: String,
}

struct Struct {
    doc: String,
    fields: Vec<Field>,
}

struct Enum {
    doc: String,
    /// The names written in a config; empty for an untagged enum.
    values: Vec<String>,
}

#[derive(Default)]
struct Types {
    structs: BTreeMap<String, Struct>,
    enums: BTreeMap<String, Enum>,
    /// `use a::B as C`: C → B.
    aliases: BTreeMap<String, String>,
}

fn collect_renames(tree: &syn::UseTree, out: &mut BTreeMap<String, String>) {
    match tree {
        syn::UseTree::Path(p) => collect_renames(&p.tree, out),
        syn::UseTree::Rename(r) => {
            out.insert(r.rename.to_string(), r.ident.to_string());
        }
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| collect_renames(t, out)),
        _ => {}
    }
}

fn doc_of(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for a in attrs {
        if let syn::Meta::NameValue(nv) = &a.meta
            && nv.path.is_ident("doc")
            && let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
        {
            lines.push(s.value().trim().to_string());
        }
    }
    lines.join(" ").trim().to_string()
}

/// The value of `#[serde(NAME = "…")]`, if any.
fn serde_str(attrs: &[syn::Attribute], name: &str) -> Option<String> {
    let mut found = None;
    for a in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = a.parse_nested_meta(|m| {
            if m.path.is_ident(name) {
                let s: syn::LitStr = m.value()?.parse()?;
                found = Some(s.value());
            } else if m.input.peek(syn::Token![=]) {
                let _: syn::Expr = m.value()?.parse()?;
            }
            Ok(())
        });
    }
    found
}

fn serde_flag(attrs: &[syn::Attribute], name: &str) -> bool {
    let mut found = false;
    for a in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = a.parse_nested_meta(|m| {
            if m.path.is_ident(name) {
                found = true;
            } else if m.input.peek(syn::Token![=]) {
                let _: syn::Expr = m.value()?.parse()?;
            }
            Ok(())
        });
    }
    found
}

fn rename(ident: &str, rule: Option<&str>) -> String {
    let snake = || {
        let mut s = String::new();
        for (i, c) in ident.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                s.push('_');
            }
            s.extend(c.to_lowercase());
        }
        s
    };
    match rule {
        Some("lowercase") => ident.to_lowercase(),
        Some("snake_case") => snake(),
        Some("kebab-case") => snake().replace('_', "-"),
        _ => ident.to_string(),
    }
}

fn parse(root: &Path) -> Types {
    let mut types = Types::default();
    for src in SOURCES {
        let text = std::fs::read_to_string(root.join(src)).unwrap();
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{src}: {e}"));
        for item in file.items {
            match item {
                syn::Item::Use(u) => collect_renames(&u.tree, &mut types.aliases),
                syn::Item::Struct(s) => {
                    let syn::Fields::Named(named) = &s.fields else {
                        continue;
                    };
                    let fields = named
                        .named
                        .iter()
                        .filter(|f| matches!(f.vis, syn::Visibility::Public(_)))
                        .filter(|f| !serde_flag(&f.attrs, "skip"))
                        .map(|f| Field {
                            name: serde_str(&f.attrs, "rename")
                                .unwrap_or_else(|| f.ident.as_ref().expect("named").to_string()),
                            ty: f.ty.clone(),
                            doc: doc_of(&f.attrs),
                        })
                        .collect();
                    types.structs.insert(
                        s.ident.to_string(),
                        Struct {
                            doc: doc_of(&s.attrs),
                            fields,
                        },
                    );
                }
                syn::Item::Enum(e) => {
                    let rule = serde_str(&e.attrs, "rename_all");
                    let values = if serde_flag(&e.attrs, "untagged") {
                        Vec::new()
                    } else {
                        e.variants
                            .iter()
                            .map(|v| {
                                serde_str(&v.attrs, "rename").unwrap_or_else(|| {
                                    rename(&v.ident.to_string(), rule.as_deref())
                                })
                            })
                            .collect()
                    };
                    types.enums.insert(
                        e.ident.to_string(),
                        Enum {
                            doc: doc_of(&e.attrs),
                            values,
                        },
                    );
                }
                _ => {}
            }
        }
    }
    types
}

/// The last segment of a type path and its generic arguments.
fn segments(ty: &syn::Type) -> Option<(String, Vec<syn::Type>)> {
    let syn::Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    let args = match &last.arguments {
        syn::PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|g| match g {
                syn::GenericArgument::Type(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some((last.ident.to_string(), args))
}

impl Types {
    /// The defining name of a type named through a `use … as` alias.
    fn resolve(&self, name: String) -> String {
        self.aliases.get(&name).cloned().unwrap_or(name)
    }
}

fn type_name(types: &Types, ty: &syn::Type) -> String {
    let Some((name, args)) = segments(ty) else {
        return "?".into();
    };
    let name = types.resolve(name);
    match name.as_str() {
        "String" | "PathBuf" => "string".into(),
        "bool" => "boolean".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "integer".into(),
        "f32" | "f64" => "float".into(),
        "Vec" => format!(
            "array of {}",
            args.first().map_or("?".into(), |t| type_name(types, t))
        ),
        "Option" => args.first().map_or("?".into(), |t| type_name(types, t)),
        "BTreeMap" | "HashMap" => format!(
            "table of {}",
            args.get(1).map_or("?".into(), |t| type_name(types, t))
        ),
        other => match types.enums.get(other) {
            Some(e) if !e.values.is_empty() => e
                .values
                .iter()
                .map(|v| format!("`\"{v}\"`"))
                .collect::<Vec<_>>()
                .join(" \\| "),
            _ => other.to_string(),
        },
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn default_text(v: Option<&toml::Value>) -> String {
    match v {
        None => "(none)".into(),
        Some(toml::Value::Table(t)) if t.is_empty() => "`{}`".into(),
        Some(v) => format!("`{}`", v.to_string().replace('|', "\\|")),
    }
}

fn section(
    types: &Types,
    path: &str,
    type_name_: &str,
    defaults: Option<&toml::Value>,
    out: &mut String,
    missing: &mut Vec<String>,
) {
    let s = &types.structs[type_name_];
    let mut nested = Vec::new();
    out.push_str(&format!("\n## `[{path}]`\n\n"));
    if !s.doc.is_empty() {
        out.push_str(&format!("{}\n\n", s.doc));
    }
    out.push_str("| Key | Type | Default | Meaning |\n|---|---|---|---|\n");
    for f in &s.fields {
        let key = format!("{path}.{}", f.name);
        let default = defaults.and_then(|d| d.get(&f.name));
        let inner = types.resolve(segments(&f.ty).map(|(n, _)| n).unwrap_or_default());
        if types.structs.contains_key(&inner) {
            nested.push((key, inner, default));
            continue;
        }
        let mut doc = f.doc.clone();
        if doc.is_empty() {
            doc = types
                .enums
                .get(&inner)
                .map(|e| e.doc.clone())
                .unwrap_or_default();
        }
        if doc.is_empty() {
            missing.push(key.clone());
        }
        out.push_str(&format!(
            "| `{key}` | {} | {} | {} |\n",
            type_name(types, &f.ty),
            default_text(default),
            cell(&doc)
        ));
    }
    for (key, inner, default) in nested {
        section(types, &key, &inner, default, out, missing);
    }
}

/// The reference, and the keys without a meaning.
pub fn config_markdown() -> (String, Vec<String>) {
    use codex_train::config::{DistributedSection, TrackingSection, TrainConfig};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let types = parse(root);
    let mut defaults = toml::Value::try_from(TrainConfig::default()).expect("serializable");
    // Sections left out of a written config while they are at their defaults.
    let table = defaults.as_table_mut().expect("a table");
    table.insert(
        "tracking".into(),
        toml::Value::try_from(TrackingSection::default()).expect("serializable"),
    );
    table.insert(
        "distributed".into(),
        toml::Value::try_from(DistributedSection::default()).expect("serializable"),
    );
    let mut out = String::from(
        "# Training configuration reference\n\n\
         Every key of a training config (`codex train -c FILE`, `--set KEY=VALUE`), with its \
         type, default and meaning. Generated from the config types (`src/configdoc.rs` reads \
         their definitions and `TrainConfig::default()`); do not edit by hand. \
         `CODEX_UPDATE_DOCS=1 cargo test --bin codex docs_` rewrites it.\n",
    );
    let mut missing = Vec::new();
    let top = &types.structs["TrainConfig"];
    for f in &top.fields {
        let inner = types.resolve(segments(&f.ty).map(|(n, _)| n).unwrap_or_default());
        section(
            &types,
            &f.name,
            &inner,
            defaults.get(&f.name),
            &mut out,
            &mut missing,
        );
    }
    (out, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_config_md_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md");
        let (now, _) = config_markdown();
        if std::env::var_os("CODEX_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &now).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == now,
            "docs/config.md is stale; regenerate it with `CODEX_UPDATE_DOCS=1 cargo test --bin codex docs_`"
        );
    }

    #[test]
    fn every_config_key_has_a_meaning_and_a_default() {
        let (md, missing) = config_markdown();
        assert!(
            missing.is_empty(),
            "config keys without a doc comment: {missing:?}"
        );
        for key in [
            "`training.steps`",
            "`optimizer.lr`",
            "`model.lora.r`",
            "`safety.on_block`",
        ] {
            assert!(md.contains(key), "{key} missing");
        }
        assert!(!md.contains("(none)"), "a key without a default:\n{md}");
    }
}
