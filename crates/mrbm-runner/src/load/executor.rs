//! `[executor]` in an experiment file, as the load phase reads it: the
//! kind (`local` by default; `--executor` overrides it) and the rest of the
//! table as it stands. Each executor parses its own settings from that
//! table (`crate::run::executors`), so adding one changes nothing here.

use serde::{Deserialize, Serialize};

/// `[executor]` in an experiment file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ExecutorDecl {
    /// Which executor runs the stages (`local`, `slurm`, ...).
    #[serde(default)]
    pub kind: Option<String>,
    /// Its settings: every other key of the table, for that executor to read.
    #[serde(flatten)]
    pub settings: toml::Table,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_read_and_every_other_key_kept_for_the_executor() {
        let d: ExecutorDecl =
            toml::from_str("kind = \"slurm\"\ntime = \"10\"\n[kinds.train]\nmem = \"3G\"\n")
                .unwrap();
        assert_eq!(d.kind.as_deref(), Some("slurm"));
        assert_eq!(d.settings["time"].as_str(), Some("10"));
        assert_eq!(d.settings["kinds"]["train"]["mem"].as_str(), Some("3G"));
        assert!(!d.settings.contains_key("kind"));
        let none: ExecutorDecl = toml::from_str("").unwrap();
        assert_eq!(none, ExecutorDecl::default());
    }
}
