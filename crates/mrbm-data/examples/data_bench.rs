//! Rust side of bench/data_decode_bench.py: decode + centre crop + resize
//! JPEG files, in parallel, and print images per second as one JSON line.
//!
//!     cargo run --release -p mrbm-data --example data_bench -- \
//!         DIR THREADS REPEAT CROP SIZE FILTER
//!
//! Every .jpg in DIR (sorted) is read REPEAT times (the list repeated), so
//! the run is long enough to time; files come from the page cache.
//! Also `data_bench synth OUT N SIZE CLASSES SEED` writes a synthetic set.

use std::path::Path;
use std::time::Instant;

use mrbm_data::folder::{decode_items, image_files, Item};
use mrbm_data::ops::{Crop, Filter, ImageOps, Size};
use mrbm_data::Ctl;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("synth") {
        let n: usize = args[2].parse().expect("N");
        let size: usize = args[3].parse().expect("SIZE");
        let classes: usize = args[4].parse().expect("CLASSES");
        let seed: u64 = args[5].parse().expect("SEED");
        let t = Instant::now();
        let set = mrbm_data::synthetic::synthetic(n, size, classes, seed).expect("synthetic");
        let secs = t.elapsed().as_secs_f64();
        set.write(Path::new(&args[1])).expect("write");
        println!("{{\"images\": {n}, \"seconds\": {secs:.4}}}");
        return;
    }
    if args.len() != 6 {
        eprintln!("usage: data_bench DIR THREADS REPEAT CROP SIZE FILTER | data_bench synth OUT N SIZE CLASSES SEED");
        std::process::exit(2);
    }
    let dir = Path::new(&args[0]);
    let threads: usize = args[1].parse().expect("THREADS");
    let repeat: usize = args[2].parse().expect("REPEAT");
    let crop: u32 = args[3].parse().expect("CROP");
    let size: u32 = args[4].parse().expect("SIZE");
    let filter: Filter =
        serde_json::from_value(serde_json::Value::String(args[5].clone())).expect("FILTER");
    let files = image_files(dir).expect("list files");
    let items: Vec<Item> = (0..repeat)
        .flat_map(|_| {
            files.iter().map(|p| Item {
                path: p.clone(),
                label: -1,
            })
        })
        .collect();
    let ops = ImageOps {
        crop: Some(Crop::Centre { w: crop, h: crop }),
        resize: Some(Size { w: size, h: size }),
        filter,
        ..Default::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    // Warm-up: page cache, allocator, thread start.
    pool.install(|| decode_items(&items[..files.len()], &ops, false, &Ctl::default()))
        .expect("decode");
    let (t, cpu0) = (Instant::now(), cpu_seconds());
    let out = pool
        .install(|| decode_items(&items, &ops, false, &Ctl::default()))
        .expect("decode");
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let checksum: u64 = out.set.pixels().iter().map(|&p| p as u64).sum();
    println!(
        "{{\"tool\": \"mrbm\", \"images\": {}, \"seconds\": {secs:.4}, \"cpu_seconds\": {cpu:.4}, \"images_per_s\": {:.1}, \"checksum\": {checksum}}}",
        out.set.n,
        out.set.n as f64 / secs
    );
}

/// User + system CPU time of this process (all threads), from
/// /proc/self/stat (Linux; clock ticks of 1/100 s). NaN elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}
