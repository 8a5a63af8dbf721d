//! `png_stats FILE.png [MIN_STD]`: prints the size, the mean and standard
//! deviation of the luma, and the share of pixels that are not near-white;
//! exits 1 when the picture is blank (luma std below MIN_STD, default 4, or
//! under 1 % of pixels not near-white). tools/browser-test.sh runs it on
//! the report's headless-browser screenshot.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: png_stats FILE.png [MIN_STD]");
        return ExitCode::from(2);
    };
    let min_std: f64 = match args.get(1).map(|s| s.parse()) {
        None => 4.0,
        Some(Ok(v)) => v,
        Some(Err(_)) => {
            eprintln!("MIN_STD must be a number");
            return ExitCode::from(2);
        }
    };
    let img = match image::open(path) {
        Ok(i) => i.to_rgb8(),
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(1);
        }
    };
    let luma: Vec<f64> = img
        .pixels()
        .map(|p| 0.299 * p.0[0] as f64 + 0.587 * p.0[1] as f64 + 0.114 * p.0[2] as f64)
        .collect();
    let n = luma.len().max(1) as f64;
    let mean = luma.iter().sum::<f64>() / n;
    let std = (luma.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let inked = luma.iter().filter(|&&v| v < 235.0).count() as f64 / n;
    println!(
        "{path}: {}x{}, luma mean {mean:.1}, std {std:.1}, {:.1} % of pixels not near-white",
        img.width(),
        img.height(),
        100.0 * inked
    );
    if std < min_std || inked < 0.01 {
        eprintln!("{path}: blank (luma std {std:.2} < {min_std} or under 1 % of pixels drawn)");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
