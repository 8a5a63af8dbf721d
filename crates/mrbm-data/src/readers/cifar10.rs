//! `format = "cifar10"`: CIFAR-10 binary batches.

use std::path::Path;

use mrbm_stage::ParamError;

use super::{train_or_test, Reader, Source};
use crate::error::Result;
use crate::folder::Split;
use crate::stages::DatasetParams;
use crate::{cifar, hints, Ctl};

pub struct Cifar10;

impl Reader for Cifar10 {
    fn name(&self) -> &'static str {
        "cifar10"
    }
    fn normalise(&self, p: &mut DatasetParams) -> std::result::Result<(), ParamError> {
        train_or_test(p)
    }
    fn expected_files(&self, p: &DatasetParams) -> (String, &'static str) {
        let expected = if p.split != Some(Split::Test) {
            "a folder holding cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin"
        } else {
            "a folder holding cifar-10-batches-bin/test_batch.bin"
        };
        (expected.into(), hints::CIFAR10)
    }
    fn read(&self, p: &DatasetParams, dir: &Path, _ctl: &Ctl) -> Result<Source> {
        let split = p.split.unwrap_or(Split::All);
        Ok(Source::Images(cifar::read_cifar10(
            dir,
            split == Split::Train,
        )?))
    }
}
