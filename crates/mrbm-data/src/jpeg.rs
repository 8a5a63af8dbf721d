//! JPEG decoding with libjpeg-turbo's decoder (vendored in MozJPEG), with
//! Pillow's settings (islow IDCT, fancy upsampling), so decoded pixels equal
//! Pillow's bit for bit. When only a crop of the image is wanted, only
//! that part is decoded: rows above it are skipped (no IDCT or colour
//! conversion), rows below it are never decoded, and columns are limited
//! to the iMCU-aligned span around it (`jpeg_crop_scanline`), with at least
//! one column of context on each side so fancy upsampling sees the same
//! neighbours as in a full decode. The real-data test checks the result
//! against Pillow's full decode.

use std::ffi::c_ulong;

use mozjpeg_sys as ffi;

/// Largest image decoded, in pixels: Pillow's decompression-bomb limit
/// (2 x MAX_IMAGE_PIXELS), so a corrupt header cannot ask for gigabytes.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// (left, top, width, height) in image pixels.
pub type Rect = (u32, u32, u32, u32);

/// Decoded interleaved RGB8 pixels of `rect`, with the full image size.
pub struct Region {
    pub rgb: Vec<u8>,
    pub rect: Rect,
    pub image_w: u32,
    pub image_h: u32,
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    // libjpeg must not return from error_exit: unwind to catch_unwind in
    // decode_region (mozjpeg-sys builds the C code with unwind tables).
    let mut msg = String::from("libjpeg: ");
    let err = unsafe { cinfo.err.as_ref() };
    match err.and_then(|e| e.format_message) {
        Some(fmt) => {
            let buffer = [0u8; 80];
            // format_message writes into the buffer although the binding
            // types it as a shared reference (as the C API declares it).
            unsafe { fmt(cinfo, &buffer) };
            let end = buffer.iter().position(|&c| c == 0).unwrap_or(buffer.len());
            msg.push_str(&String::from_utf8_lossy(&buffer[..end]));
        }
        None => msg.push_str(&format!("error code {}", err.map_or(-1, |e| e.msg_code))),
    }
    std::panic::resume_unwind(Box::new(msg));
}

unsafe extern "C-unwind" fn silence(
    _cinfo: &mut ffi::jpeg_common_struct,
    _level: std::os::raw::c_int,
) {
}

/// Owns a decompressor; destroys it however decoding ends.
struct Decompressor {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    _err: Box<ffi::jpeg_error_mgr>,
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// Decode the part of a JPEG that `pick(width, height)` selects (None: the
/// whole image). Returns None for colour spaces libjpeg cannot convert to
/// RGB (CMYK, YCCK); Err with a message for a corrupt file or a rejected
/// size (the error `pick` returns is passed through).
pub fn decode_region<E: From<String>>(
    bytes: &[u8],
    pick: impl FnOnce(u32, u32) -> Result<Option<Rect>, E>,
) -> Option<Result<Region, E>> {
    let mut pick = Some(pick);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> Result<Option<Region>, E> {
            unsafe {
                let mut err: Box<ffi::jpeg_error_mgr> = Box::new(std::mem::zeroed());
                ffi::jpeg_std_error(&mut err);
                err.error_exit = Some(error_exit);
                err.emit_message = Some(silence);
                let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(std::mem::zeroed());
                cinfo.common.err = &mut *err;
                ffi::jpeg_CreateDecompress(
                    &mut *cinfo,
                    ffi::JPEG_LIB_VERSION,
                    std::mem::size_of::<ffi::jpeg_decompress_struct>(),
                );
                let mut d = Decompressor { cinfo, _err: err };
                let c = &mut *d.cinfo;
                ffi::jpeg_mem_src(c, bytes.as_ptr(), bytes.len() as c_ulong);
                ffi::jpeg_read_header(c, 1);
                if matches!(
                    c.jpeg_color_space,
                    ffi::J_COLOR_SPACE::JCS_CMYK | ffi::J_COLOR_SPACE::JCS_YCCK
                ) {
                    return Ok(None);
                }
                let (w, h) = (c.image_width, c.image_height);
                if w == 0 || h == 0 || w as u64 * h as u64 > MAX_PIXELS {
                    return Err(E::from(format!("JPEG size {w}x{h} outside 1..={MAX_PIXELS} pixels (decompression bomb guard)")));
                }
                let (x, y, rw, rh) =
                    (pick.take().expect("called once"))(w, h)?.unwrap_or((0, 0, w, h));
                if rw == 0
                    || rh == 0
                    || x.checked_add(rw).is_none_or(|e| e > w)
                    || y.checked_add(rh).is_none_or(|e| e > h)
                {
                    return Err(E::from(format!(
                        "region {rw}x{rh} at ({x}, {y}) outside the {w}x{h} image"
                    )));
                }
                c.out_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
                c.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
                c.do_fancy_upsampling = 1;
                ffi::jpeg_start_decompress(c);
                // One column of context each side, then libjpeg widens to iMCUs.
                let mut xo = x.saturating_sub(1);
                let mut cw = (x + rw + 1).min(w) - xo;
                if (xo, cw) != (0, w) {
                    ffi::jpeg_crop_scanline(c, &mut xo, &mut cw);
                }
                let out_w = c.output_width;
                if xo > x || xo + out_w < x + rw || c.output_components != 3 {
                    return Err(E::from(format!(
                        "libjpeg crop {out_w} columns from {xo} does not cover {rw} from {x}"
                    )));
                }
                if y > 0 && ffi::jpeg_skip_scanlines(c, y) != y {
                    return Err(E::from("premature end of JPEG data".to_string()));
                }
                let mut row = vec![0u8; out_w as usize * 3];
                let mut rgb = Vec::with_capacity(rw as usize * rh as usize * 3);
                let (a, b) = ((x - xo) as usize * 3, (x - xo + rw) as usize * 3);
                for _ in 0..rh {
                    let mut p = row.as_mut_ptr();
                    if ffi::jpeg_read_scanlines(c, &mut p, 1) != 1 {
                        return Err(E::from("premature end of JPEG data".to_string()));
                    }
                    rgb.extend_from_slice(&row[a..b]);
                }
                // Rows below the region are not needed: stop here.
                ffi::jpeg_abort_decompress(c);
                Ok(Some(Region {
                    rgb,
                    rect: (x, y, rw, rh),
                    image_w: w,
                    image_h: h,
                }))
            }
        },
    ));
    match r {
        Ok(Ok(Some(v))) => Some(Ok(v)),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => Some(Err(e)),
        Err(payload) => {
            let msg = mrbm_stage::panic_message(payload.as_ref())
                .unwrap_or_else(|| "libjpeg error".into());
            Some(Err(E::from(msg)))
        }
    }
}
