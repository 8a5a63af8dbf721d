//! Image decoding (libjpeg through catch_unwind, PNG through `image`) and
//! the crop/resize pipeline on arbitrary bytes: errors are messages, never
//! panics or crashes. The first two bytes pick a crop and output size.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mrbm_data::ops::{process_rgb, Crop, Filter, Gray, ImageOps, Size};

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], bytes)) = data.split_first_chunk::<2>() else { return };
    // Region decode with a crop derived from the image size.
    let pick = |w: u32, h: u32| Ok::<_, String>(Some((w / (2 + (a % 5) as u32), h / (2 + (b % 5) as u32), (w / 2).max(1), (h / 2).max(1))));
    if let Some(Ok(reg)) = mrbm_data::jpeg::decode_region(bytes, pick) {
        assert_eq!(reg.rgb.len(), reg.rect.2 as usize * reg.rect.3 as usize * 3);
    }
    let Ok((rgb, w, h)) = mrbm_data::folder::decode_rgb_bytes(bytes) else { return };
    if w as u64 * h as u64 > 1 << 22 {
        return;
    }
    let filters = [Filter::Nearest, Filter::Box, Filter::Bilinear, Filter::Hamming, Filter::Bicubic, Filter::Mitchell, Filter::Lanczos3];
    let ops = ImageOps {
        crop: Some(if a % 2 == 0 { Crop::Square } else { Crop::Centre { w: (w / 2).max(1), h: (h / 3).max(1) } }),
        resize: Some(Size { w: 1 + (a as u32 % 40), h: 1 + (b as u32 % 40) }),
        filter: filters[(b as usize) % filters.len()],
        gray: if b % 3 == 0 { Gray::Three } else { Gray::Off },
    };
    let (ow, oh) = ops.out_size(w, h, &|| "fuzz".into()).unwrap();
    let mut out = vec![0u8; ops.gray.channels(3) * ow as usize * oh as usize];
    let mut resizer = fast_image_resize::Resizer::new();
    process_rgb(&mut resizer, &rgb, w, h, &ops, &mut out, &|| "fuzz".into()).unwrap();
});
