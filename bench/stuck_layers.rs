//! Per layer, how many hidden channels of a trained model are stuck (mean
//! activation below 1 % or above 99 % of the unit's range on the first
//! 512 images), the criterion behind `train`'s dead-layer check and
//! `sample`'s `stuck_channels` (which reports only the largest fraction).
//!
//!   cargo run --release -p mrbm-core --example stuck_layers -- MODEL.safetensors DATA.safetensors
//!
//! Prints one line per layer: `layer L: S of T stuck (F)`.

use std::path::PathBuf;

use burn::tensor::Device;
use mrbm_data::ImageSet;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [model, data] = args.as_slice() else {
        return Err("usage: stuck_layers MODEL.safetensors DATA.safetensors".into());
    };
    let device = Device::flex();
    let dbn = mrbm_core::checkpoint::load(model, &device)?;
    let set = ImageSet::read(data)?;
    let want = dbn.spec.input;
    if [set.c, set.h, set.w] != want {
        return Err(format!(
            "the data's images are {}x{}x{} but the model's input is {}x{}x{}",
            set.c, set.h, set.w, want[0], want[1], want[2]
        )
        .into());
    }
    let counts = mrbm_core::quality::stuck_counts(&dbn, set.pixels(), set.n, &device);
    for (i, (stuck, total)) in counts.iter().enumerate() {
        println!(
            "layer {}: {stuck} of {total} stuck ({:.2})",
            i + 1,
            *stuck as f64 / (*total).max(1) as f64
        );
    }
    Ok(())
}
