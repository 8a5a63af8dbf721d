//! `format = "caltech101"`: Caltech-101, a folder per class,
//! BACKGROUND_Google left out; a seeded per-class train/test split.

use std::path::Path;

use mrbm_stage::ParamError;

use super::{train_or_test, Reader, Source};
use crate::error::Result;
use crate::folder::{self, Split};
use crate::stages::DatasetParams;
use crate::{hints, Ctl};

pub struct Caltech101;

impl Reader for Caltech101 {
    fn name(&self) -> &'static str {
        "caltech101"
    }
    fn keys(&self) -> &'static [&'static str] {
        &["per_class", "test_per_class", "skip_corrupt"]
    }
    fn normalise(&self, p: &mut DatasetParams) -> std::result::Result<(), ParamError> {
        train_or_test(p)?;
        let pc = *p.per_class.get_or_insert(30);
        if pc == 0 {
            return Err(ParamError::new("per_class", "per_class must be at least 1"));
        }
        Ok(())
    }
    fn expected_files(&self, _p: &DatasetParams) -> (String, &'static str) {
        (
            "a folder holding 101_ObjectCategories/<class>/image_0001.jpg ...".into(),
            hints::CALTECH101,
        )
    }
    fn read(&self, p: &DatasetParams, dir: &Path, _ctl: &Ctl) -> Result<Source> {
        let split = p.split.unwrap_or(Split::All);
        let (items, _) = folder::caltech101_items(
            dir,
            split,
            p.per_class.unwrap_or(30),
            p.test_per_class,
            p.seed,
        )?;
        Ok(Source::Files(items))
    }
}
