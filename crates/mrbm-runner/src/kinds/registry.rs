//! Every stage kind the `mrbm` binary knows, by name. What a kind does and
//! what its parameters mean come from the kind itself (`Stage::about`,
//! `Stage::param_docs`).

use std::collections::BTreeMap;

use mrbm_stage::{JsonValue, ParamDoc, Stage};

pub struct Registry {
    stages: BTreeMap<&'static str, Box<dyn Stage>>,
    /// The crate each kind comes from (`mrbm kinds`).
    origins: BTreeMap<&'static str, &'static str>,
}

impl Registry {
    /// The built-in kinds: data (dataset, transform), model (train, sample,
    /// reconstruct, features), evaluation (svm, fid_stats, fid) and table.
    pub fn builtin() -> Registry {
        let mut all: Vec<(&'static str, Box<dyn Stage>)> = Vec::new();
        all.extend(mrbm_data::stages().into_iter().map(|s| ("mrbm-data", s)));
        all.extend(mrbm_core::stages().into_iter().map(|s| ("mrbm-core", s)));
        all.extend(mrbm_eval::stages().into_iter().map(|s| ("mrbm-eval", s)));
        all.extend(mrbm_dcim::stages().into_iter().map(|s| ("mrbm-dcim", s)));
        all.push(("mrbm-runner", Box::new(crate::kinds::table::TableStage)));
        all.push(("mrbm-runner", Box::new(crate::kinds::collect::CollectStage)));
        all.push(("mrbm-runner", Box::new(crate::kinds::command::CommandStage)));
        let mut reg = Registry::from_stages(Vec::new());
        for (origin, s) in all {
            reg.origins.insert(s.kind(), origin);
            reg.stages.insert(s.kind(), s);
        }
        reg
    }

    pub fn from_stages(list: Vec<Box<dyn Stage>>) -> Registry {
        Registry {
            stages: list.into_iter().map(|s| (s.kind(), s)).collect(),
            origins: BTreeMap::new(),
        }
    }

    pub fn get(&self, kind: &str) -> Option<&dyn Stage> {
        self.stages.get(kind).map(|b| b.as_ref())
    }

    /// Kinds a user may write in a pipeline (the table kind is implicit).
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.stages.keys().copied().filter(|k| *k != "table")
    }

    /// The crate a kind comes from, when known.
    pub fn origin(&self, kind: &str) -> Option<&'static str> {
        self.origins.get(kind).copied()
    }

    /// What a kind does, in one line.
    pub fn about(&self, kind: &str) -> &'static str {
        self.get(kind).map_or("", |s| s.about())
    }

    /// `mrbm kinds`: each kind with its crate, one line, and its inputs.
    pub fn describe_kinds(&self) -> String {
        let mut s = String::new();
        for kind in self.kinds() {
            let stage = self.get(kind).expect("listed");
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(&format!(
                "{kind} ({}, version {}): {}\n",
                self.origin(kind).unwrap_or("plugin"),
                stage.version(),
                self.about(kind)
            ));
            let w = stage
                .inputs()
                .iter()
                .map(|i| i.name.len())
                .max()
                .unwrap_or(0);
            if stage.inputs().is_empty() {
                s.push_str("  no inputs\n");
            }
            for i in stage.inputs() {
                let file = i
                    .default_file
                    .map(|f| format!(" [default file {f}]"))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "  {:<w$}  {:<8}  {}{file}\n",
                    i.name,
                    if i.required { "required" } else { "optional" },
                    i.doc,
                ));
            }
        }
        s
    }

    /// `mrbm params KIND`: the parameters with their defaults, from the
    /// kind's own parameter struct (the canonical form of an empty table).
    /// Parameters without a default are found by trying values until the
    /// struct accepts them, and listed as required with the type expected.
    pub fn describe_params(&self, kind: &str) -> Option<String> {
        let stage = self.get(kind)?;
        let docs = stage.param_docs();
        let param_doc = |p: &str| docs.iter().find(|d| d.name == p);
        let mut raw = toml::Table::new();
        let mut required: Vec<(String, String)> = Vec::new();
        let mut problem = None;
        let canon = loop {
            match stage.params(&raw) {
                Ok(v) => break Some(v),
                Err(e) => {
                    let key = e
                        .key
                        .clone()
                        .filter(|_| e.message.starts_with("missing field"));
                    let Some(key) = key.filter(|k| !raw.contains_key(k) && required.len() < 32)
                    else {
                        problem = Some(e.message);
                        break None;
                    };
                    match probe(stage, &raw, &key) {
                        Some((value, expected)) => {
                            raw.insert(key.clone(), value);
                            required.push((key, expected));
                        }
                        None => {
                            required.push((key, String::new()));
                            problem = Some(e.message);
                            break None;
                        }
                    }
                }
            }
        };
        let mut s = format!(
            "{kind} ({}, version {}): {}\n",
            self.origin(kind).unwrap_or("plugin"),
            stage.version(),
            self.about(kind)
        );
        if !required.is_empty() {
            s.push_str("required parameters:\n");
            for (k, t) in &required {
                s.push_str(&format!(
                    "  {k}{}\n",
                    if t.is_empty() {
                        String::new()
                    } else {
                        format!(" ({t})")
                    }
                ));
                if let Some(d) = param_doc(k).filter(|d| !d.doc.is_empty()) {
                    s.push_str(&format!("      {}\n", d.doc));
                }
            }
        }
        let optional = optional_params(&docs, canon.as_ref(), &required);
        match canon {
            Some(JsonValue::Object(map)) => {
                let defaults: Vec<(&String, &JsonValue)> = map
                    .iter()
                    .filter(|(k, _)| !required.iter().any(|(r, _)| r == *k))
                    .collect();
                if defaults.is_empty() && required.is_empty() {
                    s.push_str("no parameters\n");
                } else if !defaults.is_empty() {
                    s.push_str("parameters (default values):\n");
                    let w = defaults.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                    for (k, v) in defaults {
                        s.push_str(&format!("  {k:<w$} = {}", show_value(v)));
                        match param_doc(k) {
                            Some(d) => {
                                s.push_str(&format!("  ({})\n", d.ty));
                                if !d.doc.is_empty() {
                                    s.push_str(&format!("      {}\n", d.doc));
                                }
                            }
                            None => s.push('\n'),
                        }
                    }
                }
            }
            Some(other) => s.push_str(&format!("parameters: {other}\n")),
            None => s.push_str(&format!(
                "(defaults not shown: {})\n",
                problem.unwrap_or_default()
            )),
        }
        s.push_str(&optional);
        s.push_str(&format!(
            "write them in a stage: [stages.NAME] kind = \"{kind}\", params = {{ ... }}\n"
        ));
        Some(s)
    }
}

/// A value `key` accepts (with the others in `raw`), and the type serde
/// said it expected.
fn probe(stage: &dyn Stage, raw: &toml::Table, key: &str) -> Option<(toml::Value, String)> {
    let candidates = [
        toml::Value::Integer(1),
        toml::Value::Float(1.0),
        toml::Value::String("x".into()),
        toml::Value::Boolean(true),
        toml::Value::Array(vec![toml::Value::String("x".into())]),
        toml::Value::Array(vec![]),
        toml::Value::Table(toml::Table::new()),
    ];
    let mut expected = String::new();
    for c in candidates {
        let mut t = raw.clone();
        t.insert(key.to_string(), c.clone());
        match stage.params(&t) {
            Err(e) if e.message.starts_with("unknown variant") => {
                // An enum: take its first variant.
                let rest = e.message.split("expected one of").nth(1).unwrap_or("");
                let names: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
                let first = names.first()?;
                return Some((
                    toml::Value::String(first.to_string()),
                    format!("one of {}", names.join(", ")),
                ));
            }
            Err(e) if e.message.contains("invalid type") => {
                if expected.is_empty() {
                    if let Some(x) = e.message.split("expected ").nth(1) {
                        expected = x.trim().trim_end_matches('.').to_string();
                    }
                }
            }
            _ => {
                if expected.is_empty() {
                    expected = c.type_str().to_string();
                }
                return Some((c, expected));
            }
        }
    }
    None
}

fn show_value(v: &JsonValue) -> String {
    match v {
        JsonValue::Null => "(none)".into(),
        other => other.to_string(),
    }
}

/// The documented parameters that the canonical form leaves out: options
/// added after a kind's first version stay out of its key at their default
/// (so old cache entries stay valid), which also hides them from the
/// canonical form `describe_params` lists. Their docs say the default.
fn optional_params(
    docs: &[ParamDoc],
    canon: Option<&JsonValue>,
    required: &[(String, String)],
) -> String {
    let shown = |p: &str| {
        required.iter().any(|(r, _)| r == p)
            || matches!(canon, Some(JsonValue::Object(m)) if m.contains_key(p))
    };
    let rows: Vec<&ParamDoc> = docs.iter().filter(|d| !shown(d.name)).collect();
    if rows.is_empty() {
        return String::new();
    }
    let w = rows.iter().map(|d| d.name.len()).max().unwrap_or(0);
    let mut s = String::from("options (left out of the cache key at their default):\n");
    for d in rows {
        s.push_str(&format!("  {:<w$}  ({})\n", d.name, d.ty));
        if !d.doc.is_empty() {
            s.push_str(&format!("      {}\n", d.doc));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options kept out of the key at their default are still listed, with
    /// their docs: `mrbm params train` once hid the whole RBM toolbox.
    #[test]
    fn params_lists_options_left_out_of_the_key() {
        let text = Registry::builtin().describe_params("train").unwrap();
        for p in [
            "algorithm",
            "cd_k",
            "momentum",
            "learn_sigma",
            "checkpoint_every",
        ] {
            assert!(text.contains(&format!("  {p} ")), "{p} missing:\n{text}");
        }
        // ...once: a parameter in the canonical form is not repeated.
        assert_eq!(text.matches("\n  epochs ").count(), 1, "{text}");
    }

    /// Every built-in kind says what it does and documents its
    /// parameters itself (no line kept for it here).
    #[test]
    fn kinds_describe_themselves() {
        let reg = Registry::builtin();
        for kind in reg.stages.keys() {
            let stage = reg.get(kind).unwrap();
            assert!(
                !stage.about().is_empty(),
                "{kind} says nothing about itself"
            );
        }
        let docs = reg.get("dataset").unwrap().param_docs();
        let format = docs.iter().find(|d| d.name == "format").unwrap();
        assert_eq!(format.ty, "Format");
        assert!(
            format.doc.starts_with("Reader: \"synthetic\""),
            "{format:?}"
        );
        // Flattened structs give their own fields.
        let train = reg.get("train").unwrap().param_docs();
        for p in ["epochs", "dense", "max_images"] {
            assert!(train.iter().any(|d| d.name == p), "train: {p} missing");
        }
    }
}
