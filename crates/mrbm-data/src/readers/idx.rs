//! `format = "idx"`: IDX files (MNIST, Fashion-MNIST).

use std::path::Path;

use mrbm_stage::ParamError;

use super::{train_or_test, Reader, Source};
use crate::error::{DataError, Result};
use crate::folder::Split;
use crate::stages::DatasetParams;
use crate::{hints, idx, Ctl};

pub struct Idx;

impl Reader for Idx {
    fn name(&self) -> &'static str {
        "idx"
    }
    fn keys(&self) -> &'static [&'static str] {
        &["images", "labels"]
    }
    fn normalise(&self, p: &mut DatasetParams) -> std::result::Result<(), ParamError> {
        train_or_test(p)
    }
    fn expected_files(&self, p: &DatasetParams) -> (String, &'static str) {
        let train = p.split != Some(Split::Test);
        let pre = if train { "train" } else { "t10k" };
        let images = p
            .images
            .clone()
            .unwrap_or(format!("{pre}-images-idx3-ubyte.gz"));
        let labels = p
            .labels
            .clone()
            .unwrap_or(format!("{pre}-labels-idx1-ubyte.gz"));
        (
            format!("a folder holding {images} and {labels} (raw or .gz)"),
            hints::MNIST,
        )
    }
    fn read(&self, p: &DatasetParams, dir: &Path, _ctl: &Ctl) -> Result<Source> {
        if dir.is_file() {
            return Err(DataError::Invalid(format!("{}: format = \"idx\" needs the folder holding the image and label files, not a file", dir.display())));
        }
        let split = p.split.unwrap_or(Split::All);
        let (mut images, mut labels) = idx::idx_files(dir, split == Split::Train);
        if let Some(name) = &p.images {
            images = dir.join(name);
        }
        if let Some(name) = &p.labels {
            labels = dir.join(name);
        }
        for f in [&images, &labels] {
            if !f.is_file() {
                let (expected, hint) = self.expected_files(p);
                return Err(DataError::Missing {
                    path: f.clone(),
                    expected,
                    hint: hint.into(),
                });
            }
        }
        Ok(Source::Images(idx::read_idx(&images, &labels)?))
    }
}
