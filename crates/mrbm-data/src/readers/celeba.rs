//! `format = "celeba"`: CelebA aligned faces (labels -1), JPEG files.

use std::path::Path;

use mrbm_stage::ParamError;

use super::{Reader, Source};
use crate::error::Result;
use crate::folder::{self, Split};
use crate::stages::DatasetParams;
use crate::{hints, Ctl};

pub struct Celeba;

impl Reader for Celeba {
    fn name(&self) -> &'static str {
        "celeba"
    }
    fn keys(&self) -> &'static [&'static str] {
        &["skip_corrupt"]
    }
    fn normalise(&self, p: &mut DatasetParams) -> std::result::Result<(), ParamError> {
        p.split.get_or_insert(Split::All);
        Ok(())
    }
    fn expected_files(&self, _p: &DatasetParams) -> (String, &'static str) {
        ("a folder holding img_align_celeba/000001.jpg ... (and list_eval_partition.txt for a split)".into(), hints::CELEBA)
    }
    fn read(&self, p: &DatasetParams, dir: &Path, _ctl: &Ctl) -> Result<Source> {
        let split = p.split.unwrap_or(Split::All);
        Ok(Source::Files(folder::celeba_items(dir, split)?))
    }
}
