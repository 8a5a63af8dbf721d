#!/usr/bin/env python3
"""Write the fuzzers' starting inputs into fuzz/seeds/<target>/ (called by
tools/fuzz.sh). They are generated, not committed, so the repository holds
no files in the data formats of ../shared/data (IDX, CIFAR, JPEG):

  idx/raw, idx/gz   a 2x3x3 u8 IDX image file followed by a 2-label IDX file
                    (the fuzz target splits the bytes after its first byte)
  cifar/two         two CIFAR-10 records (label + 3x32x32 bytes)
  decode/s.png      a 3x2 RGB PNG (stdlib zlib), prefixed by the 2 bytes the
                    target reads as crop/size choices
  decode/g.jpg, s.jpg  8x8 grey and 16x12 colour JPEGs, same prefix, when
                    Pillow is installed (skipped with a note otherwise)

    python3 tools/fuzz_seeds.py [SEEDS_DIR]     # default fuzz/seeds
"""
import gzip
import io
import os
import struct
import sys
import zlib

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fuzz", "seeds")


def write(target, name, data):
    os.makedirs(os.path.join(root, target), exist_ok=True)
    with open(os.path.join(root, target, name), "wb") as f:
        f.write(data)


def idx(dtype_code, dims, payload):
    return struct.pack(">BBBB", 0, 0, dtype_code, len(dims)) + b"".join(struct.pack(">I", d) for d in dims) + payload


images = idx(0x08, [2, 3, 3], bytes(range(18)))
labels = idx(0x08, [2], bytes([1, 7]))
write("idx", "raw", b"\xc5" + images + labels)
write("idx", "gz", b"\x9e" + gzip.compress(images + labels, mtime=0))

write("cifar", "two", b"".join(bytes([k]) + bytes((i * (k + 3)) % 256 for i in range(3072)) for k in (3, 8)))


def png(w, h, rgb):
    raw = b"".join(b"\x00" + rgb[y * w * 3:(y + 1) * w * 3] for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


write("decode", "s.png", b"\x01\x02" + png(3, 2, bytes(range(0, 18 * 14, 14))))

try:
    from PIL import Image
except ImportError:
    print("fuzz_seeds: Pillow not installed, no JPEG seeds (the decode target starts from the PNG)", file=sys.stderr)
else:
    for name, mode, size in (("g.jpg", "L", (8, 8)), ("s.jpg", "RGB", (16, 12))):
        im = Image.new(mode, size)
        im.putdata([((x * 16 + y * 8) % 256) if mode == "L" else ((x * 16) % 256, (y * 20) % 256, 128)
                    for y in range(size[1]) for x in range(size[0])])
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        write("decode", name, b"\x01\x02" + buf.getvalue())
