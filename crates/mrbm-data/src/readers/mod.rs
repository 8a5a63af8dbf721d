//! The data formats a `dataset` stage reads (`format = "..."`), each behind
//! the [`Reader`] trait in a file of its own, all listed once in
//! [`READERS`].
//!
//! Adding a format: write `readers/NAME.rs` with a unit struct that
//! implements [`Reader`] (its name, the format-only keys it accepts, its
//! per-format defaults and checks, what its folder should hold, and the
//! read itself, into an [`ImageSet`] or a list of image files to decode),
//! then add one line to [`READERS`]. Keys shared by every format (`seed`,
//! `subset`, `crop`, `resize`, `filter`, `grayscale`, `keep_channels`) are
//! handled for it.

use std::path::Path;

use mrbm_stage::ParamError;
use serde::{Deserialize, Serialize};

use crate::artifact::ImageSet;
use crate::error::{DataError, Result};
use crate::folder::{Item, Split};
use crate::stages::DatasetParams;
use crate::Ctl;

mod caltech101;
mod celeba;
mod cifar10;
mod folder;
mod idx;
mod synthetic;

/// Every format, in the order `mrbm params dataset` and error messages
/// list them. A new format is one line here.
pub static READERS: &[&dyn Reader] = &[
    &synthetic::Synthetic,
    &idx::Idx,
    &cifar10::Cifar10,
    &celeba::Celeba,
    &caltech101::Caltech101,
    &folder::Folder,
];

/// What a reader gives back: images already in memory, or image files
/// that [`crate::folder::decode_items`] decodes (subset first, then decode).
pub enum Source {
    Images(ImageSet),
    Files(Vec<Item>),
}

/// One data format.
pub trait Reader: Send + Sync {
    /// The `format = "..."` name (also its canonical form in stage keys).
    fn name(&self) -> &'static str;
    /// The [`FORMAT_KEYS`] of [`DatasetParams`] this format accepts
    /// (the others are refused, naming the formats that take them).
    fn keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Fill this format's defaults (including `split`) and check its keys.
    fn normalise(&self, p: &mut DatasetParams) -> std::result::Result<(), ParamError>;
    /// Whether it reads the `dir` input (false: generated data).
    fn needs_dir(&self) -> bool {
        true
    }
    /// What the `dir` input should hold, and where the data are published.
    fn expected_files(&self, p: &DatasetParams) -> (String, &'static str);
    /// Read the data set in `dir` (which exists unless `needs_dir` is
    /// false) with the normalised parameters `p`.
    fn read(&self, p: &DatasetParams, dir: &Path, ctl: &Ctl) -> Result<Source>;
}

/// The keys of [`DatasetParams`] that only some formats accept, in the
/// order they are checked; a [`Reader`] names those it takes in `keys`.
pub const FORMAT_KEYS: &[&str] = &[
    "n",
    "size",
    "classes",
    "per_class",
    "test_per_class",
    "images",
    "labels",
    "skip_corrupt",
];

pub(crate) fn given(p: &DatasetParams, key: &str) -> bool {
    match key {
        "n" => p.n.is_some(),
        "size" => p.size.is_some(),
        "classes" => p.classes.is_some(),
        "per_class" => p.per_class.is_some(),
        "test_per_class" => p.test_per_class.is_some(),
        "images" => p.images.is_some(),
        "labels" => p.labels.is_some(),
        "skip_corrupt" => p.skip_corrupt,
        _ => false,
    }
}

/// A `format = "..."` value: one of [`READERS`]. Serialized as its name.
#[derive(Clone, Copy)]
pub struct Format(&'static dyn Reader);

impl Format {
    /// The reader called `name`, or an error naming the known ones.
    pub fn from_name(name: &str) -> Result<Format> {
        READERS
            .iter()
            .find(|r| r.name() == name)
            .map(|r| Format(*r))
            .ok_or_else(|| DataError::UnknownFormat {
                name: name.to_string(),
                known: names().join(", "),
            })
    }
    pub fn name(self) -> &'static str {
        self.0.name()
    }
    pub fn reader(self) -> &'static dyn Reader {
        self.0
    }
}

/// The names of [`READERS`], in order.
pub fn names() -> Vec<&'static str> {
    READERS.iter().map(|r| r.name()).collect()
}

impl std::fmt::Debug for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Format({:?})", self.name())
    }
}

impl PartialEq for Format {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}
impl Eq for Format {}

impl Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Format {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Format;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a data format name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Format, E> {
                Format::from_name(v).map_err(|_| {
                    // serde's own wording for an unknown enum variant, which
                    // the runner reads to list the choices.
                    let list: Vec<String> = names().iter().map(|n| format!("`{n}`")).collect();
                    E::custom(format_args!(
                        "unknown variant `{v}`, expected one of {}",
                        list.join(", ")
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// `split` does not apply (one part only: split with a `transform`).
pub(crate) fn no_split(p: &DatasetParams) -> std::result::Result<(), ParamError> {
    if p.split.is_some() {
        return Err(ParamError::new(
            "split",
            format!(
                "`split` does not apply to format = \"{}\"; split with a `transform` stage",
                p.format.name()
            ),
        ));
    }
    Ok(())
}

/// `split` is "train" (the default) or "test".
pub(crate) fn train_or_test(p: &mut DatasetParams) -> std::result::Result<(), ParamError> {
    let name = p.format.name();
    match p.split.get_or_insert(Split::Train) {
        Split::Train | Split::Test => Ok(()),
        other => Err(ParamError::new(
            "split",
            format!(
                "split = \"{}\" is not available for format = \"{name}\": use \"train\" or \"test\"",
                serde_json::to_value(*other)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ),
        )
        .with_suggestion("test")),
    }
}

/// Refuse the format-only keys `p` gives that its format does not take,
/// naming the formats that do.
pub(crate) fn check_keys(p: &DatasetParams, keys: &[&str]) -> std::result::Result<(), ParamError> {
    let reader = p.format.reader();
    for key in keys {
        if given(p, key) && !reader.keys().contains(key) {
            let allowed: Vec<&str> = READERS
                .iter()
                .filter(|r| r.keys().contains(key))
                .map(|r| r.name())
                .collect();
            let allowed = match allowed.split_last() {
                Some((last, rest)) if !rest.is_empty() => {
                    format!("{} and {last}", rest.join(", "))
                }
                _ => allowed.join(""),
            };
            return Err(ParamError::new(
                *key,
                format!(
                    "`{key}` does not apply to format = \"{}\" (only to {allowed})",
                    p.format.name()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registration_list() {
        assert_eq!(
            names(),
            [
                "synthetic",
                "idx",
                "cifar10",
                "celeba",
                "caltech101",
                "folder"
            ]
        );
        for r in READERS {
            assert_eq!(Format::from_name(r.name()).unwrap().name(), r.name());
            for k in r.keys() {
                assert!(FORMAT_KEYS.contains(k), "{}: unknown key {k}", r.name());
            }
        }
    }

    #[test]
    fn an_unknown_format_names_the_known_ones() {
        let e = Format::from_name("png").unwrap_err().to_string();
        assert!(e.contains("\"png\""), "{e}");
        assert!(
            e.contains("synthetic, idx, cifar10, celeba, caltech101, folder"),
            "{e}"
        );
        let raw: toml::Table = toml::from_str("format = \"png\"").unwrap();
        let e = mrbm_stage::parse_params::<DatasetParams>(&raw).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("format"), "{e:?}");
        assert!(
            e.message.starts_with(
                "unknown variant `png`, expected one of `synthetic`, `idx`, `cifar10`, `celeba`, `caltech101`, `folder`"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_key_of_another_format_names_the_formats_that_take_it() {
        let e = |toml_text: &str| {
            let raw: toml::Table = toml::from_str(toml_text).unwrap();
            let (p, _) = mrbm_stage::parse_params::<DatasetParams>(&raw).unwrap();
            p.normalise().unwrap_err().message
        };
        assert_eq!(
            e("format = \"idx\"\nskip_corrupt = true"),
            "`skip_corrupt` does not apply to format = \"idx\" (only to celeba, caltech101 and folder)"
        );
        assert_eq!(
            e("format = \"folder\"\nn = 3"),
            "`n` does not apply to format = \"folder\" (only to synthetic)"
        );
    }
}
