//! `format = "synthetic"`: built-in coloured shapes, labelled by shape (no
//! files needed).

use std::path::Path;

use mrbm_stage::ParamError;

use super::{no_split, Reader, Source};
use crate::error::Result;
use crate::stages::DatasetParams;
use crate::{synthetic, Ctl};

pub struct Synthetic;

impl Reader for Synthetic {
    fn name(&self) -> &'static str {
        "synthetic"
    }
    fn keys(&self) -> &'static [&'static str] {
        &["n", "size", "classes"]
    }
    fn normalise(&self, p: &mut DatasetParams) -> std::result::Result<(), ParamError> {
        no_split(p)?;
        let n = *p.n.get_or_insert(4000);
        let size = *p.size.get_or_insert(16);
        let classes = *p.classes.get_or_insert(4);
        if n == 0 {
            return Err(ParamError::new("n", "n must be at least 1"));
        }
        if !(4..=1024).contains(&size) {
            return Err(ParamError::new(
                "size",
                format!("size = {size}, expected 4..=1024"),
            ));
        }
        if classes == 0 || classes > synthetic::SHAPES.len() {
            return Err(ParamError::new(
                "classes",
                format!(
                    "classes = {classes}, expected 1..={} ({})",
                    synthetic::SHAPES.len(),
                    synthetic::SHAPES.join(", ")
                ),
            ));
        }
        Ok(())
    }
    fn needs_dir(&self) -> bool {
        false
    }
    fn expected_files(&self, _p: &DatasetParams) -> (String, &'static str) {
        ("nothing (generated)".into(), "")
    }
    fn read(&self, p: &DatasetParams, _dir: &Path, _ctl: &Ctl) -> Result<Source> {
        Ok(Source::Images(synthetic::synthetic(
            p.n.unwrap_or(4000),
            p.size.unwrap_or(16),
            p.classes.unwrap_or(4),
            p.seed,
        )?))
    }
}
