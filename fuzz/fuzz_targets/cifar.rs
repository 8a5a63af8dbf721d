//! CIFAR-10 batch parser on arbitrary bytes (one or two batch files).
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let half = data.len() / 2;
    for batches in [vec![(Path::new("one.bin"), data)], vec![(Path::new("a.bin"), &data[..half]), (Path::new("b.bin"), &data[half..])]] {
        if let Ok(set) = mrbm_data::cifar::cifar10_from_bytes(&batches) {
            assert_eq!(set.shape()[1..], [3, 32, 32]);
            assert_eq!(set.labels.len(), set.n);
            assert!(set.labels.iter().all(|&l| (0..=9).contains(&l)));
        }
    }
});
