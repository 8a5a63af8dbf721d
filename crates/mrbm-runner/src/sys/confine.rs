//! Paths the user writes stay where they belong: publish targets and table
//! names inside the project's results/ folder, `data:` inputs inside the
//! data root. Checked lexically (no `..`, no absolute path) and on disk (no
//! symlink that leads out).

use std::path::{Component, Path, PathBuf};

/// `rel` as a clean relative path: only plain names (and `.`), no `..`, no
/// root or drive, not empty.
pub fn clean_relative(rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("`{rel}` goes up with `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("`{rel}` is an absolute path"))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("`{rel}` names no file"));
    }
    Ok(out)
}

/// Check that `path` (lexically under `root`) does not lead out of `root`
/// through a symlink: the deepest part of it that exists must resolve
/// inside `root` as resolved itself. Parts that do not exist yet are fine.
pub fn no_symlink_escape(root: &Path, path: &Path) -> Result<(), String> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| format!("{} is not inside {}", path.display(), root.display()))?;
    let Ok(croot) = std::fs::canonicalize(root) else {
        // The folder does not exist yet: nothing under it can be a link.
        return Ok(());
    };
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::canonicalize(&at).map_err(|e| {
                    format!("{} is a symlink that does not resolve: {e}", at.display())
                })?;
                if !target.starts_with(&croot) {
                    return Err(format!(
                        "{} is a symlink to {}, outside {}",
                        at.display(),
                        target.display(),
                        root.display()
                    ));
                }
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// A publish target (an absolute path under some `results` folder, as the
/// DAG builds it), checked when the DAG is built and again right before
/// writing. No symlink under results/ may lead out of it, and results/
/// itself may not be a symlink out of the project (its parent).
pub fn check_publish_target(results: &Path, dest: &Path) -> Result<(), String> {
    if let Some(project) = results.parent() {
        no_symlink_escape(project, results)?;
    }
    no_symlink_escape(results, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_must_be_clean() {
        assert!(clean_relative("a/b.csv").is_ok());
        assert!(clean_relative("./a.csv").is_ok());
        assert!(clean_relative("../a.csv").is_err());
        assert!(clean_relative("a/../../b").is_err());
        assert!(clean_relative("/etc/passwd").is_err());
        assert!(clean_relative("").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("results");
        std::fs::create_dir_all(root.join("inside")).unwrap();
        let outside = d.path().join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("inside"), root.join("in")).unwrap();
        assert!(no_symlink_escape(&root, &root.join("out/x.csv")).is_err());
        assert!(no_symlink_escape(&root, &root.join("in/x.csv")).is_ok());
        assert!(no_symlink_escape(&root, &root.join("new/dir/x.csv")).is_ok());
        // results/ itself a link out of the project: refused; inside: fine.
        let project = d.path().join("project");
        std::fs::create_dir_all(project.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.path(), project.join("results")).unwrap();
        let results = project.join("results");
        assert!(check_publish_target(&results, &results.join("t.csv")).is_err());
        std::fs::remove_file(&results).unwrap();
        std::os::unix::fs::symlink(project.join("elsewhere"), &results).unwrap();
        assert!(check_publish_target(&results, &results.join("t.csv")).is_ok());
    }
}
