//! IDX reader on arbitrary bytes: the first byte picks where the input is
//! cut into an image file and a label file (each raw or gzip). Must return
//! Ok or a DataError, never panic, and a returned set must be consistent.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize * rest.len()) / 255;
    let (images, labels) = rest.split_at(cut.min(rest.len()));
    if let Ok(set) = mrbm_data::idx::idx_from_bytes(Path::new("images"), images, Path::new("labels"), labels) {
        assert_eq!(set.pixels().len(), set.n * set.c * set.h * set.w);
        assert_eq!(set.labels.len(), set.n);
    }
    // The header parser alone, on the whole input, for each rank.
    for ndim in [1, 3] {
        if let Ok((dims, bytes)) = mrbm_data::idx::parse_idx(Path::new("whole"), data, ndim) {
            assert_eq!(dims.iter().product::<usize>(), bytes.len());
        }
    }
});
