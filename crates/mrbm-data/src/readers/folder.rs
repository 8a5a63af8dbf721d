//! `format = "folder"`: any class-per-folder image tree.

use std::path::Path;

use mrbm_stage::ParamError;

use super::{no_split, Reader, Source};
use crate::error::Result;
use crate::folder;
use crate::stages::DatasetParams;
use crate::{hints, Ctl};

pub struct Folder;

impl Reader for Folder {
    fn name(&self) -> &'static str {
        "folder"
    }
    fn keys(&self) -> &'static [&'static str] {
        &["skip_corrupt"]
    }
    fn normalise(&self, p: &mut DatasetParams) -> std::result::Result<(), ParamError> {
        no_split(p)
    }
    fn expected_files(&self, _p: &DatasetParams) -> (String, &'static str) {
        (
            "a folder with one sub-folder of images per class".into(),
            hints::FOLDER,
        )
    }
    fn read(&self, _p: &DatasetParams, dir: &Path, _ctl: &Ctl) -> Result<Source> {
        Ok(Source::Files(folder::folder_items(dir)?.0))
    }
}
